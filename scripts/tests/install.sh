#!/usr/bin/env bash
# `make install` and `make uninstall` on this machine, into temporary roots: the files
# land where PREFIX, SYSCONFDIR and DESTDIR say, the installed config points at the
# installed files and `hyperctl check` finds them, an operator's edited config survives
# both a re-install and the uninstall, and uninstall removes exactly what was installed.
# (The test host runs `ctr run` from an install: tests/e2e/install-ctr-run.sh.)
#
# usage: install.sh   (builds what make install builds; prebuilt files may be given as
#                      HYPER_VMM, CONTAINERD_SHIM_HYPER_V1, HYPERCTL, GUEST_KERNEL, GUEST_INITRD)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../common.sh
source "$here/../common.sh"

d=$(mktemp -d /tmp/hyper-install.XXXXXX)
trap 'rm -rf "$d"' EXIT
passed=0 failed=0
check() { # check NAME CMD...: one test
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); log "ok   $name"; else failed=$((failed + 1)); log "FAIL $name"; fi
}
mk() { make -s -C "$HYPER_ROOT" "$@"; }
# files ROOT: every file under ROOT, relative to it, sorted.
files() { (cd "$1" && find . -type f -o -type l | sed 's|^\./||' | sort); }

want_files="etc/hyper/config.toml
usr/bin/containerd-shim-hyper-v1
usr/bin/hyper-vmm
usr/bin/hyperctl
usr/share/hyper/containerd-hyper.toml
usr/share/hyper/initramfs.cpio.gz
usr/share/hyper/install-manifest
usr/share/hyper/runtimeclass.yaml
usr/share/hyper/vmlinux"

# 1. A real root: PREFIX and SYSCONFDIR inside $d/live, so the installed paths are real.
live=$d/live
mk install PREFIX="$live/usr" SYSCONFDIR="$live/etc" > "$d/install.out" 2> "$d/install.err" \
  || { cat "$d/install.err" >&2; die "make install failed"; }
check "install puts every file in place, nothing else" test "$(files "$live")" = "$want_files"
modes() {
  [ "$(stat -c %a "$live/usr/bin/hyper-vmm")" = 755 ] && [ "$(stat -c %a "$live/usr/bin/containerd-shim-hyper-v1")" = 755 ] \
    && [ "$(stat -c %a "$live/etc/hyper/config.toml")" = 644 ]
}
check "binaries are executable, the config is 0644" modes
points() {
  grep -qx "path = \"$live/usr/bin/hyper-vmm\"" "$live/etc/hyper/config.toml" \
    && grep -qx "kernel = \"$live/usr/share/hyper/vmlinux\"" "$live/etc/hyper/config.toml" \
    && grep -qx "    ConfigPath = \"$live/etc/hyper/config.toml\"" "$live/usr/share/hyper/containerd-hyper.toml"
}
check "the config and the CRI snippet name the installed paths" points
prints() {
  grep -q 'runtime_type = "io.containerd.hyper.v1"' "$d/install.out" && grep -q 'kind: RuntimeClass' "$d/install.out" \
    && grep -q "ConfigPath = \"$live/etc/hyper/config.toml\"" "$d/install.out"
}
check "install prints the CRI snippet and the RuntimeClass" prints
# hyperctl check, from the installed files only, finds the installed shim, VMM, kernel
# and image (booting them needs a KVM that runs guest kernels: the test host checks that).
installed_check() {
  PATH="$live/usr/bin:/usr/bin:/bin" "$live/usr/bin/hyperctl" --config "$live/etc/hyper/config.toml" \
    check vmm shim guest-kernel guest-image > "$d/check.out" 2>&1
  local rc=$?
  cat "$d/check.out" >&2
  [ $rc -eq 0 ] && [ "$(grep -c '^OK ' "$d/check.out")" = 4 ] && grep -q "^OK    shim .*$live/usr/bin/containerd-shim-hyper-v1" "$d/check.out"
}
check "the installed hyperctl check finds the installed files" installed_check

# 2. Re-install over an operator's edited config: theirs stays, ours goes beside it.
echo 'vcpus = 2  # operator' >> "$live/etc/hyper/config.toml"
edited=$(sha256sum < "$live/etc/hyper/config.toml")
mk install PREFIX="$live/usr" SYSCONFDIR="$live/etc" > /dev/null 2>&1 || die "second make install failed"
keeps() { [ "$(sha256sum < "$live/etc/hyper/config.toml")" = "$edited" ] && [ -f "$live/etc/hyper/config.toml.new" ]; }
check "re-install keeps an edited config, writes config.toml.new" keeps
mk uninstall PREFIX="$live/usr" SYSCONFDIR="$live/etc" > /dev/null 2> "$d/uninstall.err" || die "make uninstall failed"
only_edited() {
  [ "$(files "$live")" = "etc/hyper/config.toml" ] && grep -q "kept $live/etc/hyper/config.toml" "$d/uninstall.err"
}
check "uninstall removes what it installed, keeps and names the edited config" only_edited
refuses() {
  local out
  if out=$(mk uninstall PREFIX="$live/usr" SYSCONFDIR="$live/etc" 2>&1); then return 1; fi
  grep -q "no install recorded" <<<"$out"
}
check "uninstall without an install says so and fails" refuses

# 3. Packaging: DESTDIR stages the files; the paths inside name the final places.
stage=$d/stage
mk install DESTDIR="$stage" PREFIX=/usr SYSCONFDIR=/etc CRI_CONFIG=/etc/containerd/conf.d/hyper.toml > /dev/null 2>&1 \
  || die "make install DESTDIR=... failed"
staged() {
  [ "$(files "$stage")" = "$(printf '%s\n%s' "etc/containerd/conf.d/hyper.toml" "$want_files" | sort)" ] \
    && grep -qx 'path = "/usr/bin/hyper-vmm"' "$stage/etc/hyper/config.toml" \
    && grep -qx '    ConfigPath = "/etc/hyper/config.toml"' "$stage/etc/containerd/conf.d/hyper.toml"
}
check "DESTDIR stages every file; paths inside are the final ones; CRI_CONFIG is written" staged
mk uninstall DESTDIR="$stage" PREFIX=/usr SYSCONFDIR=/etc > /dev/null 2>&1 || die "make uninstall DESTDIR=... failed"
check "uninstall from DESTDIR leaves no file behind" test -z "$(files "$stage")"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

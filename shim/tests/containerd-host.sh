#!/usr/bin/env bash
# containerd-shim-hyper-v1 under a real containerd 1.6 on this (bare) machine.
#
# A Linux guest cannot boot under this machine's own KVM (../shared/testing.md), so this
# covers what does not need a booted guest: containerd finds and bootstraps the shim,
# the shim reads its config from the runtime options, and every failure (bad config,
# missing kernel, a guest that never answers) reaches `ctr` as a clear error and leaves
# nothing behind (mounts, VMM processes, state). The full `ctr run` runs in the test host.
#
# usage: containerd-host.sh SHIM_BIN_DIR KERNEL IMAGE   (SHIM_BIN_DIR holds the shim and hyper-vmm)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../scripts/common.sh
source "$here/../../scripts/common.sh"
bin=$(realpath "$1") kernel=$(realpath "$2") image=$(realpath "$3")
apt_need containerd runc e2fsprogs
busybox_tar=$(bash "$HYPER_ROOT/scripts/busybox-image.sh" "$HYPER_CACHE/images")

d=$(mktemp -d /tmp/hyper-ctd.XXXXXX)
ctd_pid=""
passed=0 failed=0
cleanup() {
  set +e
  for c in $(ctr -a "$d/c.sock" containers ls -q 2>/dev/null); do
    ctr -a "$d/c.sock" tasks kill -s SIGKILL "$c" >/dev/null 2>&1
    ctr -a "$d/c.sock" tasks rm -f "$c" >/dev/null 2>&1
    ctr -a "$d/c.sock" containers rm "$c" >/dev/null 2>&1
  done
  [ -n "$ctd_pid" ] && kill "$ctd_pid" 2>/dev/null && wait "$ctd_pid" 2>/dev/null
  # Shims and VMMs this test's containerd started: matched by our private paths, killed by PID.
  for p in $(pgrep -f -- "$d" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  grep -o " $d/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$d"
}
trap cleanup EXIT

cat > "$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.btrfs"]
[grpc]
  address = "$d/c.sock"
[ttrpc]
  address = "$d/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
TOML
PATH="$bin:$PATH" containerd --config "$d/config.toml" > "$d/containerd.log" 2>&1 &
ctd_pid=$!
for _ in $(seq 100); do ctr -a "$d/c.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
ctr -a "$d/c.sock" version >/dev/null || die "containerd did not start: $(tail -5 "$d/containerd.log")"
ctr -a "$d/c.sock" images import --base-name docker.io/library/busybox "$busybox_tar" >/dev/null

check() { # check NAME: runs the rest as a test
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); log "ok   $name"; else failed=$((failed + 1)); log "FAIL $name"; fi
}

# run_expect_failure CONFIG WANT...: ctr run must fail and print every WANT.
run_expect_failure() {
  local cfg=$1; shift
  local id=t$RANDOM out
  if out=$(timeout 120 ctr -a "$d/c.sock" run --rm --runtime io.containerd.hyper.v1 \
             --runtime-config-path "$cfg" docker.io/library/busybox:1.35 "$id" echo hi 2>&1); then
    echo "ctr run succeeded unexpectedly: $out"; return 1
  fi
  local w
  for w in "$@"; do
    grep -qF -- "$w" <<<"$out" || { echo "missing '$w' in: $out"; return 1; }
  done
  ctr -a "$d/c.sock" containers rm "$id" >/dev/null 2>&1 || true
  no_leftovers
}

no_leftovers() {
  sleep 0.5
  local mounts vmms
  # The state dir itself is a private mount of its own, on purpose: what is below counts.
  mounts=$(grep -c " $d/state/\| $d/hyper/" /proc/mounts || true)
  vmms=$(pgrep -f -- "hyper-vmm.*$d" || true)
  [ "$mounts" -eq 0 ] || { echo "leftover mounts:"; grep " $d/" /proc/mounts; return 1; }
  [ -z "$vmms" ] || { echo "leftover hyper-vmm: $vmms"; return 1; }
  [ -z "$(ls -A "$d/hyper" 2>/dev/null)" ] || { echo "leftover state: $(find "$d/hyper")"; return 1; }
}

version_flag() { "$bin/containerd-shim-hyper-v1" -v | grep -q "io.containerd.hyper.v1"; }
check "shim -v names its runtime" version_flag

printf '[hypervisor]\nvcpu = 2\n' > "$d/typo.toml"
check "unknown config key is named" run_expect_failure "$d/typo.toml" "unknown field" "vcpu"

cat > "$d/nokernel.toml" <<TOML
[hypervisor]
path = "$bin/hyper-vmm"
kernel = "/nonexistent/vmlinux"
image = "$image"
[runtime]
state_dir = "$d/hyper"
TOML
check "missing kernel is named, nothing left" run_expect_failure "$d/nokernel.toml" "/nonexistent/vmlinux"

cat > "$d/vmmdies.toml" <<TOML
[hypervisor]
path = "/bin/false"
kernel = "$kernel"
image = "$image"
[runtime]
state_dir = "$d/hyper"
TOML
check "VMM that dies during boot is reported, nothing left" \
  run_expect_failure "$d/vmmdies.toml" "exited while the guest was booting"

cat > "$d/noboot.toml" <<TOML
[hypervisor]
path = "$bin/hyper-vmm"
kernel = "$kernel"
image = "$image"
boot_timeout_ms = 3000
debug_console = true
[runtime]
state_dir = "$d/hyper"
TOML
# Under this machine's KVM the guest kernel never gets far: the shim must give up in time,
# say why, and stop the VMM.
check "guest that never answers: timeout, VMM stopped, nothing left" \
  run_expect_failure "$d/noboot.toml" "agent did not answer within 3s"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

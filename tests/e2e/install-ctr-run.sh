#!/bin/bash
# An operator's path from `make install` (staged by run.sh, at PREFIX /opt/hyper here):
# `hyperctl check` from the install passes every check on this KVM, booting the installed
# kernel and image, and `ctr run --runtime io.containerd.hyper.v1` runs a container with
# containerd finding the installed shim on its PATH and the shim the installed config.
# timeout: 300
# needs: containerd install
# shellcheck source=lib.sh
. "$TH_LIB"
prefix=/opt/hyper
config=$prefix/etc/hyper/config.toml
[ -f "$prefix/share/hyper/install-manifest" ] || fail "no install at $prefix (run.sh stages it for '# needs: install')"
export PATH=$prefix/bin:$PATH
for b in containerd-shim-hyper-v1 hyper-vmm hyperctl; do
  [ "$(command -v "$b")" = "$prefix/bin/$b" ] || fail "$b resolves to '$(command -v "$b")', not the install"
done
grep -qx "path = \"$prefix/bin/hyper-vmm\"" "$config" || fail "the installed config does not name the installed hyper-vmm"

# The installed config keeps its state in /run/hyper; the test host's /run is a tmpfs.
# A pod network needs /dev/net/tun, which the test host makes only once tun is loaded.
modprobe tun || fail "modprobe tun failed"
rc=0
out=$(timeout 240 hyperctl --config "$config" check 2>&1) || rc=$?
echo "$out"
[ $rc -eq 0 ] || fail "hyperctl check failed (rc $rc) on a host that runs hyper"
for c in root kvm vmm kvm-guest-code cgroup2 overlayfs shim containerd guest-kernel guest-image guest-boot; do
  grep -qE "^OK +$c " <<<"$out" || fail "check $c is not OK"
done
grep -qE '^OK +guest-boot +booted a VM to its agent in [0-9]+ ms: kernel [^ ]*-hyper' <<<"$out" \
  || fail "guest-boot did not report the guest kernel"
[ -z "$(ls -A /run/hyper 2>/dev/null)" ] || fail "hyperctl check left state in /run/hyper: $(ls -A /run/hyper)"
grep -qE '^WARN +containerd-config .*no runtime io.containerd.hyper.v1' <<<"$out" \
  || fail "a containerd without the CRI snippet is not named"
# The CRI snippet the install made, in a containerd config, satisfies the check.
{ echo 'version = 2'; cat "$prefix/share/hyper/containerd-hyper.toml"; } > "$TH_ART/containerd-with-hyper.toml"
out=$(timeout 60 hyperctl --config "$config" check --containerd-config "$TH_ART/containerd-with-hyper.toml" containerd-config 2>&1) \
  || fail "containerd does not take the installed CRI snippet: $out"
grep -qE '^OK +containerd-config ' <<<"$out" || fail "the installed CRI snippet does not declare the runtime: $out"

ctd_start
ctd_import_busybox
rc=0
out=$(ctr run --rm --runtime io.containerd.hyper.v1 --runtime-config-path "$config" \
        "$BUSYBOX_REF" installed sh -c 'echo hello-from-the-install; uname -r' 2>&1) || rc=$?
echo "$out"
[ $rc -eq 0 ] || { grep -iE 'hyper|shim' "$TH_ART/containerd.log" | tail -30; fail "ctr run from the install failed (rc $rc)"; }
grep -q hello-from-the-install <<<"$out" || fail "the container's greeting did not reach ctr"
grep -q -- '-hyper' <<<"$out" || fail "uname -r is not the guest kernel's"
# The shim containerd spawned is the installed one.
ctr run -d --runtime io.containerd.hyper.v1 --runtime-config-path "$config" "$BUSYBOX_REF" installed-d sleep 600 \
  || fail "ctr run -d from the install failed"
shim=$(pids_matching "containerd-shim-hyper-v1 .*-address $CTD/containerd.sock" | head -1)
exe=$(readlink "/proc/$shim/exe" 2>/dev/null || true)
ctr task kill -s SIGKILL installed-d >/dev/null 2>&1 || true
for _ in $(seq 100); do ctr task rm installed-d >/dev/null 2>&1 && break; th_sleep 0.2; done
ctr container rm installed-d >/dev/null 2>&1 || true
[ "$exe" = "$prefix/bin/containerd-shim-hyper-v1" ] || fail "containerd ran the shim '$exe' (pid '$shim'), not the installed one"
[ -z "$(ls -A /run/hyper 2>/dev/null)" ] || fail "the pod left state in /run/hyper: $(ls -A /run/hyper)"
log "hyperctl check and ctr run from the installed files only"

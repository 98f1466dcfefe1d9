#!/usr/bin/env bash
# The demo's job on this host, where KVM boots our guest: a containerd of the demo's own
# (its root, state and sockets in a temporary directory; the system's containerd is left
# alone) runs `ctr run --runtime io.containerd.hyper.v1 busybox ...` through the shim in
# BIN_DIR, prints what the container said and where the pod's start-up time went, and
# stops containerd and removes everything it made.
#
# usage: demo-host.sh BIN_DIR KERNEL IMAGE BUSYBOX_OCI_TAR
#   BIN_DIR holds containerd-shim-hyper-v1 and hyper-vmm; containerd and ctr come from PATH.
# Self-contained (the test host runs it as well, standing in for a KVM host).
set -euo pipefail
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ $# -eq 4 ] || die "usage: demo-host.sh BIN_DIR KERNEL IMAGE BUSYBOX_OCI_TAR"
bin=$(realpath "$1") kernel=$(realpath "$2") image=$(realpath "$3") busybox=$(realpath "$4")
for b in containerd-shim-hyper-v1 hyper-vmm; do [ -x "$bin/$b" ] || die "$bin/$b is missing: build it first"; done
for b in containerd ctr; do command -v "$b" >/dev/null || die "$b is not on PATH (Debian: apt install containerd)"; done

d=$(mktemp -d /tmp/hyper-demo.XXXXXX)
ctd_pid=""
cleanup() {
  set +e
  if [ -n "$ctd_pid" ]; then kill "$ctd_pid" 2>/dev/null; wait "$ctd_pid" 2>/dev/null; fi
  # Shims and VMMs of this containerd: they carry our private paths; ended by PID (a
  # /proc scan: a test host has no pgrep).
  local p
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -qF -- "$d/" && kill -9 "${p#/proc/}" 2>/dev/null
  done
  grep -o " $d/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$d"
}
trap cleanup EXIT

cat > "$d/containerd.toml" <<EOT
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.btrfs"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
EOT
cat > "$d/hyper.toml" <<EOT
[hypervisor]
path = "$bin/hyper-vmm"
kernel = "$kernel"
image = "$image"
[runtime]
state_dir = "$d/hyper"
EOT
log "starting a containerd of the demo's own under $d"
PATH="$bin:$PATH" containerd --config "$d/containerd.toml" > "$d/containerd.log" 2>&1 &
ctd_pid=$!
ctr() { command ctr -a "$d/containerd.sock" "$@"; }
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr version >/dev/null 2>&1 || die "containerd did not start: $(tail -5 "$d/containerd.log")"
log "importing busybox"
ctr images import --base-name docker.io/library/busybox "$busybox" > /dev/null || die "ctr images import $busybox failed"
ref=$(ctr images ls -q | grep -m1 busybox) || die "no busybox image after the import of $busybox"

# now_ms: milliseconds since boot (busybox's date has no %N).
now_ms() { local u; read -r u _ < /proc/uptime; echo $(( ${u%.*} * 1000 + 10#${u#*.} * 10 )); }
log "ctr run --rm --runtime io.containerd.hyper.v1 $ref sh -c 'echo hello-from-hyper; uname -r'"
t0=$(now_ms)
out=$(ctr run --rm --runtime io.containerd.hyper.v1 --runtime-config-path "$d/hyper.toml" \
        "$ref" hyper-demo sh -c 'echo hello-from-hyper; uname -r' 2>&1) \
  || { echo "$out" >&2; grep -iE 'hyper|shim' "$d/containerd.log" | tail -20 >&2; die "ctr run failed"; }
ms=$(( $(now_ms) - t0 ))
log "the container said (through ctr, from inside its microVM):"
sed 's/^/    /' <<<"$out" | tr -d '\r'
log "ctr run took $ms ms from start to exit, VM boot and teardown included"
# The shim logs its start-up trace when the pod is gone; give containerd a moment.
for _ in $(seq 50); do grep -q 'startup trace' "$d/containerd.log" && break; sleep 0.1; done
trace=$(grep -o 'startup trace pod=[^ ]* steps=[a-z_=0-9 ]*' "$d/containerd.log" | tail -1 | sed 's/.* steps=//')
if [ -n "$trace" ]; then
  log "where the start went (ms since containerd ran the shim):"
  tr ' ' '\n' <<<"$trace" | grep -E '^(vmm_spawned|vcpus_started|guest_init|agent_ready|container_created|process_started|exit_seen|vm_stopped)=' \
    | sed 's/^/    /' >&2
fi
echo "demo-host: ctr run took $ms ms; startup trace: ${trace:-none}"

#!/bin/bash
# The test host can run containerd 1.6 + runc (cgroup2, overlay on tmpfs): containerd
# starts, and `ctr run --rootfs` runs a busybox container. The base for the shim's tests.
# timeout: 240
# needs: containerd
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr runc containerd-shim-runc-v2
d=/tmp/ctd
mkdir -p $d/root $d/state $d/rootfs/{bin,proc,dev,sys,etc,tmp}
cat > $d/config.toml <<EOT
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
cp /usr/bin/busybox $d/rootfs/bin/busybox
ln -s busybox $d/rootfs/bin/sh
t0=$(now_ms)
containerd --config $d/config.toml > "$TH_ART/containerd.log" 2>&1 < /dev/null &
ctd=$!
stop_containerd() {
  kill -TERM "$ctd" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$ctd" 2>/dev/null || break; th_sleep 0.1; done
  kill -KILL "$ctd" 2>/dev/null || true
  wait "$ctd" 2>/dev/null || true
}
trap 'stop_containerd; _th_cleanup' EXIT
ctr() { command ctr --address $d/containerd.sock "$@"; }
until ctr version > /dev/null 2>&1; do
  kill -0 "$ctd" 2>/dev/null || { tail -20 "$TH_ART/containerd.log"; fail "containerd exited"; }
  (( $(now_ms) - t0 < 60000 )) || { tail -20 "$TH_ART/containerd.log"; fail "containerd did not answer within 60 s"; }
  th_sleep 0.2
done
log "containerd answers after $(( $(now_ms) - t0 )) ms"
t1=$(now_ms)
out=$(ctr run --rm --env PATH=/bin --rootfs $d/rootfs smoke /bin/sh -c 'echo hello-from-runc; cat /proc/self/cgroup' 2>&1) \
  || { echo "$out"; tail -20 "$TH_ART/containerd.log"; fail "ctr run failed"; }
echo "$out"
grep -q hello-from-runc <<<"$out" || fail "the container did not print its greeting"
log "PASS-INFO testhost-containerd: ctr run (runc) took $(( $(now_ms) - t1 )) ms"

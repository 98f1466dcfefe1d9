#!/bin/bash
# The test host can run containerd 1.6 + runc: containerd starts, and `ctr run --rootfs`
# runs a busybox container (cgroup2; no image, so no snapshotter yet). The base for the
# shim's tests.
# timeout: 240
# needs: containerd
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr runc containerd-shim-runc-v2
ctd_start
t1=$(now_ms)
out=$(ctr run --rm --env PATH=/bin --rootfs $CTD/rootfs smoke /bin/sh -c 'echo hello-from-runc; cat /proc/self/cgroup' 2>&1) \
  || { echo "$out"; tail -20 "$TH_ART/containerd.log"; fail "ctr run failed"; }
echo "$out"
grep -q hello-from-runc <<<"$out" || fail "the container did not print its greeting"
log "PASS-INFO testhost-containerd: ctr run (runc) took $(( $(now_ms) - t1 )) ms"

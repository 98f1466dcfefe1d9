#!/bin/bash
# The test host can run containerd 1.6 + runc: containerd starts, and `ctr run --rootfs`
# runs a busybox container (cgroup2), and an imported busybox image runs on containerd's
# overlayfs snapshotter. The base for the shim's tests.
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
log "ctr run --rootfs (runc) took $(( $(now_ms) - t1 )) ms"
# An image: unpacked by the overlayfs snapshotter under /tmp (tmpfs in the test host).
t1=$(now_ms)
ctd_import_busybox
out=$(ctr run --rm "$BUSYBOX_REF" smoke2 sh -c 'echo hello-from-image; grep " / " /proc/mounts' 2>&1) \
  || { echo "$out"; tail -20 "$TH_ART/containerd.log"; fail "ctr run $BUSYBOX_REF failed"; }
echo "$out"
grep -q hello-from-image <<<"$out" || fail "the image's container did not print its greeting"
grep -q '^overlay / overlay' <<<"$out" || fail "the container's root is not an overlay mount"
log "PASS-INFO testhost-containerd: import + ctr run of $BUSYBOX_REF (overlayfs) took $(( $(now_ms) - t1 )) ms"

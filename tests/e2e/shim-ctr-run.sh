#!/bin/bash
# containerd runs containers through our shim: `ctr run --runtime io.containerd.hyper.v1`
# (a --rootfs dir, then an imported image) boots a VM with hyper-vmm, the agent runs the
# command, its output reaches ctr, and everything is torn down (--rm) and exits. Not in the
# default suite until the shim gets there.
# timeout: 300
# needs: containerd hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1
hyper_config
CTD_LOG_LEVEL=debug ctd_start
t1=$(now_ms)
rc=0
out=$(ctr run --rm --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml \
        --env PATH=/bin --rootfs $CTD/rootfs hyper1 /bin/sh -c 'echo hello-from-hyper; uname -r' 2>&1) || rc=$?
took=$(( $(now_ms) - t1 ))
echo "$out"
# Keep what the shim left for the artefacts (consoles, logs), whatever happened.
find /tmp/hyper -maxdepth 3 \( -name '*.log' -o -name '*console*' \) -exec cp {} "$TH_ART/" \; 2>/dev/null || true
if [ $rc -ne 0 ]; then
  grep -iE 'hyper|shim' "$TH_ART/containerd.log" | tail -30
  fail "ctr run with the hyper runtime failed (rc $rc) after $took ms"
fi
grep -q hello-from-hyper <<<"$out" || fail "the container's greeting did not reach ctr"
grep -q -- '-hyper' <<<"$out" || fail "uname -r is not the guest kernel's (did it run in the VM?)"
log "ctr run --rootfs with the hyper runtime took $took ms"
# The real path: an image, whose rootfs containerd hands the shim as overlay mounts.
ctd_import_busybox
t1=$(now_ms); rc=0
out=$(ctr run --rm --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml \
        "$BUSYBOX_REF" hyper2 sh -c 'echo hello-from-hyper-image; uname -r; grep " / " /proc/mounts' 2>&1) || rc=$?
took=$(( $(now_ms) - t1 ))
echo "$out"
[ $rc -eq 0 ] || { grep -iE 'hyper|shim' "$TH_ART/containerd.log" | tail -30; fail "ctr run $BUSYBOX_REF with the hyper runtime failed (rc $rc) after $took ms"; }
grep -q hello-from-hyper-image <<<"$out" || fail "the image container's greeting did not reach ctr"
grep -q -- '-hyper' <<<"$out" || fail "uname -r is not the guest kernel's (did it run in the VM?)"
grep -q '^hypershare / virtiofs' <<<"$out" || fail "the image's rootfs is not the virtio-fs share: $out"
log "ctr run $BUSYBOX_REF with the hyper runtime took $took ms (rootfs over virtio-fs)"
# The second rootfs path: shared_fs = "none" copies the rootfs onto a virtio-blk disk.
awk '{ print } /^\[hypervisor\]$/ { print "shared_fs = \"none\"" }' $CTD-hyper.toml > $CTD-hyper-blk.toml
rc=0
out=$(ctr run --rm --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper-blk.toml \
        "$BUSYBOX_REF" hyper3 sh -c 'echo hello-from-blk; grep " / " /proc/mounts' 2>&1) || rc=$?
echo "$out"
[ $rc -eq 0 ] || fail "ctr run with shared_fs = none failed (rc $rc)"
grep -q hello-from-blk <<<"$out" || fail "no greeting from the block-rootfs container"
grep -q '^/dev/vd[a-z] / ext4' <<<"$out" || fail "with shared_fs = none the rootfs is not the ext4 disk: $out"
log "shared_fs = none: the rootfs came on a virtio-blk ext4 disk"
# With --rm the task is deleted, so the shim (and its VMM) must exit on their own.
shim_pids() {
  local p
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -qE '^(/usr/local/bin/)?(containerd-shim-hyper-v1|hyper-vmm) ' && echo "${p#/proc/}"
  done
  return 0
}
t2=$(now_ms)
while [ -n "$(shim_pids)" ] && (( $(now_ms) - t2 < 15000 )); do th_sleep 0.2; done
left=$(shim_pids)
[ -z "$left" ] || fail "shim/VMM still running 15 s after 'ctr run --rm' returned: $(for p in $left; do tr '\0' ' ' < /proc/$p/cmdline; echo; done)"
log "shim and VMM gone $(( $(now_ms) - t2 )) ms after ctr returned"
log "PASS-INFO shim-ctr-run: ctr run --runtime io.containerd.hyper.v1 took $took ms"

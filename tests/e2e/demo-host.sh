#!/bin/bash
# `make demo`'s path on a host whose KVM boots our guest (the test host stands in for one):
# scripts/demo-host.sh runs the job with a containerd of its own, prints what the
# container said and the pod's start-up times, and leaves nothing behind.
# timeout: 300
# needs: containerd demo hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1
rc=0
out=$(bash /usr/share/hyper-tests/demo-host.sh /usr/local/bin "$GUEST_KERNEL" "$GUEST_INITRD" "$BUSYBOX_OCI" 2>&1) || rc=$?
echo "$out"
[ $rc -eq 0 ] || fail "demo-host.sh failed (rc $rc)"
grep -q '^    hello-from-hyper' <<<"$out" || fail "the container's greeting is not in the demo's output"
grep -qE '^    [0-9.]+-hyper' <<<"$out" || fail "the guest kernel's release is not in the demo's output"
grep -qE '^demo-host: ctr run took [0-9]+ ms; startup trace: shim_spawned=0 .*agent_ready=[0-9]+ .*process_started=[0-9]+' <<<"$out" \
  || fail "the demo did not print the start-up trace"
left=$(ls -d /tmp/hyper-demo.* 2>/dev/null || true)
[ -z "$left" ] || fail "the demo left $left"
left=$(pids_matching '/tmp/hyper-demo\.')
[ -z "$left" ] || fail "the demo left processes: $left"
log "$(grep '^demo-host:' <<<"$out")"

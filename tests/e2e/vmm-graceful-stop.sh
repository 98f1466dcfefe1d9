#!/bin/bash
# hyper-vmm's control socket and graceful stop with our guest: the agent reports the boot
# time through the boot-timer register, `stop` sends Ctrl-Alt-Del through the i8042, the
# agent (PID 1) gets SIGINT, stops, reboots, and the VMM exits 0 well before its hard-stop
# timeout.
# timeout: 240
# needs: hyper-vmm hyperctl
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin hyper-vmm hyperctl
api=/tmp/g1.api
vm_start_hyper g1 --vsock 3 --api-socket "$api"
expect_console g1 "$READY_MARKER" 90
t0=$(now_ms)
until grep -q 'guest-boot-time-us=' "$TH_ART/g1.vmm.log"; do
  (( $(now_ms) - t0 < 10000 )) || fail "hyper-vmm logged no guest-boot-time-us: the agent's boot-timer write did not arrive"
  th_sleep 0.1
done
log "boot timer: $(grep -o 'guest-boot-time-us=[0-9]*' "$TH_ART/g1.vmm.log" | head -1)"
out=$(hyperctl vmm --api-socket "$api" ping) || fail "ping failed: $out"
grep -q '"state":"running"' <<<"$out" || fail "unexpected ping answer: $out"
out=$(hyperctl vmm --api-socket "$api" metrics) || fail "metrics failed: $out"
grep -q '"exits"' <<<"$out" || fail "metrics without exit counters: $out"
t_stop=$(now_ms)
hyperctl vmm --api-socket "$api" stop > /dev/null || fail "stop failed"
vm_wait_exit g1 30
took=$(( $(now_ms) - t_stop ))
[ "$VM_RC" -eq 0 ] || fail "hyper-vmm exited $VM_RC after stop"
grep -q 'SIGINT: stopping' "$TH_ART/g1.console" || fail "the agent never saw Ctrl-Alt-Del (no 'SIGINT: stopping' on the console)"
(( took < 4000 )) || fail "stop took $took ms: the hard-stop timeout, not the guest, ended the VM"
log "PASS-INFO vmm-graceful-stop: stop -> VMM exit in $took ms, via the guest's own reboot"

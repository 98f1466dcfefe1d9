#!/bin/bash
# QEMU (microvm, -accel kvm) boots our guest kernel and image inside the test host, and the
# agent reports ready on the console. The reference point for boot-hyper-vmm.
# timeout: 240
# shellcheck source=lib.sh
. "$TH_LIB"
vm_start_qemu g1 --vsock 3
expect_console g1 "$READY_MARKER" 90
log "PASS-INFO boot-qemu: spawn -> $READY_MARKER in $WAIT_MS ms"
grep -m1 "$READY_MARKER" "$TH_ART/g1.console" | tr -d '\r'
# The agent serves until told otherwise; the test ends the VM by PID.
vm_stop g1

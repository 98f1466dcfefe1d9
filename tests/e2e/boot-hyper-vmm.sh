#!/bin/bash
# hyper-vmm boots our guest kernel and image inside the test host, and the agent reports
# ready on the console.
# timeout: 240
# needs: hyper-vmm
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin hyper-vmm
vm_start_hyper g1 --vsock 3
expect_console g1 "$READY_MARKER" 90
log "PASS-INFO boot-hyper-vmm: spawn -> $READY_MARKER in $WAIT_MS ms"
grep -m1 "$READY_MARKER" "$TH_ART/g1.console" | tr -d '\r'
grep -m1 -o 'guest-boot-time-us=[0-9]*' "$TH_ART/g1.vmm.log" || log "hyper-vmm logged no guest-boot-time-us"
vm_stop g1

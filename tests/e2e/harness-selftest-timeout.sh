#!/bin/bash
# The runner's own watchdog: a test that hangs (here with an inner VM and a stray child
# running) is stopped at its timeout, and every process it started is killed. Its header
# says "expect: timeout", so being stopped is this test's pass; ending by itself fails it.
# timeout: 12
# expect: timeout
# shellcheck source=lib.sh
. "$TH_LIB"
trap - EXIT            # no cleanup of our own: the runner's watchdog must do it all
vm_start_qemu hung --initrd "$BROKEN_INITRD"
sleep 3600 &
log "hanging on purpose; the runner must kill this session after ${TH_TIMEOUT}s"
while :; do sleep 1; done

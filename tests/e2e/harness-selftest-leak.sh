#!/bin/bash
# The runner's leak check: a test that ends "successfully" but leaves processes behind (an
# inner VM and a child still holding the test's output) must fail, with the leftovers
# named and killed, and the runner must not hang on the held output. Its header says
# "expect: leak", so being caught is its pass.
# timeout: 60
# expect: leak
# shellcheck source=lib.sh
. "$TH_LIB"
trap - EXIT            # leave everything running on purpose
vm_start_qemu leaked --initrd "$BROKEN_INITRD"
sleep 600 &            # inherits the test's stdout, as a careless daemon would
log "exiting 0 with qemu pid ${VM_PID[leaked]} and sleep pid $! still running"
exit 0

#!/bin/bash
# hyper-vmm boots a bzImage too: Debian's compressed cloud kernel (the test host's own)
# decompresses itself in the guest and runs our initramfs's /init. (That kernel has
# vsock as a module, so the agent stops there and reboots the VM: the test looks for the
# kernel handing over to /init, and for the VMM exiting cleanly on the reboot.)
# timeout: 240
# needs: hyper-vmm distro-bzimage
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin hyper-vmm
[ -f /guest/distro-bzImage ] || fail "no /guest/distro-bzImage on the data disk"
vm_start_hyper g1 --kernel /guest/distro-bzImage --memory-mib 512 \
  --cmdline "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
expect_console g1 "Linux version .*cloud-amd64" 120
expect_console g1 "Run /init as init process" 120
log "PASS-INFO boot-bzimage: spawn -> /init in $WAIT_MS ms"
vm_wait_exit g1 60
[ "$VM_RC" -eq 0 ] || fail "hyper-vmm exited $VM_RC after the guest rebooted"

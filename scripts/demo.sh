#!/usr/bin/env bash
# `make demo`: set up everything and run the main job as far as it exists today.
# The main job is a container in a microVM through containerd; each step below says
# plainly whether it ran or is not there yet.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
source "$here/common.sh"
cd "$HYPER_ROOT"
command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"

log "1/3 guest kernel (cached after the first build)"
kernel=$(bash guest-kernel-config/build.sh)
log "2/3 guest image (static hyper-agent as /init)"
image=$(bash guest-kernel-config/image/build.sh)

log "3/3 boot kernel + image and wait for the agent"
bash guest-kernel-config/tests/boot-tcg.sh "$kernel" "$image"
log "  (that boot ran under QEMU's software CPU: this machine's own KVM cannot boot Linux guests)"

log "not there yet: hyper-vmm booting the guest in the test host, and"
log "'ctr run --runtime io.containerd.hyper.v1 busybox echo hello' (needs the shim)"

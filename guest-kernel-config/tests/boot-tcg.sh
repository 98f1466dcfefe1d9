#!/usr/bin/env bash
# Smoke test of the guest kernel + image without KVM: QEMU's software CPU boots them
# and the agent must print its readiness line on the serial console.
# usage: boot-tcg.sh VMLINUX INITRAMFS [TIMEOUT_S]
# This proves the kernel config and /init work; the real boots (KVM, hyper-vmm) run in
# the test host (tests/harness).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../scripts/common.sh
source "$here/../../scripts/common.sh"
kernel=$1 initrd=$2 limit=${3:-180}
marker=HYPER-AGENT-READY
apt_need qemu-system-x86
console=$(mktemp /tmp/hyper-boot-tcg.XXXXXX.log)
start=$(date +%s%N)
qemu-system-x86_64 -M microvm -accel tcg -cpu max -m 256 -nodefaults -no-user-config \
  -nographic -serial "file:$console" -display none -no-reboot \
  -kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 panic=-1 reboot=t" &
qemu=$!
trap 'kill "$qemu" 2>/dev/null || true; wait "$qemu" 2>/dev/null || true' EXIT
while ! grep -q "$marker" "$console"; do
  if ! kill -0 "$qemu" 2>/dev/null; then
    tail -40 "$console" >&2
    die "QEMU exited before the agent was ready (console: $console)"
  fi
  if [ $(( ($(date +%s%N) - start) / 1000000000 )) -ge "$limit" ]; then
    tail -40 "$console" >&2
    die "no '$marker' within ${limit}s (console: $console)"
  fi
  sleep 0.2
done
ms=$(( ($(date +%s%N) - start) / 1000000 ))
grep -m1 "$marker" "$console" >&2
grep -qE "Kernel panic|Oops:|BUG:" "$console" && { tail -40 "$console" >&2; die "kernel complained before readiness"; }
log "guest agent ready after ${ms} ms under QEMU TCG (no KVM)"
rm -f "$console"

#!/usr/bin/env bash
# `make demo`: set up everything and run the main job: a container in a microVM through
# containerd, i.e. `ctr run --runtime io.containerd.hyper.v1 busybox ...`.
#
# This machine's own KVM cannot boot a Linux guest (../shared/testing.md), so the job runs
# inside the nested test host (tests/harness): containerd, our shim, hyper-vmm, the guest
# kernel and the agent all run there for real, under the test host's KVM. If the test host
# itself hangs (an emulator-level hang, tests/harness/README.md), run.sh notices it within a
# minute and runs the demo again in a fresh test-host boot (at most twice), saying so.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
source "$here/common.sh"
cd "$HYPER_ROOT"
command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"

log "1/3 guest kernel (cached after the first build, ~5 min on 2 cores the first time)"
kernel=$(bash guest-kernel-config/build.sh)
log "2/3 guest image (static hyper-agent as /init)"
image=$(bash guest-kernel-config/image/build.sh)

log "3/3 in the test host: containerd -> containerd-shim-hyper-v1 -> hyper-vmm -> guest -> container"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if GUEST_KERNEL=$kernel GUEST_INITRD=$image bash tests/harness/run.sh shim-ctr-run 2>&1 | tee "$out"; then
  echo
  log "the container said (through ctr, from inside its microVM):"
  grep -E '^\s+\| (hello-from-hyper|[0-9]+\.[0-9]+\.[0-9]+.*-hyper)' "$out" | sed 's/^ *| /    /' | tr -d '\r' || true
  if grep -q '^   infrastructure retries:' "$out"; then
    log "note: the test host hung (an emulator-level hang, not hyper) and the demo ran again in a fresh test-host boot:"
    grep '^     - ' "$out" | sed 's/^ *- /    /' >&2
  fi
  log "demo done: ctr run --runtime io.containerd.hyper.v1 ran busybox in a hyper microVM"
else
  die "the demo's ctr run failed; the harness printed the logs above"
fi

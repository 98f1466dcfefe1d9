#!/usr/bin/env bash
# `make demo`: set up everything and run the main job: a container in a microVM through
# containerd, i.e. `ctr run --runtime io.containerd.hyper.v1 busybox ...`.
#
# Where it runs is `hyperctl check`'s call: where this host's KVM runs guest kernel code,
# on the host itself, with a containerd of the demo's own (scripts/demo-host.sh; the
# system's containerd is left alone), printing the real start-up times. Where it cannot
# (our build machines' nested KVM emulates guest kernel code, ../shared/testing.md), in
# the nested test host (tests/harness), saying why: containerd, our shim, hyper-vmm, the
# guest kernel and the agent all run there for real, under the test host's KVM. If the
# test host itself hangs (an emulator-level hang, tests/harness/README.md), run.sh notices
# it within a minute and runs the demo again in a fresh test-host boot (at most twice).
#
# usage: demo.sh [--decide]   (--decide: only say where the demo would run, and why)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
source "$here/common.sh"
cd "$HYPER_ROOT"
command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
decide_only=0
case "${1:-}" in --decide) decide_only=1 ;; "") ;; *) die "usage: demo.sh [--decide]" ;; esac

log "1/4 hyper-vmm, the shim and hyperctl (cargo build --release; a few minutes the first time)"
nice cargo build -q --release -p hyper-vmm -p hyper-shim || die "cargo build failed: see the errors above"
rel=$HYPER_ROOT/target/release

# where: "host" if this host's KVM runs guest kernel code, else the check's reason.
log "2/4 can this host's KVM boot the guest? (hyperctl check kvm-guest-code)"
cfg=$(mktemp)
trap 'rm -f "$cfg"' EXIT
printf '[hypervisor]\npath = "%s/hyper-vmm"\n' "$rel" > "$cfg"
if verdict=$("$rel/hyperctl" --config "$cfg" check kvm-guest-code 2>&1); then where=host; else where=testhost; fi
printf '%s\n' "$verdict" | sed 's/^/    /' >&2
if [ "$where" = host ]; then
  log "decision: run on this host (its KVM runs guest kernel code)"
else
  why=$(grep -E '^(FAIL|SKIP) ' <<<"$verdict" | head -1 | sed -E 's/^(FAIL|SKIP) +[a-z-]+ +//')
  log "decision: run in the nested test host, because: ${why:-hyperctl check failed}"
fi
[ "$decide_only" = 1 ] && { echo "demo runs on: $where"; exit 0; }

log "3/4 guest kernel (cached after the first build, ~5 min on 2 cores the first time) and image"
kernel=$(bash guest-kernel-config/build.sh)
image=$(bash guest-kernel-config/image/build.sh)

if [ "$where" = host ]; then
  apt_need containerd
  log "4/4 on this host: containerd -> containerd-shim-hyper-v1 -> hyper-vmm -> guest -> container"
  busybox=$(bash scripts/busybox-image.sh "$HYPER_CACHE/images" | tail -1)
  bash scripts/demo-host.sh "$rel" "$kernel" "$image" "$busybox"
  log "demo done: ctr run --runtime io.containerd.hyper.v1 ran busybox in a hyper microVM on this host"
  exit 0
fi

log "4/4 in the test host: containerd -> containerd-shim-hyper-v1 -> hyper-vmm -> guest -> container"
out=$(mktemp)
trap 'rm -f "$cfg" "$out"' EXIT
if HYPER_VMM=$rel/hyper-vmm CONTAINERD_SHIM_HYPER_V1=$rel/containerd-shim-hyper-v1 \
    GUEST_KERNEL=$kernel GUEST_INITRD=$image bash tests/harness/run.sh shim-ctr-run 2>&1 | tee "$out"; then
  echo
  log "the container said (through ctr, from inside its microVM):"
  grep -E '^\s+\| (hello-from-hyper|[0-9]+\.[0-9]+\.[0-9]+.*-hyper)' "$out" | sed 's/^ *| /    /' | tr -d '\r' || true
  if grep -q '^   infrastructure retries:' "$out"; then
    log "note: the test host hung (an emulator-level hang, not hyper) and the demo ran again in a fresh test-host boot:"
    grep '^     - ' "$out" | sed 's/^ *- /    /' >&2
  fi
  log "demo done: ctr run --runtime io.containerd.hyper.v1 ran busybox in a hyper microVM (in the test host)"
else
  die "the demo's ctr run failed; the harness printed the logs above"
fi

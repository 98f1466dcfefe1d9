#!/usr/bin/env bash
# `make demo` picks where to run from `hyperctl check`: on this host when its KVM runs
# guest kernel code, else in the nested test host, saying why. Checked against the KVM
# probe read here directly: on our build machines (a nested KVM that emulates guest kernel
# code) the demo must choose the test host and name the emulation as the reason. The host
# path itself runs in the test host, which stands in for a KVM host (tests/e2e/demo-host.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../common.sh
source "$here/../common.sh"
out=$(bash "$HYPER_ROOT/scripts/demo.sh" --decide 2>&1) || { echo "$out"; die "demo.sh --decide failed"; }
echo "$out"
probe=$("$HYPER_ROOT/target/release/hyper-vmm" --probe-kvm 2>/dev/null)
ns=$(sed -E 's/.*"iterations":([0-9]+).*"loop_ns":([0-9]+).*/\2 \1/' <<<"$probe" | awk '{ printf "%d", $1 / $2 }')
log "the probe, read here: $probe ($ns ns per iteration)"
passed=0 failed=0
if [ "$ns" -gt 100 ]; then want=testhost; else want=host; fi
if grep -qx "demo runs on: $want" <<<"$out"; then passed=$((passed + 1)); log "ok   the demo runs on: $want"
else failed=$((failed + 1)); log "FAIL the demo should run on: $want"; fi
if [ "$want" = testhost ]; then
  if grep -q 'decision: run in the nested test host, because: this KVM emulates guest kernel code' <<<"$out"; then
    passed=$((passed + 1)); log "ok   the demo says why it does not run on this host"
  else failed=$((failed + 1)); log "FAIL the demo does not say why it does not run on this host"; fi
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# Short coverage-guided fuzzing run of every virtio device's queue handling (libFuzzer
# through cargo fuzz), for CI: each target runs SECONDS (default 10) from its corpus.
# Ends with "N passed, M failed"; a target that finds a crash fails and its input is
# kept under vmm/fuzz/artifacts/. Needs a nightly toolchain (sanitizer flags); without
# one it says so and runs nothing.
# usage: vmm/fuzz/run.sh [SECONDS] [TARGET...]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../scripts/common.sh
source "$here/../../scripts/common.sh"
secs=${1:-10}; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(block fs net rng vsock)
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "skipped: no nightly Rust toolchain on this machine (cargo fuzz needs one); no fuzzing ran"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz from crates.io"
  nice cargo install -q cargo-fuzz --version 0.13.2 --locked >&2 || die "cargo install cargo-fuzz failed"
fi
cd "$here"
log "building the fuzz targets (nightly, ASan)"
nice cargo +nightly fuzz build -O >&2 || { echo "0 passed, 1 failed"; exit 1; }
passed=0 failed=0
for t in "${targets[@]}"; do
  out=$(mktemp)
  if nice cargo +nightly fuzz run -O "$t" -- -max_total_time="$secs" > "$out" 2>&1; then
    passed=$((passed + 1)); log "ok   fuzz $t: $(grep -m1 -o 'Done [0-9]* runs in [0-9]* second(s)' "$out")"
  else
    failed=$((failed + 1)); tail -30 "$out"; log "FAIL fuzz $t (crash input under $here/artifacts/$t/)"
  fi
  rm -f "$out"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

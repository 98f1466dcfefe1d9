#!/usr/bin/env bash
# The whole test suite (`make test`; CI runs exactly this through .ci/run).
# Installs what it needs, runs every layer of tests, and ends with one summary line
# "total: N passed, M failed". Exit status 0 only if nothing failed.
#
# Layers (see ../shared/testing.md): 1-3 unit, bare-machine KVM and agent host tests
# (cargo test); the guest kernel/image builds and checks; 4 full-stack tests in the
# nested test host (tests/harness).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
source "$here/common.sh"
cd "$HYPER_ROOT" || exit 1

export CARGO_TERM_COLOR=never
logs=${HYPER_TEST_LOGS:-$HYPER_ROOT/target/test-logs}
rm -rf "$logs"; mkdir -p "$logs"
passed=0 failed=0
failures=()

record() { # record NAME RC
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); log "PASS $1"
  else failed=$((failed + 1)); failures+=("$1"); log "FAIL $1 (log: $logs/$1.log)"; fi
}

# step NAME CMD...: one check; its output goes to the terminal and to $logs/NAME.log.
step() {
  local name=$1; shift
  log "=== $name"
  "$@" 2>&1 | tee "$logs/$name.log"
  record "$name" "${PIPESTATUS[0]}"
}

# cargo_tests: every cargo test counts on its own; a build failure counts as one failure.
cargo_tests() {
  log "=== cargo test --workspace"
  nice cargo test --workspace --no-fail-fast 2>&1 | tee "$logs/cargo-test.log"
  local rc=${PIPESTATUS[0]} p f
  p=$(grep -E '^test result:' "$logs/cargo-test.log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | paste -sd+ | bc)
  f=$(grep -E '^test result:' "$logs/cargo-test.log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | paste -sd+ | bc)
  p=${p:-0} f=${f:-0}
  passed=$((passed + p)); failed=$((failed + f))
  [ "$f" -gt 0 ] && failures+=("cargo test ($f)")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then record cargo-test-build "$rc"; fi
  log "cargo test: $p passed, $f failed"
}

# suite NAME CMD...: a runner that ends with "N passed, M failed"; each of its tests counts.
suite() {
  local name=$1; shift
  log "=== $name"
  "$@" 2>&1 | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]} line p f
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$logs/$name.log" | tail -1)
  if [ -z "$line" ] && [ "$rc" -eq 0 ] && grep -q '^skipped:' "$logs/$name.log"; then
    log "$name: $(grep -m1 '^skipped:' "$logs/$name.log")"; return
  fi
  if [ -z "$line" ]; then record "$name" 1; return; fi
  p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
  passed=$((passed + p)); failed=$((failed + f))
  [ "$f" -gt 0 ] && failures+=("$name ($f)")
  [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && record "$name (exit $rc)" "$rc"
  log "$name: $p passed, $f failed"
}

command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
apt_need bc gcc make

step fmt cargo fmt --all -- --check
step clippy nice cargo clippy -q --workspace --all-targets -- -D warnings
cargo_tests

# Coverage-guided fuzzing of every virtio device's queue handling, briefly.
suite vmm-fuzz bash vmm/fuzz/run.sh 10

kernel=""
guest_kernel() { kernel=$(bash guest-kernel-config/build.sh) && echo "$kernel" > "$logs/kernel.path"; }
step guest-kernel-build guest_kernel
kernel=$(cat "$logs/kernel.path" 2>/dev/null || true)
if [ -n "$kernel" ]; then
  step guest-kernel-config-check bash guest-kernel-config/tests/config-check.sh "$(dirname "$kernel")/config"
fi
step guest-image-build bash guest-kernel-config/image/build.sh
agent=$HYPER_ROOT/target/x86_64-unknown-linux-gnu/release/hyper-agent
image=$HYPER_ROOT/target/guest/initramfs.cpio.gz
if [ -x "$agent" ]; then
  step guest-image-reproducible bash guest-kernel-config/tests/image-reproducible.sh "$agent"
fi
if [ -n "$kernel" ] && [ -f "$image" ]; then
  step guest-boot-tcg bash guest-kernel-config/tests/boot-tcg.sh "$kernel" "$image"
fi

# The shim under a real containerd on this machine (the paths that need no booted guest).
if [ -n "$kernel" ] && [ -f "$image" ]; then
  if nice cargo build -q -p hyper-shim -p hyper-vmm; then
    suite shim-containerd-host bash shim/tests/containerd-host.sh target/debug "$kernel" "$image"
  else
    record shim-vmm-build 1
  fi
fi

# make install / make uninstall into temporary roots (the test host runs ctr from one).
if [ -n "$kernel" ] && [ -f "$image" ]; then
  suite install env GUEST_KERNEL="$kernel" GUEST_INITRD="$image" bash scripts/tests/install.sh
fi
# Where `make demo` runs (on this host only where its KVM runs guest kernel code).
suite demo-decision bash scripts/tests/demo-decision.sh

# Layer 4: the nested test host. Under TCG the whole test host sometimes goes silent (an
# emulator-level hang, tests/harness/README.md "Test-host hangs"): run.sh notices it within a minute
# (the runner's heartbeat stops), reruns only the test it hit in a fresh boot (at most
# twice) and reports each such infrastructure retry; a test that fails is never retried.
if [ -x tests/harness/run.sh ]; then
  suite test-host bash tests/harness/run.sh
  # The shim's suites again under containerd 1.7 (Debian 13's), beside Debian 12's 1.6.
  if ctd17=$(bash scripts/containerd-1.7.sh "$HYPER_CACHE/containerd-1.7"); then
    suite test-host-containerd-1.7 bash tests/harness/run.sh --add "$ctd17/bin:/opt/containerd-1.7/bin" \
      --env HYPER_CONTAINERD=/opt/containerd-1.7/bin $(grep -v '^#' tests/e2e/containerd-1.7.list)
  else
    record containerd-1.7-fetch 1
  fi
  # That hang handling itself, with a test that makes the test host go silent on purpose.
  suite test-host-hang-handling bash tests/harness/selftest-hang.sh
else
  log "skipped: tests/harness/run.sh not present, no full-stack tests ran"
fi

# The agent's own suites where cgroup v2 has every controller (limits, OOM, freezer,
# stats), and the agent as a real guest's PID 1; they print "skipped" on the bare machine.
if [ -x agent/tests/testhost/run.sh ]; then
  suite agent-test-host bash agent/tests/testhost/run.sh
fi

retries=$(cat "$logs"/test-host.log "$logs"/test-host-containerd-1.7.log "$logs"/agent-test-host.log 2>/dev/null | sed -n 's/^infrastructure retries: //p' | paste -sd+ | bc)
if [ "${retries:-0}" -gt 0 ]; then
  log "WARNING: ${retries} infrastructure retries (the test host hung; each reran only the test it hit):"
  grep -h '^     - ' "$logs"/test-host.log "$logs"/test-host-containerd-1.7.log "$logs"/agent-test-host.log 2>/dev/null >&2
fi
echo "infrastructure retries: ${retries:-0}"
[ ${#failures[@]} -gt 0 ] && log "failed: ${failures[*]}"
echo "total: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/bin/bash
# The harness's own failure path: a guest whose init never prints the agent's marker and
# never exits must make a test fail quickly, with a readable message and the guest's console
# attached, and must leave no VMM behind. Runs such a broken test as a child and checks its
# failure; the expected failure is this test's pass.
# timeout: 180
# shellcheck source=lib.sh
. "$TH_LIB"
sub=$TH_ART/broken-test
mkdir -p "$sub"
cat > "$sub/broken-test.sh" <<'EOT'
. "$TH_LIB"
vm_start_qemu broken --initrd "$BROKEN_INITRD"
expect_console broken "$READY_MARKER" 15
echo "UNREACHABLE: expect_console returned on a broken guest"
EOT
t0=$(now_ms)
rc=0
TH_TEST=broken-test TH_ART=$sub bash "$sub/broken-test.sh" > "$sub/output.log" 2>&1 || rc=$?
took=$(( $(now_ms) - t0 ))
sed 's/^/  broken-test| /' "$sub/output.log"
[ "$rc" -ne 0 ] || fail "the broken guest's test passed (rc 0)"
grep -q "^FAIL: broken-test: timed out after 15 s waiting for /$READY_MARKER/" "$sub/output.log" \
  || fail "no readable timeout message in the broken test's output"
grep -q "BROKEN-GUEST-ALIVE" "$sub/broken.console" || fail "the broken guest's console was not captured in $sub/broken.console"
grep -q -- "----- last .* lines of $sub/broken.console" "$sub/output.log" || fail "the console tail was not attached to the failure"
grep -q UNREACHABLE "$sub/output.log" && fail "expect_console returned after a timeout"
pid=$(cat "$sub/broken.pid")
[ -d "/proc/$pid" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat")" != Z ] && fail "the broken guest's VMM (pid $pid) is still running"
(( took < 60000 )) || fail "the failure took $took ms (the limit was 15 s)"
log "PASS-INFO harness-selftest: broken guest failed as expected in $took ms (rc $rc), console attached, VMM gone"

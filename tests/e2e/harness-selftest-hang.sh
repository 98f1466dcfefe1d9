#!/bin/bash
# The host side's hang handling: in the first test-host boot this test silences the test
# host (it stops the runner's heartbeat and prints nothing), as a hung test host does; run.sh
# must notice the silence, rerun only this test in a fresh boot, and let every other result
# stand. SELFTEST_HANG=first (default) passes from the second boot on; =always goes silent
# in every boot (run.sh must give up after its retries); =fail fails for real in the first
# boot (run.sh must not retry it). Driven by tests/harness/selftest-hang.sh.
# timeout: 300
# shellcheck source=lib.sh
. "$TH_LIB"
mode=${SELFTEST_HANG:-first}
boot=${TH_BOOT:-1}
log "mode $mode, test-host boot $boot"
case "$mode" in
  fail) [ "$boot" -gt 1 ] && exit 0; fail "failing for real in boot $boot (this must not be retried)" ;;
  first) [ "$boot" -gt 1 ] && { log "boot $boot: not silent this time"; exit 0; } ;;
  always) ;;
  *) fail "unknown SELFTEST_HANG=$mode" ;;
esac
hb=$(cat /run/th-heartbeat.pid) || fail "no heartbeat pid in /run/th-heartbeat.pid"
log "stopping the heartbeat (pid $hb) and going silent"
kill -STOP "$hb"
th_sleep 280
kill -CONT "$hb"
fail "run.sh did not stop the silent test host"

#!/usr/bin/env bash
# Checks run.sh's handling of a hung test host, with tests/e2e/harness-selftest-hang.sh
# making the test host go silent on purpose (TH_SILENCE=20 to keep it short):
#   first   it hangs in boot 1 only: detected, diagnosed, rerun alone in boot 2 and passed;
#           the tests before it are not rerun, the ones after it run in boot 2
#   always  it hangs in every boot: given up after 2 retries, FAIL naming the hangs
#   fail    it fails for real: never retried
# usage: tests/harness/selftest-hang.sh     (ends with "N passed, M failed")
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../scripts/common.sh
source "$here/../../scripts/common.sh"
passed=0 failed=0
work=$(mktemp -d "${TMPDIR:-/tmp}/hyper-selftest-hang.XXXXXX")
trap 'rm -rf "$work"' EXIT
check() { # check CASE DESCRIPTION CONDITION...
  local c=$1 d=$2; shift 2
  if "$@"; then log "ok   $c: $d"; else log "FAIL $c: $d"; bad=1; fi
}
has() { grep -qE -- "$1" "$out"; }
runs() { # runs CASE EXPECTED_RC ARGS...: one run.sh; sets out and dir
  local c=$1 want=$2; shift 2
  out=$work/$c.out; bad=0
  log "=== case $c: run.sh $*"
  TH_SILENCE=20 bash "$here/run.sh" "$@" > "$out" 2>&1
  local rc=$?
  dir=$(sed -n 's/^== summary (run dir: \(.*\))$/\1/p' "$out")
  check "$c" "run.sh exit status $rc (want $want)" test "$rc" -eq "$want"
}
done_case() { # done_case CASE
  if [ "$bad" = 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); tail -40 "$out"; fi
  log "case $1: run dir $dir"
}

runs first 0 harness-selftest-leak harness-selftest-hang harness-selftest-timeout
check first "3 passed, 0 failed" has '^3 passed, 0 failed$'
check first "one infrastructure retry" has '^infrastructure retries: 1$'
check first "silence detected and diagnosed" has 'went silent for 20s .*during harness-selftest-hang'
check first "a monitor dump of the hung boot" grep -q '^RIP=' "$dir/hang-diagnosis.txt"
check first "boot 2 ran only the hung test and the one after it" \
  test "$(cut -d' ' -f1 "$dir/boot-2/plan" 2>/dev/null | paste -sd' ')" = "harness-selftest-hang harness-selftest-timeout"
done_case first

runs always 1 --env SELFTEST_HANG=always harness-selftest-hang
check always "0 passed, 1 failed" has '^0 passed, 1 failed$'
check always "two infrastructure retries" has '^infrastructure retries: 2$'
check always "the failure names the hangs" has '^FAIL harness-selftest-hang .*hung during it in 3 boots'
check always "no fourth boot" test ! -d "$dir/boot-4"
done_case always

runs fail 1 --env SELFTEST_HANG=fail harness-selftest-hang
check fail "0 passed, 1 failed" has '^0 passed, 1 failed$'
check fail "no retry" has '^infrastructure retries: 0$'
check fail "one boot only" test ! -d "$dir/boot-2"
done_case fail

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

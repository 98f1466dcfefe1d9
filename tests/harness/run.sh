#!/usr/bin/env bash
# Runs end-to-end tests inside the test host: a QEMU-TCG VM (emulated AMD SVM) whose own
# KVM runs our guests for real. Boots the test host once for the whole run.
#
# usage: tests/harness/run.sh [--all] [--list] [--keep] [--repeat N] [TEST...]
#   TEST     names of tests/e2e/<TEST>.sh (default: the ones in tests/e2e/default.list),
#            or paths to test scripts kept elsewhere (e.g. agent/tests/testhost/x.sh)
#   --all    every test in tests/e2e/, including those not expected to pass yet
#            (not the bench-* benchmarks: name those)
#   --list   list the tests with their timeouts and exit
#   --keep   keep the data and results disk images of the run
#   --repeat N  run each selected test N times in the same test-host boot (as TEST, TEST@2, ...)
#   --env K=V   set K=V in the tests' environment (e.g. --env BENCH_N=20 bench-boot)
#   --add SRC:DEST  copy a file or directory of the host to DEST in the test host
# Environment:
#   GUEST_KERNEL, GUEST_INITRD  use these instead of building (guest-kernel-config/...)
#   HYPER_VMM, HYPERCTL, CONTAINERD_SHIM_HYPER_V1
#                               use this binary instead of building it with cargo
#   TH_MEM (MiB, 2048), TH_SMP (1; >1 adds -accel tcg,thread=multi)
#   TH_APPEND                   extra test-host kernel command line
#   TIMEOUT_SCALE (1)           multiplies every test's timeout (a slower CI machine)
#   TH_BOOT_TIMEOUT (180)       seconds for the test host to come up
#   HARNESS_OUT                 where runs go (default target/harness); the run's
#                               artefacts are in $HARNESS_OUT/runs/<time>/, also ./latest
#                               (the newest 20 runs are kept)
# Output: per-test BEGIN/END lines, the tests' output, and a last line "N passed, M failed".
# Exit status: 0 if every selected test passed, 1 otherwise (and on any timeout).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../scripts/common.sh
source "$here/../../scripts/common.sh"
e2e=$HYPER_ROOT/tests/e2e

all=0 list=0 keep=0 repeat=1 tests=() envs=() adds=()
declare -A EXTFILE=()     # tests given by path: name -> file
while [ $# -gt 0 ]; do
  case "$1" in
    --all) all=1 ;; --list) list=1 ;; --keep) keep=1 ;;
    --repeat) repeat=$2; shift ;;
    --add) [[ "$2" == ?*:/?* ]] || die "--add wants SRC:/DEST"; adds+=(--add "$2"); shift ;;
    --env) [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*=[^\']*$ ]] || die "--env wants K=V (no single quotes)"; envs+=("$2"); shift ;;
    -h|--help) sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    */*) [ -f "$1" ] || die "no test script $1"
         t=$(basename "$1" .sh); EXTFILE[$t]=$(cd "$(dirname "$1")" && pwd)/$(basename "$1"); tests+=("$t") ;;
    *) tests+=("${1%.sh}") ;;
  esac
  shift
done

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }'; }
test_file() { echo "${EXTFILE[$1]:-$e2e/$1.sh}"; }
header() { sed -n "s/^# $2: *//p" "$(test_file "$1")" | head -1; }
all_tests() { for f in "$e2e"/*.sh; do [ "$(basename "$f")" = lib.sh ] || basename "$f" .sh; done; }
if [ $list = 1 ]; then
  for t in $(all_tests); do
    d=" "; grep -qx "$t" "$e2e/default.list" && d="*"
    printf '%s %-26s timeout %4ss  %s\n' "$d" "$t" "$(header "$t" timeout)" "$(sed -n '2s/^# //p' "$e2e/$t.sh")"
  done
  echo "(* = in the default suite)"; exit 0
fi
if [ ${#tests[@]} -eq 0 ]; then
  if [ $all = 1 ]; then mapfile -t tests < <(all_tests | grep -v '^bench-')
  else mapfile -t tests < <(grep -v '^#' "$e2e/default.list" | grep .); fi
fi
for t in "${tests[@]}"; do [ -f "$(test_file "$t")" ] && [ "$t" != lib ] || die "no test tests/e2e/$t.sh (see --list)"; done
# Each run of a test has an id: its name, then NAME@2, NAME@3 ... for repeats.
ids=()
declare -A SCRIPT=()
for ((i = 1; i <= repeat; i++)); do
  for t in "${tests[@]}"; do
    id=$t; [ $i -gt 1 ] && id=$t@$i
    case " ${ids[*]} " in *" $id "*) continue ;; esac
    ids+=("$id"); SCRIPT[$id]=$t
  done
done

scale=${TIMEOUT_SCALE:-1}
declare -A TIMEOUT=()
needs=()
for id in "${ids[@]}"; do
  t=${SCRIPT[$id]}
  to=$(header "$t" timeout); to=${to:-300}
  TIMEOUT[$id]=$(( to * scale ))
  for n in $(header "$t" needs); do needs+=("$n"); done
done

# ---- build (everything but our binaries is cached by its inputs)
t_build=$(date +%s.%N)
stamp=$(date +%Y%m%d-%H%M%S)-$$
out=${HARNESS_OUT:-$HYPER_ROOT/target/harness}
run=$out/runs/$stamp
mkdir -p "$run"; ln -sfn "runs/$stamp" "$out/latest"
# Keep the newest 20 runs; older ones go once they are an hour old (never a running one).
ls -1d "$out"/runs/*/ 2>/dev/null | head -n -20 | while read -r old; do
  if [ -n "$(find "$old" -maxdepth 0 -mmin +60)" ]; then rm -rf "$old"; fi
done
apt_need qemu-system-x86 gcc libc6-dev

testhost=$("$here/build-testhost.sh")
tsc_bin=$HYPER_CACHE/testhost/tsc-khz-$(hash_inputs "$here/tsc-khz.c")
[ -x "$tsc_bin" ] || { mkdir -p "$(dirname "$tsc_bin")"; gcc -O2 -o "$tsc_bin.tmp" "$here/tsc-khz.c" && mv "$tsc_bin.tmp" "$tsc_bin"; }
gkernel=${GUEST_KERNEL:-$(bash "$HYPER_ROOT/guest-kernel-config/build.sh")}
ginitrd=${GUEST_INITRD:-$(bash "$HYPER_ROOT/guest-kernel-config/image/build.sh")}
# Our binaries a test may need, and the cargo package each comes from. A prebuilt one can
# be given as an environment variable named like the binary (HYPER_VMM, HYPERCTL,
# CONTAINERD_SHIM_HYPER_V1).
declare -A CARGO_PKG=([hyper-vmm]=hyper-vmm [hyperctl]=hyper-shim [containerd-shim-hyper-v1]=hyper-shim)
bins=() with=()
for n in $(printf '%s\n' "${needs[@]}" | sort -u); do
  if [ -n "${CARGO_PKG[$n]:-}" ]; then
    var=$(echo "$n" | tr 'a-z-' 'A-Z_')
    if [ -n "${!var:-}" ]; then bins+=("$n=${!var}"); continue; fi
    log "building $n (cargo build --release -p ${CARGO_PKG[$n]} --bin $n)"
    if (cd "$HYPER_ROOT" && nice cargo build -q --release -p "${CARGO_PKG[$n]}" --bin "$n") > "$run/build-$n.log" 2>&1; then
      bins+=("$n=$HYPER_ROOT/target/release/$n")
    else
      tail -20 "$run/build-$n.log" >&2
      log "WARNING: $n did not build ($run/build-$n.log); tests that need it will fail"
    fi
  elif [ "$n" = distro-bzimage ]; then
    # A compressed distribution kernel for the bzImage boot path: the test host's own.
    adds+=(--add "$testhost/vmlinuz:/guest/distro-bzImage")
  elif grep -q "^@${n}[[:space:]]" "$here/payload.list"; then
    with+=(--with "$n")
  else
    die "a test needs '$n': neither one of our binaries (${!CARGO_PKG[*]}) nor a @$n group in payload.list"
  fi
done
plan=$run/plan
for kv in "${envs[@]}"; do printf "export %s='%s'\n" "${kv%%=*}" "${kv#*=}"; done > "$run/env"
for id in "${ids[@]}"; do echo "$id ${SCRIPT[$id]} ${TIMEOUT[$id]} $(header "${SCRIPT[$id]}" expect)"; done > "$plan"
binargs=() xtests=()
for b in "${bins[@]}"; do binargs+=(--bin "$b"); done
for t in "${!EXTFILE[@]}"; do xtests+=(--test "${EXTFILE[$t]}"); done
"$here/build-disk.sh" --out "$run/data.ext4" --plan "$plan" --env "$run/env" --guest-kernel "$gkernel" --guest-initrd "$ginitrd" \
  "${with[@]}" "${binargs[@]}" "${adds[@]}" "${xtests[@]}"
rm -f "$run/results.img"; truncate -s 256M "$run/results.img"
build_s=$(elapsed "$t_build")

# ---- boot the test host and follow its console
tsc=$("$tsc_bin")
smp=${TH_SMP:-1} accel=tcg
[ "$smp" -gt 1 ] && accel=tcg,thread=multi
boot_to=${TH_BOOT_TIMEOUT:-180}
global_to=$boot_to
for t in "${ids[@]}"; do global_to=$(( global_to + TIMEOUT[$t] + 60 )); done
global_to=$(( global_to + 120 ))
console=$run/testhost-console.log
: > "$console"
log "run dir: $run"
log "booting the test host ($(cat "$testhost/version"), tsc_early_khz=$tsc, ${TH_MEM:-2048} MiB, $smp vCPU); ${#ids[@]} test run(s), global timeout ${global_to}s"
t0=$(date +%s.%N)
qemu-system-x86_64 -M microvm -accel "$accel" -cpu max -smp "$smp" -m "${TH_MEM:-2048}" \
  -nodefaults -no-user-config -display none -monitor none -no-reboot \
  -serial "file:$console" \
  -kernel "$testhost/vmlinuz" -initrd "$testhost/initramfs.cpio.gz" \
  -drive "if=none,id=data,file=$run/data.ext4,format=raw,readonly=on" -device virtio-blk-device,drive=data \
  -drive "if=none,id=results,file=$run/results.img,format=raw" -device virtio-blk-device,drive=results \
  -append "console=ttyS0 panic=-1 quiet tsc_early_khz=$tsc tsc=reliable ${TH_APPEND:-}" \
  > "$run/qemu.log" 2>&1 < /dev/null &
qpid=$!
stop_qemu() {
  kill -TERM "$qpid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$qpid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$qpid" 2>/dev/null || true
}
trap 'stop_qemu' EXIT
trap 'log "interrupted"; exit 130' INT TERM

declare -A RESULT=() SECS=() WHY=()
current="" cur_t0="" ready="" done_seen="" host_fail=""
boot_s=""
exec {con}< <(tail -n +1 -F --pid="$qpid" "$console" 2>/dev/null)
while :; do
  if IFS= read -r -t 2 -u "$con" line; then
    line=${line//$'\r'/}
    case "$line" in
      "@@TH READY"*)
        ready=1; boot_s=$(elapsed "$t0")
        echo "== test host up in ${boot_s%??} s: ${line#@@TH READY }" ;;
      "@@TH BEGIN "*)
        set -- ${line#@@TH BEGIN }; current=$1; cur_t0=$(date +%s.%N)
        echo "== BEGIN $current (${2:-})" ;;
      "@@TH END "*)
        set -- ${line#@@TH END }; t=$1; RESULT[$t]=$2
        SECS[$t]=$(elapsed "$cur_t0"); SECS[$t]=${SECS[$t]%??}
        shift 4 || shift $#; WHY[$t]="$*"
        echo "== END   $t: ${RESULT[$t]} (${SECS[$t]} s)${WHY[$t]:+ - ${WHY[$t]}}"
        current="" ;;
      "@@TH DONE"*) done_seen=$(date +%s.%N); echo "== ${line#@@TH }" ;;
      "@@TH "*) echo "== ${line#@@TH }" ;;
      *) if [ -n "$current" ]; then echo "   | $line"; else echo "   : $line"; fi ;;
    esac
  else
    rc=$?
    [ $rc -le 128 ] && break                       # EOF: QEMU exited and the log is drained
  fi
  # Host-side limits, in case the test host itself stops responding.
  e=$(elapsed "$t0"); e=${e%.*}
  if [ -z "$ready" ] && [ "$e" -ge "$boot_to" ]; then host_fail="the test host did not come up within ${boot_to}s"
  elif [ -n "$current" ] && [ "$(elapsed "$cur_t0" | cut -d. -f1)" -ge $(( TIMEOUT[$current] + 60 )) ]; then
    host_fail="the test host stopped responding during $current (its own ${TIMEOUT[$current]}s watchdog did not fire)"
  elif [ -n "$done_seen" ] && [ "$(elapsed "$done_seen" | cut -d. -f1)" -ge 60 ]; then host_fail="the test host did not power off"
  elif [ "$e" -ge "$global_to" ]; then host_fail="global timeout (${global_to}s)"
  fi
  if [ -n "$host_fail" ]; then
    echo "== HARNESS: $host_fail; stopping the test host (pid $qpid)"
    stop_qemu; break
  fi
done
exec {con}<&-
wait "$qpid" 2>/dev/null && qrc=0 || qrc=$?
total_s=$(elapsed "$t0")
trap - EXIT

# ---- results: unpack the tar the test host wrote to its second disk
mkdir -p "$run/results"
if tar -C "$run/results" -xf "$run/results.img" 2>/dev/null && [ -n "$(ls -A "$run/results")" ]; then
  [ $keep = 1 ] || rm -f "$run/results.img" "$run/data.ext4"
else
  log "no results came back from the test host (results disk empty); kept $run/results.img"
fi

passed=0 failed=0
echo
echo "== summary (run dir: $run)"
for t in "${ids[@]}"; do
  r=${RESULT[$t]:-FAIL}
  [ -z "${RESULT[$t]:-}" ] && WHY[$t]=${host_fail:-"the test host never reported it (see $console)"}
  if [ "$r" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  printf '%-4s %-26s %6s s  %s\n' "$r" "$t" "${SECS[$t]:--}" "${WHY[$t]:-}"
  if [ "$r" != PASS ]; then
    for f in "$run/results/$t"/*.console "$run/results/$t"/*.log "$run/results/$t"/*/*.console; do
      [ -f "$f" ] && echo "       artefact: $f$([ -s "$f" ] || echo ' (empty)')"
    done
  fi
done
boot_txt=never; [ -n "$boot_s" ] && boot_txt="$(printf %.1f "$boot_s") s"
echo "   test host: build $(printf %.1f "$build_s") s, boot to READY $boot_txt, whole run $(printf %.1f "$total_s") s; outer qemu exit status $qrc"
echo "   test-host console: $console"
if [ $failed -gt 0 ] || [ -n "$host_fail" ]; then
  echo "----- last 25 lines of the test-host console ($console) -----"
  tail -n 25 "$console" | tr -d '\r'
  for t in "${ids[@]}"; do
    [ "${RESULT[$t]:-FAIL}" = PASS ] && continue
    for f in "$run/results/$t"/*.console "$run/results/$t"/*.vmm.log; do
      [ -s "$f" ] || continue
      echo "----- last 15 lines of $f -----"; tail -n 15 "$f" | tr -d '\r'
    done
  done
  [ -s "$run/qemu.log" ] && { echo "----- outer qemu stderr ($run/qemu.log) -----"; tail -n 10 "$run/qemu.log"; }
fi
echo "$passed passed, $failed failed"
[ $failed -eq 0 ] && [ -z "$host_fail" ]

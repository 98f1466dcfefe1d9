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
#   TH_SILENCE (60)             seconds without console output (the runner's heartbeat
#                               comes every 10 s) taken as a hung test host
#   TH_HANG_RETRIES (2)         reruns, each in a fresh boot, of a test the test host hung in
#   TH_TICK (periodic)          or dynamic: the test host's timer tick (README: hangs)
#   TH_QEMU, TH_CPU             the outer QEMU binary and its -cpu (default max)
#   HARNESS_OUT                 where runs go (default target/harness); the run's
#                               artefacts are in $HARNESS_OUT/runs/<time>/, also ./latest
#                               (the newest 20 runs are kept)
# Output: per-test BEGIN/END lines, the tests' output, and last lines
# "infrastructure retries: K" and "N passed, M failed". A test during which the test host
# hung runs again in a fresh boot; the results of the others stand; failures never rerun.
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
# built_bin NAME: the path of our binary NAME (prebuilt, or built now), or nothing.
built_bin() {
  local var
  var=$(echo "$1" | tr 'a-z-' 'A-Z_')
  if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
  log "building $1 (cargo build --release -p ${CARGO_PKG[$1]} --bin $1)"
  if (cd "$HYPER_ROOT" && nice cargo build -q --release -p "${CARGO_PKG[$1]}" --bin "$1") > "$run/build-$1.log" 2>&1; then
    echo "$HYPER_ROOT/target/release/$1"
  else
    tail -20 "$run/build-$1.log" >&2
    log "WARNING: $1 did not build ($run/build-$1.log); tests that need it will fail"
  fi
}
bins=() with=()
for n in $(printf '%s\n' "${needs[@]}" | sort -u); do
  if [ -n "${CARGO_PKG[$n]:-}" ]; then
    b=$(built_bin "$n"); [ -z "$b" ] || bins+=("$n=$b")
  elif [ "$n" = install ]; then
    # `make install` of what was built, staged as a package would be, lands in the test
    # host at its PREFIX, /opt/hyper (our binaries stay out of /usr/local/bin for it).
    log "make install DESTDIR=$run/install PREFIX=/opt/hyper SYSCONFDIR=/opt/hyper/etc"
    if HYPER_VMM=$(built_bin hyper-vmm) CONTAINERD_SHIM_HYPER_V1=$(built_bin containerd-shim-hyper-v1) \
        HYPERCTL=$(built_bin hyperctl) GUEST_KERNEL=$gkernel GUEST_INITRD=$ginitrd \
        DESTDIR=$run/install PREFIX=/opt/hyper SYSCONFDIR=/opt/hyper/etc \
        bash "$HYPER_ROOT/scripts/install.sh" install > "$run/install.log" 2>&1; then
      adds+=(--add "$run/install/opt/hyper:/opt/hyper")
    else
      tail -20 "$run/install.log" >&2
      log "WARNING: make install failed ($run/install.log); tests that need it will fail"
    fi
  elif [ "$n" = distro-bzimage ]; then
    # A compressed distribution kernel for the bzImage boot path: the test host's own.
    adds+=(--add "$testhost/vmlinuz:/guest/distro-bzImage")
  elif grep -q "^@${n}[[:space:]]" "$here/payload.list"; then
    with+=(--with "$n")
  else
    die "a test needs '$n': neither one of our binaries (${!CARGO_PKG[*]}), install, nor a @$n group in payload.list"
  fi
done
binargs=() xtests=()
for b in "${bins[@]}"; do binargs+=(--bin "$b"); done
for t in "${!EXTFILE[@]}"; do xtests+=(--test "${EXTFILE[$t]}"); done
build_s=$(elapsed "$t_build")

# ---- boot the test host and follow its console
tsc=$("$tsc_bin")
smp=${TH_SMP:-1} accel=tcg
[ "$smp" -gt 1 ] && accel=tcg,thread=multi
boot_to=${TH_BOOT_TIMEOUT:-180}
silence_to=${TH_SILENCE:-60}       # the runner's heartbeat comes every 10 s
hang_retries=${TH_HANG_RETRIES:-2}
log "run dir: $run"

declare -A RESULT=() SECS=() WHY=() HANGS=()
retry_notes=()
hang_diag=""

# hmp CMD: one command on the outer QEMU's human monitor; prints its answer.
hmp() {
  printf '%s\n' "$1" | timeout 10 socat -t 2 - "UNIX-CONNECT:$sock-monitor" 2>/dev/null \
    | tr -d '\r' | sed -e 's/\x1b\[[0-9;]*[A-Za-z]//g' -e '/^QEMU .* monitor/d' -e '/^(qemu)/d' | grep -v '^$' || true
}
# qemu_cpu_ms SECONDS: CPU milliseconds the outer QEMU used in that many seconds.
qemu_cpu_ms() {
  local a b
  a=$(awk '{ print $14 + $15 }' "/proc/$qpid/stat" 2>/dev/null || echo 0)
  sleep "$1"
  b=$(awk '{ print $14 + $15 }' "/proc/$qpid/stat" 2>/dev/null || echo 0)
  echo $(( (b - a) * 1000 / $(getconf CLK_TCK) ))
}
# diagnose_hang: what the silent test host was doing, before it is stopped: the outer
# QEMU's view of its vCPU and interrupt controllers, then an NMI and the magic SysRq keys
# over its serial line (l: CPU backtraces, q: timers and clock events, w/t: tasks). Any
# console output after that means an interrupt could still wake it: the hang was a lost
# wake-up, not a dead kernel. Writes $bdir/hang-diagnosis.txt and sets hang_diag.
diagnose_hang() {
  local f=$bdir/hang-diagnosis.txt before k
  before=$(wc -c < "$console")
  {
    echo "# $(date -u +%FT%TZ) test host silent for ${silence_to}s during ${current:-no test}"
    echo "## outer QEMU CPU time over 2 s: $(qemu_cpu_ms 2) ms (about 0: its vCPU is halted; about 2000: it spins)"
    for c in "info registers" "info lapic" "info pic" "info irq"; do echo "## $c"; hmp "$c"; done
  } > "$f" 2>&1
  local silent_after=$before
  hmp nmi > /dev/null; sleep 3
  if [ "$(wc -c < "$console")" -gt "$silent_after" ]; then echo "## after nmi: the console printed again" >> "$f"; fi
  silent_after=$(wc -c < "$console")
  for k in 9 l q w t; do                  # 9 first: console log level 9, so the dumps print
    hmp "chardev-send-break con" > /dev/null
    printf '%s' "$k" | timeout 5 socat -u - "UNIX-CONNECT:$sock-serial" 2>/dev/null
    sleep 3
  done
  if [ "$(wc -c < "$console")" -gt "$silent_after" ]; then
    echo "## after sysrq over the serial line: the console printed again" >> "$f"
  fi
  { echo "## registers after the NMI and sysrq"; hmp "info registers"; } >> "$f" 2>&1
  local woke=no
  if [ "$(wc -c < "$console")" -gt "$before" ]; then woke=yes; fi
  hang_diag="monitor dump in $f; woke up on NMI/SysRq: $woke"
  echo "== HARNESS: $hang_diag"
  grep -E '^(RIP|RFL|EFER|CR0)=| HLT=|^## after' "$f" | head -8 | sed 's/^/== HARNESS:   /' || true
}

stop_qemu() {
  kill -TERM "$qpid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$qpid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$qpid" 2>/dev/null || true
}

# take_disk_verdicts FILE: the verdicts the runner also wrote to the results disk, for the
# runs whose END marker the console lost (garbled by a kernel message, say). The console's
# word stands where it has one; the disk only fills the gaps, so a lost line is not a hang.
take_disk_verdicts() {
  local name verdict rc secs reason
  [ -f "$1" ] || return 0
  while IFS=' ' read -r name verdict rc secs reason; do
    [ -n "$name" ] && [ -z "${RESULT[$name]:-}" ] || continue
    case " ${bids[*]} " in *" $name "*) ;; *) continue ;; esac
    RESULT[$name]=$verdict SECS[$name]=$secs WHY[$name]=$reason
    log "the console lost the END of $name; its verdict from the results disk: $verdict (rc $rc)"
  done < "$1"
}

# boot_testhost ID...: one boot of the test host running these test runs in order. Records
# RESULT/SECS/WHY for each run it reports; sets host_fail (why the host side stopped it, if
# it did) and hung (the run during which it went silent, or "boot" if it never came up).
boot_testhost() {
  local bids=("$@") t e line
  boots=$((boots + 1))
  bdir=$run; [ "$boots" -gt 1 ] && bdir=$run/boot-$boots
  mkdir -p "$bdir"
  for id in "${bids[@]}"; do echo "$id ${SCRIPT[$id]} ${TIMEOUT[$id]} $(header "${SCRIPT[$id]}" expect)"; done > "$bdir/plan"
  { for kv in "${envs[@]}"; do printf "export %s='%s'\n" "${kv%%=*}" "${kv#*=}"; done
    echo "export TH_BOOT=$boots"; } > "$bdir/env"
  "$here/build-disk.sh" --out "$bdir/data.ext4" --plan "$bdir/plan" --env "$bdir/env" --guest-kernel "$gkernel" \
    --guest-initrd "$ginitrd" "${with[@]}" "${binargs[@]}" "${adds[@]}" "${xtests[@]}"
  rm -f "$bdir/results.img"; truncate -s 256M "$bdir/results.img"
  local global_to=$boot_to
  for t in "${bids[@]}"; do global_to=$(( global_to + TIMEOUT[$t] + 60 )); done
  global_to=$(( global_to + 120 ))
  console=$bdir/testhost-console.log
  : > "$console"
  sock=$sockdir/boot$boots
  log "booting the test host (boot $boots: $(cat "$testhost/version"), $(basename "$qemu") -cpu $cpu, ${TH_TICK:-periodic} tick, tsc_early_khz=$tsc, ${TH_MEM:-2048} MiB, $smp vCPU); ${#bids[@]} test run(s), global timeout ${global_to}s"
  t0=$(date +%s.%N)
  # The serial line and the monitor are unix sockets nobody opens until a hang: the
  # console is logged to a file either way; diagnose_hang writes to both.
  "$qemu" -M microvm -accel "$accel" -cpu "$cpu" -smp "$smp" -m "${TH_MEM:-2048}" \
    -nodefaults -no-user-config -display none -no-reboot \
    -chardev "socket,id=con,path=$sock-serial,server=on,wait=off,logfile=$console" -serial chardev:con \
    -monitor "unix:$sock-monitor,server=on,wait=off" \
    -kernel "$testhost/vmlinuz" -initrd "$testhost/initramfs.cpio.gz" \
    -drive "if=none,id=data,file=$bdir/data.ext4,format=raw,readonly=on" -device virtio-blk-device,drive=data \
    -drive "if=none,id=results,file=$bdir/results.img,format=raw" -device virtio-blk-device,drive=results \
    -append "console=ttyS0 panic=-1 quiet tsc_early_khz=$tsc tsc=reliable $tick ${TH_APPEND:-}" \
    > "$bdir/qemu.log" 2>&1 < /dev/null &
  qpid=$!
  trap 'stop_qemu; rm -rf "$sockdir"' EXIT

  current="" cur_t0="" ready="" done_seen="" host_fail="" hung="" boot_s="" hang_diag=""
  local last_out; last_out=$(date +%s)
  exec {con}< <(tail -n +1 -F --pid="$qpid" "$console" 2>/dev/null)
  while :; do
    if IFS= read -r -t 2 -u "$con" line; then
      line=${line//$'\r'/}
      last_out=$(date +%s)
      # A kernel message printed while the runner writes a marker can land in front of it
      # on the same console line: a marker counts wherever the line holds it.
      case "$line" in ?*"@@TH "*) line="@@TH ${line#*@@TH }" ;; esac
      case "$line" in
        "@@TH HB"*) ;;                               # heartbeat: only proves it is alive
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
      [ $? -le 128 ] && break                        # EOF: QEMU exited and the log is drained
    fi
    # Host-side limits, in case the test host itself stops responding.
    e=$(elapsed "$t0"); e=${e%.*}
    if [ -z "$ready" ] && [ "$e" -ge "$boot_to" ]; then
      host_fail="the test host did not come up within ${boot_to}s"; hung=boot
    elif [ -n "$ready" ] && [ -z "$done_seen" ] && [ $(( $(date +%s) - last_out )) -ge "$silence_to" ]; then
      host_fail="the test host went silent for ${silence_to}s (no heartbeat) during ${current:-the runner, between tests}"
      hung=${current:-between}
      diagnose_hang
    elif [ -n "$current" ] && [ "$(elapsed "$cur_t0" | cut -d. -f1)" -ge $(( TIMEOUT[$current] + 60 )) ]; then
      host_fail="the test host stopped responding during $current (its own ${TIMEOUT[$current]}s watchdog did not fire)"
      hung=$current
    elif [ -n "$done_seen" ] && [ "$(elapsed "$done_seen" | cut -d. -f1)" -ge 60 ]; then
      host_fail="the test host did not power off"
    elif [ "$e" -ge "$global_to" ]; then host_fail="global timeout (${global_to}s)"
    fi
    if [ -n "$host_fail" ]; then
      echo "== HARNESS: $host_fail; stopping the test host (pid $qpid)"
      stop_qemu; break
    fi
  done
  exec {con}<&-
  wait "$qpid" 2>/dev/null && qrc=0 || qrc=$?
  trap 'rm -rf "$sockdir"' EXIT
  total_s=$(awk -v a="$total_s" -v b="$(elapsed "$t0")" 'BEGIN { printf "%.3f", a + b }')
  [ -z "$boot_s" ] || boot_times+=("$(printf %.1f "$boot_s") s")

  # Results: unpack the tar the test host wrote to its second disk (a hung one wrote none).
  mkdir -p "$run/results"
  local unpack=$bdir/results.unpacked
  mkdir -p "$unpack"
  if tar -C "$unpack" -xf "$bdir/results.img" 2>/dev/null && [ -n "$(ls -A "$unpack")" ]; then
    [ $keep = 1 ] || rm -f "$bdir/results.img" "$bdir/data.ext4"
    for f in "$unpack"/*; do
      case "$(basename "$f")" in
        testhost-*) mv "$f" "$bdir/results-$(basename "$f")" ;;
        *) rm -rf "$run/results/$(basename "$f")"; mv "$f" "$run/results/" ;;
      esac
    done
    rmdir "$unpack" 2>/dev/null || true
    take_disk_verdicts "$bdir/results-testhost-verdicts"
  else
    rmdir "$unpack" 2>/dev/null || true
    log "no results came back from test-host boot $boots (results disk empty); kept $bdir/results.img"
  fi
}

qemu=${TH_QEMU:-qemu-system-x86_64}
# A periodic tick: QEMU 7.2's TCG can lose the vCPU's "interrupt pending" bit while the
# test host runs a KVM guest (README: "Test-host hangs"); the LAPIC timer interrupt then waits in
# the IRR forever and the test host hangs. A periodic LAPIC timer raises it again at the
# next tick. TH_TICK=dynamic gives the kernel's default (tickless, one-shot timer).
case "${TH_TICK:-periodic}" in
  periodic) tick="nohz=off highres=off" ;;
  dynamic) tick="" ;;
  *) die "TH_TICK is periodic or dynamic, not '$TH_TICK'" ;;
esac
cpu=${TH_CPU:-max}
apt_need socat
# The sockets live in a short directory of their own (a unix socket path has 108 bytes).
sockdir=$(mktemp -d /tmp/hyper-th.XXXXXX)
trap 'rm -rf "$sockdir"' EXIT
trap 'log "interrupted"; exit 130' INT TERM
boots=0 total_s=0 boot_times=() infra=0
todo=("${ids[@]}")
final_fail=""
while [ ${#todo[@]} -gt 0 ]; do
  boot_testhost "${todo[@]}"
  # What is left: the runs this boot never reported. A hang costs only the run it hit:
  # that run goes again in a fresh boot (at most $hang_retries times), every other result
  # stands, and a run that failed is never retried.
  rest=()
  for id in "${todo[@]}"; do [ -n "${RESULT[$id]:-}" ] || rest+=("$id"); done
  if [ ${#rest[@]} -eq 0 ]; then
    [ -z "$host_fail" ] || log "WARNING: $host_fail, after every test had reported (their results stand)"
    break
  fi
  if [ -z "$hung" ]; then final_fail=$host_fail; break; fi
  if [ "$hung" = boot ] || [ "$hung" = between ]; then key="test-host boot"; else key=$hung; fi
  HANGS[$key]=$(( ${HANGS[$key]:-0} + 1 ))
  if [ "${HANGS[$key]}" -gt "$hang_retries" ]; then
    note="$key: the test host hung in ${HANGS[$key]} boots; not retried again"
    if [ "$key" = "test-host boot" ]; then final_fail=$note; break; fi
    RESULT[$key]=FAIL; WHY[$key]="the test host hung during it in ${HANGS[$key]} boots (infrastructure, see the hang diagnoses)"
    retry_notes+=("$note")
    log "WARNING: $note"
    todo=("${rest[@]:1}")
    continue
  fi
  infra=$((infra + 1))
  note="boot $boots: the test host hung during $key${hang_diag:+ ($hang_diag)}; rerunning it in a fresh boot (infrastructure retry ${HANGS[$key]} of $hang_retries)"
  retry_notes+=("$note")
  log "WARNING: $note"
  todo=("${rest[@]}")
done
host_fail=$final_fail

passed=0 failed=0
echo
echo "== summary (run dir: $run)"
for t in "${ids[@]}"; do
  r=${RESULT[$t]:-FAIL}
  [ -z "${RESULT[$t]:-}" ] && WHY[$t]=${host_fail:-"the test host never reported it (see $console)"}
  if [ "$r" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  hung_txt=""; [ -n "${HANGS[$t]:-}" ] && hung_txt=" [after ${HANGS[$t]} test-host hang(s)]"
  printf '%-4s %-26s %6s s  %s\n' "$r" "$t" "${SECS[$t]:--}" "${WHY[$t]:-}$hung_txt"
  if [ "$r" != PASS ]; then
    for f in "$run/results/$t"/*.console "$run/results/$t"/*.log "$run/results/$t"/*/*.console; do
      [ -f "$f" ] && echo "       artefact: $f$([ -s "$f" ] || echo ' (empty)')"
    done
  fi
done
echo "   test host: build $(printf %.1f "$build_s") s, $boots boot(s) (to READY: ${boot_times[*]:-never}), whole run $(printf %.1f "$total_s") s; outer qemu exit status $qrc"
echo "   test-host console: $console"
if [ ${#retry_notes[@]} -gt 0 ]; then
  echo "   infrastructure retries: $infra (test-host hangs; each reran only the run it hit)"
  for n in "${retry_notes[@]}"; do echo "     - $n"; done
fi
if [ $failed -gt 0 ] || [ -n "$host_fail" ]; then
  echo "----- last 25 lines of the test-host console ($console) -----"
  tail -n 25 "$console" | tr -d '\r' | grep -v '^@@TH HB'
  for t in "${ids[@]}"; do
    [ "${RESULT[$t]:-FAIL}" = PASS ] && continue
    for f in "$run/results/$t"/*.console "$run/results/$t"/*.vmm.log; do
      [ -s "$f" ] || continue
      echo "----- last 15 lines of $f -----"; tail -n 15 "$f" | tr -d '\r'
    done
  done
  [ -s "$bdir/qemu.log" ] && { echo "----- outer qemu stderr ($bdir/qemu.log) -----"; tail -n 10 "$bdir/qemu.log"; }
fi
echo "infrastructure retries: $infra"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ] && [ -z "$host_fail" ]

#!/bin/bash
# Benchmark: `ctr run --rm busybox true` through io.containerd.hyper.v1 against
# io.containerd.runc.v2, alternated in one test-host boot: wall time from command to exit
# (medians and their ratio), and the shim's and the VMM's peak RSS for a running pod.
# Env: BENCH_N (runs per runtime, default 10), BENCH_SHARED_FS (the shim's shared_fs:
# virtio-fs, the default, or none), BENCH_OPEN=1 (also hyper with the VMM unconfined,
# jail = false and seccomp = false: what the jail and the filters cost), BENCH_TEMPLATE=1
# (also hyper with `[factory] template = true`: pods restored from a VM template, built
# by one warm-up run first). Not in the default suite.
# timeout: 1800
# needs: containerd hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1 runc
n=${BENCH_N:-10}
HYPER_DEBUG_CONSOLE=false hyper_config
if [ -n "${BENCH_SHARED_FS:-}" ]; then
  awk -v f="$BENCH_SHARED_FS" '{ print } /^\[hypervisor\]$/ { print "shared_fs = \"" f "\"" }' $CTD-hyper.toml > $CTD-hyper.toml.new
  mv $CTD-hyper.toml.new $CTD-hyper.toml
fi
log "shim config: $(tr '\n' ' ' < $CTD-hyper.toml)"
runtimes=(hyper runc)
if [ "${BENCH_OPEN:-}" = 1 ]; then
  awk '{ print } /^\[hypervisor\]$/ { print "jail = false"; print "seccomp = false" }' $CTD-hyper.toml > $CTD-hyper-open.toml
  runtimes=(hyper hyper-open runc)
fi
if [ "${BENCH_TEMPLATE:-}" = 1 ]; then
  sed 's/^template = .*/template = true/' $CTD-hyper.toml > $CTD-hyper-template.toml
  runtimes+=(hyper-template)
fi
stop_rss_pod() {
  ctr tasks kill -s SIGKILL rss > /dev/null 2>&1 || true
  local t0; t0=$(now_ms)
  while ctr tasks ls 2>/dev/null | grep -q '^rss .*RUNNING' && (( $(now_ms) - t0 < 60000 )); do th_sleep 0.2; done
  ctr tasks rm -f rss > /dev/null 2>&1 || true
  ctr containers rm rss > /dev/null 2>&1 || true
}
trap 'stop_rss_pod; _th_cleanup' EXIT
ctd_start
ctd_import_busybox
declare -A MS=()
one() { # one RUNTIME ROUND
  local rt=$1 id=b-$1-$2 t0 rc=0 extra=()
  [ "$rt" = hyper ] && extra=(--runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml)
  [ "$rt" = hyper-open ] && extra=(--runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper-open.toml)
  [ "$rt" = hyper-template ] && extra=(--runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper-template.toml)
  [ "$rt" = runc ] && extra=(--runtime io.containerd.runc.v2)
  t0=$(now_ms)
  ctr run --rm "${extra[@]}" "$BUSYBOX_REF" "$id" true > /dev/null 2>&1 || rc=$?
  [ $rc -eq 0 ] || fail "ctr run ($rt) of true failed with $rc"
  MS[$rt]+="$(( $(now_ms) - t0 )) "
  echo "round $2 $rt: $(( $(now_ms) - t0 )) ms"
}
# The template's build is no pod's start: one run before the rounds makes it.
if [ -n "${BENCH_TEMPLATE:-}" ]; then
  one hyper-template 0 > /dev/null
  MS[hyper-template]=""
fi
# Alternated, each round in a rotated order, so drift hits every runtime alike.
for ((i = 1; i <= n; i++)); do
  k=${#runtimes[@]}
  for ((j = 0; j < k; j++)); do one "${runtimes[(i + j) % k]}" "$i"; done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)) }'; }
mh=$(median <<<"${MS[hyper]}"); mr=$(median <<<"${MS[runc]}")
log "RESULT ctr run --rm busybox true, median of $n: hyper ${mh} ms, runc ${mr} ms, ratio hyper/runc $(awk -v a="$mh" -v b="$mr" 'BEGIN { printf "%.2f", a / b }')"

# Where hyper's time goes: the shim's start-up trace of every hyper pod ("startup trace
# pod=b-hyper-N steps=shim_spawned=0 shim_serving=12 ...", ms since containerd ran the
# shim). Per step, the median of when it happened and of how long it took after the step
# before it in the same pod.
grep -o 'startup trace pod=b-hyper-[0-9]* steps=[a-z_=0-9 ]*' "$TH_ART/containerd.log" \
  | sed 's/.* steps=//' > "$TH_ART/startup-traces.txt" || true
traced=$(wc -l < "$TH_ART/startup-traces.txt")
[ "$traced" -eq "$n" ] || fail "$traced start-up traces in containerd's log for $n hyper pods"
awk '
  { prev = 0
    for (i = 1; i <= NF; i++) {
      split($i, kv, "="); k = kv[1]; v = kv[2] + 0
      if (!(k in order)) { order[k] = ++steps; name[steps] = k }
      print k, v, v - prev; prev = v
    } }
  END { for (i = 1; i <= steps; i++) print name[i] > "/dev/stderr" }
' "$TH_ART/startup-traces.txt" 2> "$TH_ART/startup-steps.txt" > "$TH_ART/startup-samples.txt"
log "RESULT hyper start-up trace, medians of $n pods (ms; runc's whole ctr run: ${mr} ms):"
printf '  %-18s %8s %8s\n' step at took
while read -r step; do
  at=$(awk -v s="$step" '$1 == s { print $2 }' "$TH_ART/startup-samples.txt" | median)
  took=$(awk -v s="$step" '$1 == s { print $3 }' "$TH_ART/startup-samples.txt" | median)
  printf '  %-18s %8s %8s\n' "$step" "$at" "$took"
done < "$TH_ART/startup-steps.txt"
# The shim's "agent ready" line: VMM spawn to the agent answering, per pod.
boot_ms() { grep -o "agent ready pod=b-$1-[0-9]* boot_ms=[0-9]*" "$TH_ART/containerd.log" | sed 's/.*boot_ms=//' | tr '\n' ' '; }
if [ -n "${MS[hyper-template]:-}" ]; then
  mt=$(median <<<"${MS[hyper-template]}")
  log "RESULT from a VM template: ${mt} ms; template/runc $(awk -v a="$mt" -v b="$mr" 'BEGIN { printf "%.2f", a / b }'), cold/template $(awk -v a="$mh" -v b="$mt" 'BEGIN { printf "%.2f", a / b }')"
  bh=$(boot_ms hyper | median); bt=$(boot_ms hyper-template | median)
  log "RESULT VMM spawn to agent ready, median: cold ${bh:-?} ms, restored ${bt:-?} ms"
  # The VMM's restore alone: its spawn to the VM restored (paused, devices added), as
  # its start-up trace has it.
  rt=$(grep -o 'startup trace pod=b-hyper-template-[0-9]* steps=[a-z_=0-9 ]*' "$TH_ART/containerd.log" \
    | awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); t[kv[1]] = kv[2] }
             if ("vm_restored" in t) print t["vm_restored"] - t["vmm_spawned"]; delete t }' | median)
  log "RESULT VMM restore alone (spawn to VM restored), median: ${rt:-?} ms"
fi
if [ -n "${MS[hyper-open]:-}" ]; then
  mo=$(median <<<"${MS[hyper-open]}")
  log "RESULT unconfined VMM (jail = false, seccomp = false): ${mo} ms; confined/unconfined $(awk -v a="$mh" -v b="$mo" 'BEGIN { printf "%.3f", a / b }')"
  bh=$(boot_ms hyper | median); bo=$(boot_ms hyper-open | median)
  log "RESULT VMM spawn to agent ready, median: confined ${bh:-?} ms, unconfined ${bo:-?} ms; ratio $(awk -v a="$bh" -v b="$bo" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "?" }')"
fi

# Memory of one running pod: the shim's and the VMM's peak RSS (VmHWM).
ctr run -d --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml "$BUSYBOX_REF" rss sleep 100000 > /dev/null \
  || fail "ctr run -d failed"
t0=$(now_ms)
until [ "$(ctr tasks ls | awk '$1 == "rss" { print $3 }')" = RUNNING ]; do
  (( $(now_ms) - t0 < 120000 )) || fail "pod for the RSS measurement did not start"
  th_sleep 0.2
done
hwm() { # hwm REGEX: the largest VmHWM (kB) of the processes whose command line matches
  # (a jailed hyper-vmm is two: the small supervisor outside and the VMM inside).
  local p kb max=0
  for p in /proc/[0-9]*; do
    if { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -qE "$1"; then
      kb=$(awk '/^VmHWM:/ { print $2 }' "$p/status" 2>/dev/null || echo 0)
      (( ${kb:-0} > max )) && max=$kb
    fi
  done
  echo "$max"
}
shim_kb=$(hwm '^(/usr/local/bin/)?containerd-shim-hyper-v1 .*-id rss')
vmm_kb=$(hwm '^(/usr/local/bin/)?hyper-vmm .*/tmp/hyper/rss/')
log "RESULT running pod: shim peak RSS ${shim_kb:-?} kB, hyper-vmm peak RSS ${vmm_kb:-?} kB (guest RAM 256 MiB, touched pages count)"
stop_rss_pod

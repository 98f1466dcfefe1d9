#!/bin/bash
# What one idle hyper pod costs the host beyond its containers, for the RuntimeClass's
# overhead.podFixed: BENCH_N (5) CRI pods, each with one sleeping busybox container, are
# started one after another; after BENCH_SETTLE (20) s the shim's and the VMM's RSS
# (the jailed VMM's larger process, guest pages it touched included) and their CPU use
# over BENCH_WINDOW (30) s are read per pod, and their PSS (proportional set size: a page
# shared by k processes counts 1/k in each). BENCH_TEMPLATE=1: the pods restore from one
# VM template (`[factory] template = true`), whose clean guest pages they share. Prints
# the medians. Under TCG the CPU figure is inflated: read it as an upper bound.
# timeout: 1800
# needs: containerd cni cri hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd crictl hyper-vmm containerd-shim-hyper-v1
N=${BENCH_N:-5} SETTLE=${BENCH_SETTLE:-20} WINDOW=${BENCH_WINDOW:-30}
template=false
[ "${BENCH_TEMPLATE:-}" = 1 ] && template=true
HYPER_TEMPLATE=$template HYPER_DEBUG_CONSOLE=false hyper_config
W=/tmp/bench-pod
trap 'cri_remove_pods; _th_cleanup; rm -rf "$W"' EXIT
cri_start
mkdir -p $W
cat > $W/ctr.json <<EOT
{"metadata": {"name": "idle"}, "image": {"image": "$BUSYBOX_REF"}, "command": ["sleep", "100000"]}
EOT
for ((i = 0; i < N; i++)); do
  printf '{"metadata": {"name": "idle%d", "namespace": "bench", "uid": "bench-%d"}, "log_directory": "%s"}\n' \
    "$i" "$i" "$W" > "$W/pod$i.json"
  pod=$(crictl runp --runtime hyper "$W/pod$i.json") || fail "runp $i failed"
  c=$(crictl create "$pod" $W/ctr.json "$W/pod$i.json") || fail "create $i failed"
  crictl start "$c" > /dev/null || fail "start $i failed"
done
log "$N pods running; settling for $SETTLE s"
sleep "$SETTLE"
# The processes of pod P: its shim (by the pod id in its command line) and its VMM's two.
pod_pids() {
  pids_matching "containerd-shim-hyper-v1 .*-id $1"
  pids_matching "^(/usr/local/bin/)?hyper-vmm .*/tmp/hyper/$1/"
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
pss_kb() { awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Each pod's processes, found once (a /proc scan per pod takes seconds under TCG), so the
# CPU window is the same for every pod.
pods=$(crictl pods -q)
declare -A procs t0
for p in $pods; do procs[$p]=$(pod_pids "$p" | tr '\n' ' '); done
for p in $pods; do for pid in ${procs[$p]}; do t0[$pid]=$(cpu_ticks "$pid"); done; done
start=$(now_ms)
sleep "$WINDOW"
declare -A t1
for p in $pods; do for pid in ${procs[$p]}; do t1[$pid]=$(cpu_ticks "$pid"); done; done
window_ms=$(( $(now_ms) - start ))
hz=100  # USER_HZ: the unit of /proc/PID/stat times on Linux (the test host has no getconf)
mem=() pss=() cpu=()
for p in $pods; do
  shim_kb=0 vmm_kb=0 shim_pss=0 vmm_pss=0 ticks=0
  for pid in ${procs[$p]}; do
    kb=$(rss_kb "$pid") pkb=$(pss_kb "$pid")
    if grep -q hyper-vmm "/proc/$pid/comm" 2>/dev/null; then
      (( kb > vmm_kb )) && vmm_kb=$kb
      (( pkb > vmm_pss )) && vmm_pss=$pkb
    else
      shim_kb=$kb shim_pss=$pkb
    fi
    ticks=$(( ticks + ${t1[$pid]} - ${t0[$pid]} ))
  done
  mem+=($(( shim_kb + vmm_kb )))
  pss+=($(( shim_pss + vmm_pss )))
  cpu+=($(( ticks * 1000 * 1000 / hz / window_ms )))
  log "pod ${p:0:12}: shim $shim_kb kB (PSS $shim_pss), VMM $vmm_kb kB (PSS $vmm_pss), CPU ${cpu[-1]} millicores"
done
restored=$(grep -c 'agent ready.*restored=true' "$TH_ART/containerd.log" || true)
[ "$template" = false ] || [ "$restored" -eq "$N" ] || fail "$restored of $N pods were restored from the template"
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
log "RESULT pod overhead, $N idle pods (template=$template): median shim+VMM RSS $(median "${mem[@]}") kB, PSS $(median "${pss[@]}") kB, median CPU $(median "${cpu[@]}") millicores (idle, over $window_ms ms)"

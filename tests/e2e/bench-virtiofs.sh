#!/bin/bash
# Benchmark, not a check: a virtio-fs volume from inside a hyper container against the
# same commands on the test host's own directory (both on the test host's tmpfs), and on a
# tmpfs inside the guest (what the nested guest costs without virtio-fs), rounds alternated: sequential write (dd, fsync) and read of BENCH_MIB MiB, untar of a
# tree of BENCH_FILES files (default 2,000: under TCG each file costs the guest ~80 ms;
# bigger trees take proportionally longer), and a stat of every file of it (ls -lR). Prints
# each median and the guest/host ratio, and for each virtio-fs workload where its time went
# (the VMM's counters before and after it: FUSE requests by opcode with their sizes and the
# device's time on them, kicks, interrupts, MMIO exits).
# Rerun: tests/harness/run.sh --env BENCH_N=3 bench-virtiofs
# timeout: 3600
# needs: containerd hyper-vmm containerd-shim-hyper-v1 hyperctl
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1 hyperctl tar
N=${BENCH_N:-3}
MIB=${BENCH_MIB:-64}
FILES=${BENCH_FILES:-2000}
CACHE=${BENCH_FS_CACHE:-auto}
hyper_config
awk -v c="$CACHE" '{ print } /^\[hypervisor\]$/ { print "virtio_fs_cache = \"" c "\"" }' $CTD-hyper.toml > $CTD-hyper.toml.new
mv $CTD-hyper.toml.new $CTD-hyper.toml
VOL=/tmp/bench-vol
trap 'ctr_remove bfs; _th_cleanup; rm -rf "$VOL" /tmp/bench-host' EXIT
ctd_start
ctd_import_busybox
gexec() { tctr 1200 tasks exec --exec-id b bfs sh -c "$1"; }

# The tree: directories of 100 files of 100 bytes.
mkdir -p $VOL /tmp/bench-host/src
(cd /tmp/bench-host/src && for d in $(seq 0 $((FILES / 100 - 1))); do
  mkdir "d$d"
  for f in $(seq 0 99); do printf '%0100d' "$f" > "d$d/f$f"; done
done)
tar -cf $VOL/tree.tar -C /tmp/bench-host/src .
rm -rf /tmp/bench-host/src
log "tree.tar: $(tar -tf $VOL/tree.tar | grep -c '/f') files"

tctr 300 run -d --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml \
  --annotation io.hyper.memory_mib=768 --mount "type=tmpfs,src=tmpfs,dst=/gtmp,options=size=536870912" \
  --mount "type=bind,src=$VOL,dst=/data,options=rbind:rw" "$BUSYBOX_REF" bfs sleep 100000 \
  > /dev/null || fail "ctr run -d failed"
wait_status bfs RUNNING 120

# ms CMD: runs CMD with sh, prints its wall time in ms (same clock source in guest and host).
MS='ms() { a=$(cut -d" " -f1 /proc/uptime); sh -c "$1" > /dev/shm/ms.err 2>&1 || { echo FAILED; tail -3 /dev/shm/ms.err >&2; }; b=$(cut -d" " -f1 /proc/uptime); echo "$a $b" | awk "{ printf \"%d\n\", (\$2 - \$1) * 1000 }"; }'
# round DIR RUNNER: the four workloads in DIR; prints "write read untar stat" in ms.
round_cmds() {
  local d=$1 i=$2
  printf '%s\n' "$MS" \
    "w=\$(ms 'dd if=/dev/zero of=$d/w$i bs=1M count=$MIB conv=fsync')" \
    "r=\$(ms 'cat $d/r$i > /dev/null')" \
    "mkdir -p $d/x$i" \
    "u=\$(ms 'tar -xf $d/tree.tar -C $d/x$i')" \
    "s=\$(ms 'ls -lR $d/x$i')" \
    "echo \$w \$r \$u \$s"
}
vmm_metrics() { hyperctl --config $CTD-hyper.toml vmm --sandbox bfs --prometheus metrics; }
# breakdown WORKLOAD MS BEFORE AFTER: what the VMM counted during one virtio-fs workload.
breakdown() {
  { printf '%s\n' "$3" | sed 's/^/0 /'; printf '%s\n' "$4" | sed 's/^/1 /'; } | awk -v w="$1" -v ms="$2" '
    $2 ~ /^#/ { next }
    { v[$2] += ($1 ? $3 : -$3) }
    function dev(f) { return v["hyper_vmm_device_" f "_total{device=\"fs0\"}"] }
    END {
      req = dev("requests"); s = ms / 1000
      exits = v["hyper_vmm_exits_total{reason=\"mmio_read\"}"] + v["hyper_vmm_exits_total{reason=\"mmio_write\"}"]
      line = sprintf("BREAKDOWN %s: %d ms, %d FUSE requests (%.0f/s), %.1f KiB in and %.1f KiB out per request, %d kicks, %d interrupts, %d MMIO exits to the VMM;", \
        w, ms, req, req / (s ? s : 1), dev("tx_bytes") / (req ? req : 1) / 1024, dev("rx_bytes") / (req ? req : 1) / 1024, dev("notifications"), dev("interrupts"), exits)
      busy = 0
      for (k in v) if (k ~ /^hyper_vmm_device_op_requests_total\{device="fs0"/ && v[k] > 0) {
        op = k; sub(/.*op="/, "", op); sub(/".*/, "", op)
        b = v["hyper_vmm_device_op_busy_seconds_total{device=\"fs0\",op=\"" op "\"}"]
        n = v["hyper_vmm_device_op_in_bytes_total{device=\"fs0\",op=\"" op "\"}"]
        busy += b
        ops = ops sprintf(" %s %d x %.1f KiB %.2f ms;", op, v[k], n / v[k] / 1024, b * 1000 / v[k])
      }
      printf "%s device busy %.1f%% of the time;%s\n", line, busy * 100000 / (ms ? ms : 1), ops
    }'
}
# guest_step NAME CMD: runs CMD in the container, timed in the guest; prints its ms and
# logs its breakdown.
guest_step() {
  local before after t
  before=$(vmm_metrics) || { echo "hyperctl vmm metrics failed: $before" >&2; return 1; }
  t=$(gexec "$MS; ms '$2'") || { echo "guest $1 failed: $t" >&2; return 1; }
  after=$(vmm_metrics) || { echo "hyperctl vmm metrics failed: $after" >&2; return 1; }
  [ "$t" = FAILED ] || log "$(breakdown "$1" "$t" "$before" "$after")" >&2
  echo "$t"
}
# guest_round I: the four workloads on the virtio-fs volume, one exec each.
guest_round() {
  local i=$1 w r u s
  w=$(guest_step write "dd if=/dev/zero of=/data/w$i bs=1M count=$MIB conv=fsync") || return 1
  r=$(guest_step read "cat /data/r$i > /dev/null") || return 1
  gexec "mkdir -p /data/x$i" > /dev/null || return 1
  u=$(guest_step untar "tar -xf /data/tree.tar -C /data/x$i") || return 1
  s=$(guest_step ls-lR "ls -lR /data/x$i") || return 1
  echo "$w $r $u $s"
}
declare -a GW GR GU GS HW HR HU HS LW LR LU LS
for i in $(seq 1 "$N"); do
  # A fresh file to read on each side, written by the host so no guest cache holds it.
  head -c $((MIB << 20)) /dev/zero > $VOL/r$i
  mkdir -p /tmp/bench-host && cp $VOL/tree.tar /tmp/bench-host/ && head -c $((MIB << 20)) /dev/zero > /tmp/bench-host/r$i
  g=$(guest_round "$i") || fail "guest round $i failed: $g"
  # The same in the guest's own memory: /gtmp is a tmpfs the guest mounts itself.
  l=$(gexec "mkdir -p /gtmp/b && cp /data/tree.tar /gtmp/b/ && head -c $((MIB << 20)) /dev/zero > /gtmp/b/r$i && $(round_cmds /gtmp/b "$i" | tr '\n' ';' | sed 's/;$//'); rm -rf /gtmp/b") \
    || fail "guest tmpfs round $i failed: $l"
  h=$(bash -c "$(round_cmds /tmp/bench-host "$i")")
  grep -q FAILED <<<"$g$h$l" && fail "a workload failed: guest '$g' guest tmpfs '$l' host '$h'"
  read -r gw gr gu gs <<<"$g"; read -r hw hr hu hs <<<"$h"; read -r lw lr lu ls_ <<<"$l"
  LW+=("$lw"); LR+=("$lr"); LU+=("$lu"); LS+=("$ls_")
  GW+=("$gw"); GR+=("$gr"); GU+=("$gu"); GS+=("$gs")
  HW+=("$hw"); HR+=("$hr"); HU+=("$hu"); HS+=("$hs")
  log "round $i: w/r/untar/stat ms: guest virtio-fs $g   guest tmpfs $l   host $h"
  rm -rf $VOL/w$i $VOL/r$i $VOL/x$i /tmp/bench-host/w$i /tmp/bench-host/r$i /tmp/bench-host/x$i
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
report() { # report NAME GUEST_MS HOST_MS GUEST_TMPFS_MS [MIB]
  local g=$2 h=$3 t=$4 extra=""
  [ -n "${5:-}" ] && extra=$(awk -v m="$5" -v g="$g" -v h="$h" 'BEGIN { printf " (guest %.1f MiB/s, host %.0f MiB/s)", m * 1000 / (g ? g : 1), m * 1000 / (h ? h : 1) }')
  log "RESULT $1: virtio-fs in the guest $g ms, host $h ms, tmpfs in the guest $t ms (medians); virtio-fs/host $(awk -v g="$g" -v h="$h" 'BEGIN { printf "%.1f", g / (h ? h : 1) }')x, virtio-fs/guest-tmpfs $(awk -v g="$g" -v t="$t" 'BEGIN { printf "%.1f", g / (t ? t : 1) }')x$extra"
}
log "virtio-fs cache=$CACHE, $N rounds, $MIB MiB, tree of $FILES files (test host under TCG: compare the ratios)"
report "seq-write-${MIB}MiB" "$(median "${GW[@]}")" "$(median "${HW[@]}")" "$(median "${LW[@]}")" "$MIB"
report "seq-read-${MIB}MiB" "$(median "${GR[@]}")" "$(median "${HR[@]}")" "$(median "${LR[@]}")" "$MIB"
report "untar-$FILES-files" "$(median "${GU[@]}")" "$(median "${HU[@]}")" "$(median "${LU[@]}")"
report "ls-lR-$FILES-files" "$(median "${GS[@]}")" "$(median "${HS[@]}")" "$(median "${LS[@]}")"

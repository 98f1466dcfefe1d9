#!/bin/bash
# The pods' Prometheus metrics: each pod's shim serves them on metrics.sock in its state
# dir (`hyperctl metrics --sandbox POD` reads it) and `hyperctl monitor` serves every pod
# of the host on one HTTP endpoint. Named series from each source (shim and VMM
# processes, the VMM's counters, the guest, the container's cgroup, the start-up trace)
# are there, families appear once with both pods' samples, counters move between two
# scrapes, and a pod that is gone leaves the merged page.
# timeout: 500
# needs: containerd hyper-vmm containerd-shim-hyper-v1 hyperctl
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1 hyperctl
MON_PID=""
stop_monitor() { [ -z "$MON_PID" ] || kill "$MON_PID" 2>/dev/null || true; MON_PID=""; }
trap 'keep_hyper_logs; stop_monitor; ctr_remove m1 m2; _th_cleanup' EXIT
hyper_config
ctd_start
ctd_import_busybox
hrun() { tctr 300 run -d --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml "$BUSYBOX_REF" "$@" > /dev/null; }
hctl() { timeout 60 hyperctl --config $CTD-hyper.toml "$@"; }
# value PAGE SERIES: the value of the sample whose name and labels are SERIES.
value() { awk -v s="$2" '$1 == s { print $2; found = 1 } END { exit !found }' <<<"$1"; }
# sum PAGE NAME: the sum of every sample of family NAME.
sum() { awk -v n="$2" 'index($1, n "{") == 1 { t += $2 } END { print t + 0 }' <<<"$1"; }

# m1 keeps using CPU and writing; m2 sleeps.
hrun m1 sh -c 'while :; do dd if=/dev/zero of=/tmp/f bs=64k count=64 2>/dev/null; sleep 0.5; done' \
  || fail "ctr run -d m1 failed"
hrun m2 sleep 100000 || fail "ctr run -d m2 failed"
wait_status m1 RUNNING 120
wait_status m2 RUNNING 120

page=$(hctl metrics --sandbox m1) || fail "hyperctl metrics --sandbox m1 failed: $page"
for series in \
  'hyper_metrics_source_up{pod="m1",source="vmm"} 1' \
  'hyper_metrics_source_up{pod="m1",source="agent"} 1' \
  'hyper_process_resident_memory_bytes{pod="m1",process="shim"}' \
  'hyper_process_resident_memory_bytes{pod="m1",process="vmm"}' \
  'hyper_process_cpu_seconds_total{pod="m1",process="vmm"}' \
  'hyper_process_open_fds{pod="m1",process="shim"}' \
  'hyper_process_threads{pod="m1",process="vmm"}' \
  'hyper_vmm_exits_total{pod="m1",reason="mmio_write"}' \
  'hyper_vmm_device_requests_total{pod="m1",device="vsock"}' \
  'hyper_vmm_device_connections{pod="m1",device="vsock"}' \
  'hyper_vmm_boot_time_seconds{pod="m1"}' \
  'hyper_guest_meminfo_bytes{pod="m1",item="MemTotal"}' \
  'hyper_guest_meminfo_bytes{pod="m1",item="MemAvailable"}' \
  'hyper_guest_load1{pod="m1"}' \
  'hyper_guest_tasks{pod="m1",state="total"}' \
  'hyper_guest_cpu_seconds_total{pod="m1",mode="user"}' \
  'hyper_guest_uptime_seconds{pod="m1"}' \
  'hyper_container_cpu_usage_seconds_total{pod="m1",container="m1"}' \
  'hyper_container_memory_usage_bytes{pod="m1",container="m1"}' \
  'hyper_container_pids{pod="m1",container="m1"}' \
  'hyper_startup_step_seconds{pod="m1",step="agent_ready"}' \
  'hyper_startup_step_seconds{pod="m1",step="process_started"}' \
  'hyper_startup_step_duration_seconds{pod="m1",step="guest_init"}'; do
  grep -qF -- "$series" <<<"$page" || fail "no series $series in the pod's page:"$'\n'"$page"
done
(( $(value "$page" 'hyper_vmm_device_connections{pod="m1",device="vsock"}') >= 1 )) \
  || fail "the VMM counts no open vsock connection (the shim holds some)"
log "the pod's page has every source's series ($(grep -vc '^#' <<<"$page") samples)"

hctl metrics --sandbox nosuch > /dev/null 2>$TH_ART/nosuch.err && fail "metrics of a pod that is not there succeeded"
grep -q 'nosuch/metrics.sock: connect' $TH_ART/nosuch.err || fail "the error does not name the socket: $(cat $TH_ART/nosuch.err)"

port=18090
hyperctl --config $CTD-hyper.toml monitor --listen 127.0.0.1:$port 2> $TH_ART/monitor.log &
MON_PID=$!
t0=$(now_ms)
until first=$(http_get 127.0.0.1 $port /metrics) && grep -q '^hyper_monitor_pod_up' <<<"$first"; do
  (( $(now_ms) - t0 < 30000 )) || fail "hyperctl monitor does not serve: $(cat $TH_ART/monitor.log)"
  th_sleep 0.5
done
for series in 'hyper_monitor_pod_up{pod="m1"} 1' 'hyper_monitor_pod_up{pod="m2"} 1' \
  'hyper_guest_uptime_seconds{pod="m1"}' 'hyper_guest_uptime_seconds{pod="m2"}'; do
  grep -qF -- "$series" <<<"$first" || fail "no series $series in the monitor's page:"$'\n'"$first"
done
dups=$(grep '^# TYPE ' <<<"$first" | sort | uniq -d)
[ -z "$dups" ] || fail "families appear more than once in the merged page: $dups"
log "the monitor serves both pods, each family once"

th_sleep 5
second=$(http_get 127.0.0.1 $port /metrics) || fail "second scrape failed"
for series in 'hyper_guest_uptime_seconds{pod="m1"}' \
  'hyper_container_cpu_usage_seconds_total{pod="m1",container="m1"}' \
  'hyper_process_cpu_seconds_total{pod="m1",process="vmm"}'; do
  a=$(value "$first" "$series") || fail "no $series in the first scrape"
  b=$(value "$second" "$series") || fail "no $series in the second scrape"
  awk -v a="$a" -v b="$b" 'BEGIN { exit !(b > a) }' || fail "$series did not grow in 5 s: $a then $b"
  log "$series: $a -> $b"
done
a=$(sum "$first" hyper_vmm_exits_total); b=$(sum "$second" hyper_vmm_exits_total)
awk -v a="$a" -v b="$b" 'BEGIN { exit !(b > a) }' || fail "the VMM's exits did not grow: $a then $b"
log "VM exits, all reasons: $a -> $b"

ctr_delete m2
third=$(http_get 127.0.0.1 $port /metrics) || fail "third scrape failed"
grep -q 'pod="m2"' <<<"$third" && fail "the monitor still shows m2 after its delete"
grep -qF 'hyper_monitor_pod_up{pod="m1"} 1' <<<"$third" || fail "m1 went missing after m2's delete"
log "a deleted pod leaves the merged page"
stop_monitor
ctr_delete m1

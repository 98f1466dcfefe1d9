#!/bin/bash
# What our shim leaves when things go wrong, under a ConfigPath whose state_dir is not the
# default: a container whose start fails leaves nothing (as under runc), and after the
# shim of a running container is killed with -9, `ctr task rm -f` stops its orphan VMM
# and removes the pod's state and share mounts.
# timeout: 900
# needs: containerd hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1 runc
hyper_config
trap 'keep_hyper_logs; ctr_remove bad badr long; _th_cleanup' EXIT
CTD_LOG_LEVEL=debug ctd_start
ctd_import_busybox
hrun() { tctr 300 run --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml "$@"; }
shims='^(/usr/local/bin/)?(containerd-shim-[a-z0-9-]+|hyper-vmm|runc) '
# left_for ID: processes, state and mounts left for container/pod ID.
left_for() {
  local p
  for p in $(pids_matching "$shims.*$1"); do echo "process: $(tr '\0' ' ' < /proc/$p/cmdline)"; done
  [ ! -e "/tmp/hyper/$1" ] || echo "state: /tmp/hyper/$1: $(ls -A "/tmp/hyper/$1" | tr '\n' ' ')"
  grep " /tmp/hyper/$1/\| $CTD/state/.*/$1/" /proc/mounts | sed 's/^/mount: /' || true
}
# wait_gone ID SECONDS: waits until nothing is left for ID; prints what is left if not.
wait_gone() {
  local t0; t0=$(now_ms)
  while [ -n "$(left_for "$1")" ] && (( $(now_ms) - t0 < $2 * 1000 )); do th_sleep 0.2; done
  left_for "$1"
}

# A start that fails, under runc and under hyper.
for rt in runc hyper; do
  id=bad; [ $rt = runc ] && id=badr
  rc=0
  if [ $rt = runc ]; then
    out=$(tctr 300 run --rm --runtime io.containerd.runc.v2 "$BUSYBOX_REF" $id /no/such/binary 2>&1) || rc=$?
  else
    out=$(hrun --rm "$BUSYBOX_REF" $id /no/such/binary 2>&1) || rc=$?
  fi
  [ $rc -ne 0 ] || fail "$rt: running /no/such/binary succeeded"
  grep -q 'no/such/binary' <<<"$out" || fail "$rt: the error does not name the binary: $out"
  left=$(wait_gone $id 10)
  [ -z "$left" ] || fail "$rt: 10 s after the failed start, left: $left"
  [ -z "$(task_status $id)" ] || fail "$rt: task $id still listed: $(task_status $id)"
  log "$rt: failed start (${out//$'\n'/ }) leaves nothing"
done

# The shim of a running container dies.
hrun -d "$BUSYBOX_REF" long sleep 100000 > /dev/null || fail "ctr run -d failed"
wait_status long RUNNING 300
shim=$(pids_matching '^(/usr/local/bin/)?containerd-shim-hyper-v1 .*-id long' | head -1)
vmm=$(outer_pids $(pids_matching '^(/usr/local/bin/)?hyper-vmm .*/tmp/hyper/long/'))
[ -n "$shim" ] && [ -n "$vmm" ] || fail "no shim ($shim) or VMM ($vmm) for the running container"
[ -e /tmp/hyper/long/vmm.pid ] || fail "no vmm.pid in the pod's state dir"
kill -9 "$shim"
log "killed the shim (pid $shim); VMM pid $vmm"
th_sleep 2
tctr 120 tasks rm -f long > /dev/null 2>&1 || true
left=$(wait_gone long 30)
[ -z "$left" ] || fail "after kill -9 of the shim and ctr task rm -f, left: $left"
ctr containers rm long > /dev/null 2>&1 || true
log "shim killed: VMM, state dir and share mounts gone"

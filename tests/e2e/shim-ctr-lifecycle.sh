#!/bin/bash
# The task lifecycle through our shim under containerd: exit codes propagate, `ctr task
# exec` runs a second process in the VM, pause/resume and metrics answer, and killing the
# VMM makes the task exit 255 with its mounts, VMM and shim gone.
# timeout: 600
# needs: containerd hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1 mke2fs script
hyper_config
trap 'keep_hyper_logs; ctr_remove long victim; _th_cleanup' EXIT
CTD_LOG_LEVEL=debug ctd_start
ctd_import_busybox
hrun() { tctr 300 run --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml "$@"; }

rc=0; hrun --rm "$BUSYBOX_REF" exit7 sh -c 'exit 7' > /dev/null 2>&1 || rc=$?
[ $rc -eq 7 ] || fail "exit status: 'sh -c \"exit 7\"' gave $rc through ctr"
log "exit status 7 propagated"

hrun -d "$BUSYBOX_REF" long sleep 100000 > /dev/null || fail "ctr run -d failed"
wait_status long RUNNING 120
out=$(tctr 300 tasks exec --exec-id e1 long sh -c 'echo from-exec; cat /proc/1/cmdline | tr "\0" " "') \
  || fail "ctr task exec failed: $out"
grep -q from-exec <<<"$out" || fail "exec output missing: $out"
grep -q 'sleep 100000' <<<"$out" || fail "exec did not run beside the container's init: $out"
log "exec ran in the container: $(tr '\n' ' ' <<<"$out")"
rc=0
out=$(timeout 300 script -qec "$(type -P ctr) --address $CTD/containerd.sock tasks exec -t --exec-id et long \
  sh -c '[ -t 0 ] && echo exec-isatty; echo exec-stderr >&2; echo exec-exit; exit 5'" /dev/null < /dev/null 2>&1) || rc=$?
[ $rc -eq 5 ] || fail "ctr task exec -t: exit status $rc, expected 5: $out"
grep -q exec-isatty <<<"$out" && grep -q exec-stderr <<<"$out" && grep -q exec-exit <<<"$out" \
  || fail "ctr task exec -t: output missing: $out"
log "ctr task exec -t: $(tr -d '\r' <<<"$out" | tr '\n' ' ')"

# A terminal: `ctr run -t` (script(1) gives ctr the terminal the test lacks). The guest
# allocates a pty; stdout and stderr arrive merged through it. The process waits a moment
# before it exits: when a session leader exits the kernel hangs its terminal up and drops
# what the pty has not yet handed to its reader, which under TCG can be the last lines.
rc=0
out=$(timeout 300 script -qec "$(type -P ctr) --address $CTD/containerd.sock run -t --rm \
  --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml $BUSYBOX_REF ttyc \
  sh -c 'tty; echo on-stderr >&2; echo tty-exit; sleep 1; exit 3'" /dev/null < /dev/null 2>&1) || rc=$?
[ $rc -eq 3 ] || fail "ctr run -t: exit status $rc, expected 3: $out"
grep -q '/dev/console' <<<"$out" || fail "ctr run -t: the process has no terminal: $out"
grep -q on-stderr <<<"$out" && grep -q tty-exit <<<"$out" || fail "ctr run -t: output missing: $out"
log "ctr run -t: $(tr -d '\r' <<<"$out" | tr '\n' ' ')"

ctr tasks pause long || fail "ctr task pause failed"
[ "$(task_status long)" = PAUSED ] || fail "task not PAUSED after pause: $(task_status long)"
ctr tasks resume long || fail "ctr task resume failed"
[ "$(task_status long)" = RUNNING ] || fail "task not RUNNING after resume: $(task_status long)"
log "pause/resume"
metrics=$(tctr 120 tasks metrics long 2>&1) || fail "ctr task metrics failed: $metrics"
grep -qi "memory" <<<"$metrics" || fail "metrics show no memory: $metrics"
log "metrics: $(tr '\n' ' ' <<<"$metrics" | cut -c1-200)"

ctr tasks kill -s SIGKILL long || fail "ctr task kill failed"
wait_status long STOPPED 60
ctr tasks rm long > /dev/null || fail "ctr task rm failed"
ctr containers rm long || true
log "kill + rm"

# The VMM dies under a running task: the task exits 255 and nothing is left behind.
hrun --rm "$BUSYBOX_REF" victim sleep 100000 > /dev/null 2>&1 &
cpid=$!
wait_status victim RUNNING 120
vmm=$(outer_pids $(pids_matching '^(/usr/local/bin/)?hyper-vmm .*/tmp/hyper/victim/'))
[ -n "$vmm" ] || fail "no hyper-vmm process for the running task"
kill -9 "$vmm"
rc=0; wait "$cpid" || rc=$?
[ $rc -eq 255 ] || fail "after the VMM was killed 'ctr run' exited $rc, expected 255"
t0=$(now_ms)
shims='^(/usr/local/bin/)?(containerd-shim-hyper-v1|hyper-vmm) '
while [ -n "$(pids_matching "$shims")" ] && (( $(now_ms) - t0 < 15000 )); do th_sleep 0.2; done
left=$(pids_matching "$shims")
[ -z "$left" ] || fail "processes left after the VMM died: $(for p in $left; do tr '\0' ' ' < /proc/$p/cmdline; echo; done)"
mounts=$(grep -c " $CTD/state/\| /tmp/hyper/" /proc/mounts || true)
[ "$mounts" -eq 0 ] || fail "mounts left: $(grep " $CTD/state/\| /tmp/hyper/" /proc/mounts)"
[ -z "$(hyper_state_left)" ] || fail "state left in /tmp/hyper: $(hyper_state_left)"
log "VMM killed: task exited 255, shim/VMM/mounts/state gone"

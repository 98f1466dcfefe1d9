#!/bin/bash
# Two containers of one pod share one VM: both `ctr run`s carry the pod's sandbox-id
# annotation, so containerd reaches the same shim, which adds the second container to the
# running VM over the pod's virtio-fs share. Each has its own rootfs; a volume both mount
# is shared; removing one leaves the other running; removing the last ends shim and VMM
# and leaves no mounts.
# timeout: 900
# needs: containerd hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1
hyper_config
VOL=/tmp/podvol
trap 'keep_hyper_logs; ctr_remove c2 c1; _th_cleanup; rm -rf "$VOL"' EXIT
CTD_LOG_LEVEL=debug ctd_start
ctd_import_busybox
# gexec ID CMD: CMD in container ID (one exec id for all: ctr deletes each exec as it ends).
gexec() { tctr 300 tasks exec --exec-id x "$1" sh -c "$2"; }
prun() { # prun ID [CTR-RUN-FLAGS...]: a long-running container of pod "pod1" with the shared volume
  local id=$1; shift
  tctr 300 run -d --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml \
    --annotation io.kubernetes.cri.sandbox-id=pod1 "$@" \
    --mount "type=bind,src=$VOL,dst=/data,options=rbind:rw" "$BUSYBOX_REF" "$id" sleep 100000 \
    > /dev/null || fail "ctr run -d $id failed"
  wait_status "$id" RUNNING 120
}
mkdir -p $VOL
VMM_RE='^(/usr/local/bin/)?hyper-vmm '
SHIM_RE='^(/usr/local/bin/)?containerd-shim-hyper-v1 '

# The pod's size comes from its annotation (config default: 256 MiB).
t0=$(now_ms); prun c1 --annotation io.hyper.memory_mib=384; t1=$(now_ms); prun c2; t2=$(now_ms)
log "c1 running after $((t1 - t0)) ms (VM boot); c2 joined after $((t2 - t1)) ms"
vmms=$(outer_pids $(pids_matching "$VMM_RE") | wc -l)
[ "$vmms" -eq 1 ] || fail "$vmms hyper-vmm processes for one pod: $(for p in $(pids_matching "$VMM_RE"); do tr '\0' ' ' < /proc/$p/cmdline; echo; done)"
pids_matching "$VMM_RE" | xargs -I{} cat /proc/{}/cmdline | tr '\0' ' ' | grep -q /tmp/hyper/pod1/ \
  || fail "the VMM is not the pod's (no /tmp/hyper/pod1/ in its command line)"
# The shim starts the VMM with --config /tmp/hyper/pod1/vm.json (a hyper_vmm_api::VmConfig).
grep -Eq '"memory_mib": *384[^0-9]' /tmp/hyper/pod1/vm.json \
  || fail "the io.hyper.memory_mib=384 annotation did not size the VM: $(cat /tmp/hyper/pod1/vm.json)"
mem_kb=$(gexec c1 "awk '/MemTotal/ { print \$2 }' /proc/meminfo")
(( mem_kb > 300 * 1024 && mem_kb <= 384 * 1024 )) || fail "the guest has $mem_kb kB, not about 384 MiB"
log "VM sized by the pod's annotation: 384 MiB (guest MemTotal $mem_kb kB)"
shims=$(pids_matching "$SHIM_RE" | wc -l)
[ "$shims" -eq 1 ] || fail "$shims shims for one pod"
b1=$(gexec c1 'cat /proc/sys/kernel/random/boot_id'); b2=$(gexec c2 'cat /proc/sys/kernel/random/boot_id')
[ -n "$b1" ] && [ "$b1" = "$b2" ] || fail "the containers run in different kernels (boot ids '$b1' and '$b2')"
log "one VM, one shim, one kernel (boot id $b1) for both containers"
# The agent's log reaches containerd's through the shim's log FIFO.
grep -q 'hyper_agent.*container created' "$TH_ART/containerd.log" \
  || fail "no agent log lines ('container created') in containerd's log"
log "agent log lines reach containerd's log: $(grep -c hyper_agent "$TH_ART/containerd.log")"

# Separate rootfs, shared volume.
gexec c1 'echo c1 > /only-in-c1 && echo hello-from-c1 > /data/shared' || fail "c1 writes failed"
out=$(gexec c2 'cat /data/shared; [ -e /only-in-c1 ] && echo LEAK || echo separate') || fail "c2 exec failed: $out"
grep -q hello-from-c1 <<<"$out" || fail "c2 does not see c1's write to the shared volume: $out"
grep -q separate <<<"$out" || fail "c2 sees c1's rootfs file: $out"
[ "$(cat $VOL/shared)" = hello-from-c1 ] || fail "the host does not see the volume write"
log "each container has its own rootfs; the volume is shared (and the host sees it)"

# containerd restarts: it finds the shim again through the bundle's address file.
ctd_stop
cp "$TH_ART/containerd.log" "$TH_ART/containerd-before-restart.log"
CTD_LOG_LEVEL=debug ctd_start
for c in c1 c2; do
  [ "$(task_status $c)" = RUNNING ] || fail "after a containerd restart task $c is '$(task_status $c)'"
done
out=$(gexec c2 'cat /data/shared') || fail "exec after the containerd restart failed: $out"
[ "$out" = hello-from-c1 ] || fail "exec after the containerd restart printed '$out'"
log "containerd restarted: both tasks still RUNNING and reachable"

# Removing c2 leaves c1 and the VM running and drops c2's share mounts.
ctr_delete c2
[ "$(task_status c1)" = RUNNING ] || fail "c1 is '$(task_status c1)' after c2 was removed"
[ "$(outer_pids $(pids_matching "$VMM_RE") | wc -l)" -eq 1 ] || fail "the VMM went away with c2"
! grep -E " /tmp/hyper/pod1/(mounts|shared)/c2" /proc/mounts || fail "c2's share mounts are left"
out=$(gexec c1 'echo still-here') || fail "c1 does not answer after c2 was removed"
log "c2 removed: c1 still runs in the VM, c2's share mounts are gone"

ctr_delete c1
t0=$(now_ms)
while [ -n "$(pids_matching "$VMM_RE|$SHIM_RE")" ] && (( $(now_ms) - t0 < 15000 )); do th_sleep 0.2; done
[ -z "$(pids_matching "$VMM_RE|$SHIM_RE")" ] || fail "shim/VMM still running 15 s after the last container was removed"
! grep -q " /tmp/hyper/" /proc/mounts || fail "mounts left: $(grep ' /tmp/hyper/' /proc/mounts)"
[ -z "$(hyper_state_left)" ] || fail "state left in /tmp/hyper: $(hyper_state_left)"
[ "$(cat $VOL/shared)" = hello-from-c1 ] || fail "the volume's file was touched by the teardown"
log "last container removed: shim and VMM gone, no mounts or state left, volume intact"

#!/bin/bash
# A booted guest (our kernel, the agent ready, an unmounted share) is saved by one
# hyper-vmm and restored by two others: each restored agent answers over its own vsock,
# and a damaged state file is refused with an error that names it.
# timeout: 420
# needs: hyper-vmm hyperctl
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin hyper-vmm hyperctl
snap=$TH_ART/snapshot
share=$TH_ART/share
mkdir -p "$snap" "$share"
files="{\"state\": \"$snap/state.json\", \"memory\": \"$snap/memory\"}"
# snapshot_config NAME SNAPSHOT_JSON: the config that carries only the snapshot files.
snapshot_config() {
  echo "{\"kernel\": \"$GUEST_KERNEL\", \"snapshot\": $2}" > "$TH_ART/$1.json"
  echo "$TH_ART/$1.json"
}
# agent_health VM: the agent answers SERVING over VM's vsock within 60 s (a restored
# guest drops the connections its vsock reset finds, so a first call may be cut off).
agent_health() {
  local out tries=0 t0; t0=$(now_ms)
  until out=$(hyperctl agent --vsock-uds "$TH_VSOCK_DIR/$1.vsock" --wait 60 health 2>&1); do
    tries=$((tries + 1))
    (( $(now_ms) - t0 < 60000 )) || fail "$1: hyperctl health failed $tries times, last: $out"
    log "$1: health: $out"
    th_sleep 0.2
  done
  [ "$out" = SERVING ] || fail "$1: agent health is '$out', not SERVING"
  HEALTH_RETRIES=$tries
}
devices=(--vsock 3 --rng --fs "tag=hypershare,path=$share")

vm_start_hyper template "${devices[@]}" --api-socket "$TH_ART/template.sock" \
  --config "$(snapshot_config template "{\"save_to\": $files}")"
expect_console template "$READY_MARKER" 120
agent_health template
t0=$(now_ms)
out=$(hyperctl vmm --api-socket "$TH_ART/template.sock" snapshot 2>&1) || fail "snapshot: $out"
log "snapshot saved in $(( $(now_ms) - t0 )) ms: memory $(du -k "$snap/memory" | cut -f1) kB on disk, state $(stat -c %s "$snap/state.json") bytes"
vm_stop template

restore=$(snapshot_config restore "{\"restore_from\": $files}")
for vm in r1 r2; do
  vm_start_hyper "$vm" "${devices[@]}" --config "$restore"
done
for vm in r1 r2; do
  t0=$(now_ms)
  agent_health "$vm"
  log "PASS-INFO hyper-vmm-snapshot: $vm restored, agent SERVING $(( $(now_ms) - VM_T0[$vm] )) ms after spawn ($HEALTH_RETRIES calls cut off first)"
done
vm_stop r1
vm_stop r2

# A state file a byte short is refused at start, by name.
head -c -1 "$snap/state.json" > "$snap/short.json"
bad=$(snapshot_config bad "{\"restore_from\": {\"state\": \"$snap/short.json\", \"memory\": \"$snap/memory\"}}")
vm_start_hyper bad "${devices[@]}" --config "$bad"
vm_wait_exit bad 60
[ "$VM_RC" -ne 0 ] || fail "a restore from a truncated state file exited 0"
grep -q "short.json" "$TH_ART/bad.vmm.log" || fail "the error does not name the state file: $(tail -3 "$TH_ART/bad.vmm.log")"
log "PASS-INFO hyper-vmm-snapshot: truncated state refused: $(grep -m1 short.json "$TH_ART/bad.vmm.log")"

#!/bin/bash
# Pods started at the same moment: PODS (default 3) `ctr run --rm` of separate pods are
# started together, after SEQUENTIAL (default 0) one-at-a-time runs in the same test-host
# boot; each must print its own output and exit 0, and afterwards no shim, VMM, share mount
# or state dir may be left. A pod still running after 400 s fails it (status 124); the
# shims' per-pod logs are kept as artefacts.
# timeout: 900
# needs: containerd hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1
pods=${PODS:-3} seq_runs=${SEQUENTIAL:-0}
hyper_config
ctd_start
ctd_import_busybox
run_pod() { # run_pod ID: one pod; output in $TH_ART/ID.out, status in $TH_ART/ID.rc
  local rc=0
  tctr 400 run --rm --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml \
    "$BUSYBOX_REF" "$1" sh -c "echo hello-from-$1; cat /proc/sys/kernel/random/boot_id" \
    > "$TH_ART/$1.out" 2>&1 || rc=$?
  echo "$rc" > "$TH_ART/$1.rc"
}
for ((i = 1; i <= seq_runs; i++)); do
  run_pod "seq$i"
  [ "$(cat "$TH_ART/seq$i.rc")" = 0 ] || fail "sequential run seq$i failed: $(cat "$TH_ART/seq$i.out")"
done
[ "$seq_runs" -gt 0 ] && log "$seq_runs sequential pods ran"
t0=$(now_ms)
bg=()
for ((i = 1; i <= pods; i++)); do run_pod "par$i" & bg+=($!); done
for p in "${bg[@]}"; do wait "$p" || true; done
took=$(( $(now_ms) - t0 ))
keep_hyper_logs
boot_ids=()
for ((i = 1; i <= pods; i++)); do
  id=par$i out=$(cat "$TH_ART/$id.out")
  echo "$id: rc $(cat "$TH_ART/$id.rc"): $out"
  [ "$(cat "$TH_ART/$id.rc")" = 0 ] || fail "$id exited with status $(cat "$TH_ART/$id.rc") (124: still running after 400 s)"
  grep -qx "hello-from-$id" <<<"$out" || fail "$id did not print its own greeting: $out"
  boot_ids+=("$(tail -1 <<<"$out")")
done
[ "$(printf '%s\n' "${boot_ids[@]}" | sort -u | wc -l)" = "$pods" ] || fail "the pods did not each get a VM of their own: ${boot_ids[*]}"
log "$pods pods started at once all ran, in their own VMs, in $took ms"
t1=$(now_ms)
left() { pids_matching '^(/usr/local/bin/)?(containerd-shim-hyper-v1|hyper-vmm) '; }
while [ -n "$(left)" ] && (( $(now_ms) - t1 < 30000 )); do th_sleep 0.2; done
[ -z "$(left)" ] || fail "shims/VMMs still running 30 s after the pods ended: $(left)"
grep -q ' /tmp/hyper/' /proc/self/mountinfo && fail "share mounts left: $(grep ' /tmp/hyper/' /proc/self/mountinfo)"
[ -z "$(hyper_state_left)" ] || fail "state left in /tmp/hyper: $(hyper_state_left)"
log "PASS-INFO $pods parallel pods in $took ms; nothing left behind"

#!/bin/bash
# A Kubernetes pod through containerd's CRI and the RuntimeClass handler `hyper`, as kubelet
# drives it, with crictl: runp boots the pod's VM and its sandbox; two app containers join
# the sandbox's network, ipc and uts namespaces (and pid: the pod config shares it) inside
# the guest; hostname, /etc/hosts, resolv.conf from the pod's DNS config and /dev/shm;
# port-forward; exec (sync, stdin, tty), attach, logs, stats, update; stop/rm/stopp/rmp
# leave nothing.
# timeout: 1200
# needs: containerd cni cri hyper-vmm containerd-shim-hyper-v1 hyperctl
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd crictl hyper-vmm containerd-shim-hyper-v1 script
hyper_config
W=/tmp/cri-pod
PF_PIDS=()
trap 'stop_port_forwards; keep_hyper_logs; cri_remove_pods; _th_cleanup; rm -rf "$W"; rmdir /sys/fs/cgroup/hyper-e2e-pods 2>/dev/null || true' EXIT
CTD_LOG_LEVEL=debug cri_start
mkdir -p $W/logs
VMM_RE='^(/usr/local/bin/)?hyper-vmm '
SHIM_RE='^(/usr/local/bin/)?containerd-shim-hyper-v1 '

cat > $W/pod.json <<EOT
{"metadata": {"name": "web", "namespace": "hyper-e2e", "uid": "cri-pod-uid-1"},
 "hostname": "hyperpod",
 "log_directory": "$W/logs",
 "dns_config": {"servers": ["10.88.0.1"], "searches": ["hyper.test"], "options": ["ndots:2"]},
 "port_mappings": [],
 "linux": {"cgroup_parent": "/hyper-e2e-pods", "security_context": {"namespace_options": {"pid": 0}}}}
EOT
# ctr_json NAME CMD: a busybox container that runs `sh -c CMD`, logging to NAME.log.
ctr_json() {
  cat > "$W/$1.json" <<EOT
{"metadata": {"name": "$1"}, "image": {"image": "$BUSYBOX_REF"},
 "command": ["sh", "-c", "$2"], "log_path": "$1.log", "stdin": true,
 "linux": {"resources": {"memory_limit_in_bytes": 134217728}}}
EOT
}
ctr_json server 'echo server-started; mkdir -p /tmp/www; echo hello-from-the-pod > /tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www'
ctr_json client 'echo client-started; exec sleep 100000'

t0=$(now_ms)
POD=$(crictl runp --runtime hyper $W/pod.json) || fail "crictl runp --runtime hyper failed"
log "runp: pod $POD ready after $(( $(now_ms) - t0 )) ms"
crictl inspectp "$POD" | grep -q '"state": "SANDBOX_READY"' || fail "pod is not SANDBOX_READY: $(crictl inspectp "$POD")"
vmms=$(outer_pids $(pids_matching "$VMM_RE") | wc -l)
[ "$vmms" -eq 1 ] || fail "$vmms VMMs after runp, not 1"

run_ctr() { # run_ctr NAME: creates and starts it, prints its id
  local id
  id=$(crictl create "$POD" "$W/$1.json" $W/pod.json) || fail "crictl create $1 failed"
  crictl start "$id" > /dev/null || fail "crictl start $1 failed"
  echo "$id"
}
t0=$(now_ms)
SERVER=$(run_ctr server)
CLIENT=$(run_ctr client)
log "two containers created and started in $(( $(now_ms) - t0 )) ms"
for c in "$SERVER" "$CLIENT"; do
  crictl inspect "$c" | grep -q '"state": "CONTAINER_RUNNING"' || fail "container $c is not running: $(crictl inspect "$c" | head -30)"
done
[ "$(outer_pids $(pids_matching "$VMM_RE") | wc -l)" -eq 1 ] || fail "the containers did not join the pod's VM"
[ "$(pids_matching "$SHIM_RE" | wc -l)" -eq 1 ] || fail "more than one shim for the pod"

# Sandbox namespaces inside the guest.
cx() { crictl exec -s "$@"; }
out=$(cx "$CLIENT" hostname) || fail "exec hostname failed: $out"
[ "$out" = hyperpod ] || fail "hostname in the container is '$out', not the pod's 'hyperpod'"
out=$(cx "$CLIENT" wget -qO- http://127.0.0.1:8080/) || fail "client cannot reach the server on 127.0.0.1:8080: $out"
[ "$out" = hello-from-the-pod ] || fail "client got '$out' from the server"
log "client reaches the server on 127.0.0.1: one network namespace"
out=$(cx "$CLIENT" ps -o pid,comm) || fail "ps failed: $out"
grep -q httpd <<<"$out" && [ "$(awk '$1 == 1 { print $2 }' <<<"$out")" = pause ] \
  || fail "the pod shares its PID namespace (pause as PID 1) but the client sees: $out"
# (pause runs as user 65535: only ps may look at it, its /proc/1/ns needs CAP_SYS_PTRACE.)
for ns in net ipc uts pid; do
  a=$(cx "$SERVER" readlink /proc/self/ns/$ns) b=$(cx "$CLIENT" readlink /proc/self/ns/$ns)
  [ -n "$a" ] && [ "$a" = "$b" ] || fail "$ns namespace: the client's ($b) is not the server's ($a)"
done
log "client and server share net, ipc, uts and pid namespaces (and see pause as PID 1)"
out=$(cx "$CLIENT" cat /etc/resolv.conf)
grep -q '^nameserver 10.88.0.1' <<<"$out" && grep -q '^search hyper.test' <<<"$out" \
  && grep -q '^options ndots:2' <<<"$out" || fail "resolv.conf is not the pod's DNS config: $out"
out=$(cx "$CLIENT" cat /etc/hostname)
[ "$out" = hyperpod ] || fail "/etc/hostname is '$out'"
cx "$CLIENT" grep -q localhost /etc/hosts || fail "/etc/hosts has no localhost: $(cx "$CLIENT" cat /etc/hosts)"
out=$(cx "$CLIENT" sh -c 'echo x > /dev/shm/f && cat /dev/shm/f; df -k /dev/shm | tail -1') || fail "/dev/shm: $out"
grep -q '^x' <<<"$out" || fail "/dev/shm is not writable: $out"
[ "$(cx "$SERVER" cat /dev/shm/f)" = x ] || fail "/dev/shm is not shared by the pod's containers"
log "hostname, hosts, resolv.conf, /dev/shm as runc gives them: $(tail -1 <<<"$out")"

# The pod's network: CNI's interface is the guest's (tc redirect to a tap of the VM).
IP=$(crictl inspectp -o go-template --template '{{.status.network.ip}}' "$POD")
[[ $IP == 10.88.* ]] || fail "the pod has no CNI address: '$IP'"
out=$(cx "$CLIENT" ip -o addr show eth0) || fail "no eth0 in the guest: $out"
grep -q "inet $IP/" <<<"$out" || fail "the guest's eth0 does not carry the pod IP $IP: $out"
# net_state: counters on every side of the redirect, for a failure message.
net_state() {
  local ns
  ns=$(crictl inspectp -o go-template --template '{{range .info.runtimeSpec.linux.namespaces}}{{if eq .type "network"}}{{.path}}{{end}}{{end}}' "$POD")
  echo "--- pod netns $ns"; nsenter --net="$ns" cat /proc/net/dev; nsenter --net="$ns" ip addr
  echo "--- guest"; cx "$CLIENT" cat /proc/net/dev; cx "$CLIENT" ip route; cx "$CLIENT" cat /proc/net/arp
  cx "$CLIENT" ip link; cx "$CLIENT" cat /proc/net/snmp
  echo "--- test host"; cat /proc/net/arp; ip route
  grep -E 'net|tap|virtio' /tmp/hyper/*/vmm.log | tail -20
  hyperctl --config $CTD-hyper.toml vmm --sandbox "$POD" metrics
  ping -c 2 -W 3 "$IP"
}
out=$(cx "$CLIENT" ping -c 1 -W 5 10.88.0.1) || fail "the pod cannot reach its gateway 10.88.0.1: $out $(net_state 2>&1)"
out=$(http_get "$IP" 8080 /) || fail "the test host cannot reach the server at the pod IP $IP:8080: $(net_state 2>&1)"
[ "$out" = hello-from-the-pod ] || fail "the test host got '$out' from $IP:8080"
log "pod IP $IP: the guest owns it; the test host reaches the server at $IP:8080"

# Port forwarding (kubectl port-forward): containerd dials localhost:PORT in the pod's
# network namespace on the host, where the shim takes the connection into the guest.
# (crictl itself in the background, not lib.sh's wrapper function: its PID is crictl's.)
stop_port_forwards() {
  local p
  for p in "${PF_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PF_PIDS=()
}
command crictl --config $CTD/crictl.yaml port-forward "$POD" 18080:8080 > $W/pf.log 2>&1 &
PF_PIDS+=($!)
command crictl --config $CTD/crictl.yaml port-forward "$POD" 18081:9999 > $W/pf-closed.log 2>&1 &
PF_PIDS+=($!)
t0=$(now_ms)
until out=$(http_get 127.0.0.1 18080 / 2> /dev/null) && [ -n "$out" ]; do  # crictl listening?
  (( $(now_ms) - t0 < 30000 )) || fail "port-forward 18080:8080 gives no page within 30 s: '$out' $(cat $W/pf.log)"
  th_sleep 0.5
done
[ "$out" = hello-from-the-pod ] || fail "port-forward to the server gave '$out'"
log "port-forward: the test host's 127.0.0.1:18080 reaches the server's 8080 in the guest after $(( $(now_ms) - t0 )) ms"
# A port nothing listens on in the pod: the forwarded connection ends, the pod lives on.
out=$(http_get 127.0.0.1 18081 / 2>&1) && [ -n "$out" ] && fail "port-forward to a closed port gave '$out'"
out=$(http_get 127.0.0.1 18080 /) && [ "$out" = hello-from-the-pod ] \
  || fail "port-forward broke after a refused port: '$out' $(cat $W/pf.log)"
stop_port_forwards
log "port-forward to a port nothing listens on: the connection closed; the other forward still works"

# exec with stdin, with a terminal, and a failing one.
out=$(echo via-stdin | crictl exec -i "$CLIENT" cat) || fail "exec -i failed: $out"
[ "$out" = via-stdin ] || fail "exec -i echoed '$out'"
# (The terminal is a pty of the guest's devpts, which the container's own devpts does not
# list: isatty holds, ttyname does not. No fd beyond 0-2 may reach the process.)
out=$(script -qec "crictl --config $CTD/crictl.yaml exec -it $CLIENT sh -c '[ -t 0 ] && [ -t 1 ] && echo in-a-terminal; ls /proc/self/fd/'" /dev/null | tr -d '\r') || fail "exec -t failed: $out"
grep -q in-a-terminal <<<"$out" || fail "exec -t has no terminal: $out"
[ "$(grep -Ec '^[0-9]+$' <<<"$(tr ' ' '\n' <<<"$out")")" -le 4 ] || fail "exec -t leaks fds into the container: $out"
# (crictl itself exits 1 and names the status.)
out=$(cx "$CLIENT" sh -c 'exit 7' 2>&1) && fail "an exec that exits 7 succeeded"
grep -q "exited with 7" <<<"$out" || fail "exec's exit status is not 7: $out"
log "exec: stdin, terminal and exit status"

# logs, attach, stats, update.
crictl logs "$SERVER" 2>&1 | grep -q server-started || fail "crictl logs: $(crictl logs "$SERVER" 2>&1)"
grep -q client-started "$W/logs/client.log" || fail "the client's CRI log file: $(cat "$W/logs/client.log")"
out=$(crictl stats -o json "$CLIENT") || fail "crictl stats failed: $out"
tr -d ' \n' <<<"$out" | grep -Eq '"workingSetBytes":\{"value":"[1-9]' || fail "no memory in crictl stats: $out"
# Pod stats: containerd reads the pod's host cgroup, where the VMM runs (the VM's cost).
out=$(crictl statsp -o json "$POD" 2>&1) || fail "crictl statsp failed: $out"
tr -d ' \n' <<<"$out" | grep -Eq '"workingSetBytes":\{"value":"[1-9]' \
  || fail "no pod memory in crictl statsp: $out"
crictl update --memory 100663296 "$CLIENT" || fail "crictl update --memory failed"
out=$(cx "$CLIENT" cat /sys/fs/cgroup/memory.max)
[ "$out" = 100663296 ] || fail "after update, memory.max in the container is '$out'"
log "logs, stats, update (memory.max $out)"

# stop, rm, stopp, rmp: nothing left.
crictl stop "$SERVER" > /dev/null || fail "crictl stop failed"
crictl inspect "$SERVER" | grep -q '"state": "CONTAINER_EXITED"' || fail "stopped container is not EXITED"
crictl rm "$SERVER" > /dev/null || fail "crictl rm failed"
cx "$CLIENT" true || fail "the client does not answer after the server was removed"
crictl stopp "$POD" > /dev/null || fail "crictl stopp failed"
crictl rmp "$POD" > /dev/null || fail "crictl rmp failed"
t0=$(now_ms)
while [ -n "$(pids_matching "$VMM_RE|$SHIM_RE")" ] && (( $(now_ms) - t0 < 15000 )); do th_sleep 0.2; done
[ -z "$(pids_matching "$VMM_RE|$SHIM_RE")" ] || fail "shim/VMM still running 15 s after rmp"
! grep -q " /tmp/hyper/" /proc/mounts || fail "mounts left: $(grep ' /tmp/hyper/' /proc/mounts)"
for ns in /var/run/netns/*; do
  [ -e "$ns" ] || continue
  ! nsenter --net="$ns" ip -o link | grep -q hyper_tap || fail "a tap is left in $ns"
done
[ -z "$(hyper_state_left)" ] || fail "state left in /tmp/hyper: $(hyper_state_left)"
[ -z "$(find /sys/fs/cgroup/hyper-e2e-pods -mindepth 1 -type d 2>/dev/null)" ] \
  || fail "pod cgroups left: $(find /sys/fs/cgroup/hyper-e2e-pods -mindepth 1 -type d)"
rmdir /sys/fs/cgroup/hyper-e2e-pods 2>/dev/null || true

# A VM cannot share the host's network namespace: hostNetwork is refused, saying why.
sed 's/"pid": 0/"network": 2/' $W/pod.json > $W/hostnet.json
out=$(crictl runp --runtime hyper $W/hostnet.json 2>&1) && fail "a hostNetwork pod was accepted"
grep -q "hostNetwork: true" <<<"$out" || fail "the hostNetwork refusal does not say why: $out"
[ -z "$(pids_matching "$VMM_RE")" ] || fail "a VMM runs after the refused hostNetwork pod"
log "hostNetwork refused: $(grep -o 'the pod asks[^:]*' <<<"$out" | head -1)"
cri_remove_pods
log "PASS-INFO cri-pod: the pod's lifecycle through CRI"

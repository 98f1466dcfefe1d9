#!/bin/bash
# Kubernetes pods from one VM template (`[factory] template = true`), through CRI: the
# first runp builds a template with the pod's network device, both pods restore from it;
# each then has its own IP (and its CNI interface's MAC) in the guest, its own hostname
# and RNG output; the test host reaches each pod at its IP, and one pod the other.
# timeout: 900
# needs: containerd cni cri hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd crictl hyper-vmm containerd-shim-hyper-v1
HYPER_TEMPLATE=true hyper_config
W=/tmp/cri-template
trap 'keep_hyper_logs; cri_remove_pods; _th_cleanup; rm -rf "$W"' EXIT
cri_start
mkdir -p $W
cat > $W/ctr.json <<EOT
{"metadata": {"name": "web"}, "image": {"image": "$BUSYBOX_REF"},
 "command": ["sh", "-c", "mkdir -p /tmp/w && hostname > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"]}
EOT
cx() { crictl exec -s "$@"; }
declare -A POD CTR IP RND
for p in a b; do
  printf '{"metadata": {"name": "tpl-%s", "namespace": "hyper-e2e", "uid": "cri-template-%s"}, "hostname": "pod-%s", "log_directory": "%s"}\n' \
    "$p" "$p" "$p" "$W" > "$W/pod-$p.json"
  t0=$(now_ms)
  POD[$p]=$(crictl runp --runtime hyper "$W/pod-$p.json") || {
    grep -iE 'template|restore|hyper' "$TH_ART/containerd.log" | tail -30 || true
    fail "runp pod-$p failed"
  }
  log "runp pod-$p: $(( $(now_ms) - t0 )) ms"
  CTR[$p]=$(crictl create "${POD[$p]}" $W/ctr.json "$W/pod-$p.json") || fail "create in pod-$p failed"
  crictl start "${CTR[$p]}" > /dev/null || fail "start in pod-$p failed"
done
grep -q 'VM template built' "$TH_ART/containerd.log" || fail "no template was built"
restored=$(grep -c 'agent ready.*restored=true' "$TH_ART/containerd.log" || true)
[ "$restored" -eq 2 ] || fail "$restored of the 2 pods were restored from the template"
grep -q 'nics 1' /tmp/hyper/.templates/*/inputs.txt || fail "the template has no network device: $(cat /tmp/hyper/.templates/*/inputs.txt)"

for p in a b; do
  IP[$p]=$(crictl inspectp -o go-template --template '{{.status.network.ip}}' "${POD[$p]}")
  [[ ${IP[$p]} == 10.88.* ]] || fail "pod-$p has no CNI address: '${IP[$p]}'"
  out=$(cx "${CTR[$p]}" ip -o addr show eth0) || fail "pod-$p: no eth0 in the guest: $out"
  grep -q "inet ${IP[$p]}/" <<<"$out" || fail "pod-$p: eth0 does not carry the pod IP ${IP[$p]}: $out"
  # The guest's MAC is the CNI interface's, not the template's.
  ns=$(crictl inspectp -o go-template --template '{{range .info.runtimeSpec.linux.namespaces}}{{if eq .type "network"}}{{.path}}{{end}}{{end}}' "${POD[$p]}")
  want=$(nsenter --net="$ns" ip -o link show eth0 | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
  got=$(cx "${CTR[$p]}" ip -o link show eth0 | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
  [ -n "$want" ] && [ "$got" = "$want" ] || fail "pod-$p: the guest's eth0 has MAC '$got', the pod's is '$want'"
  [ "$(cx "${CTR[$p]}" hostname | tr -d '\r')" = "pod-$p" ] || fail "pod-$p: hostname is '$(cx "${CTR[$p]}" hostname)'"
  RND[$p]=$(cx "${CTR[$p]}" sh -c 'head -c 16 /dev/urandom | od -An -tx1' | tr -d ' \r\n')
  out=$(http_get "${IP[$p]}" 8080 /) || fail "the test host cannot reach pod-$p at ${IP[$p]}:8080"
  [ "$out" = "pod-$p" ] || fail "${IP[$p]}:8080 answered '$out', not pod-$p"
  log "pod-$p: IP ${IP[$p]}, MAC $got, hostname pod-$p, random ${RND[$p]}"
done
[ "${IP[a]}" != "${IP[b]}" ] || fail "both pods have IP ${IP[a]}"
[ ${#RND[a]} -eq 32 ] && [ "${RND[a]}" != "${RND[b]}" ] || fail "the two pods read the same random bytes: ${RND[a]} / ${RND[b]}"
out=$(cx "${CTR[a]}" wget -qO- "http://${IP[b]}:8080/" | tr -d '\r') || fail "pod-a cannot reach pod-b at ${IP[b]}: $out"
[ "$out" = pod-b ] || fail "pod-a got '$out' from pod-b's IP"
log "pod-a reaches pod-b at ${IP[b]}:8080"

for p in a b; do
  crictl stopp "${POD[$p]}" > /dev/null || fail "stopp pod-$p failed"
  crictl rmp "${POD[$p]}" > /dev/null || fail "rmp pod-$p failed"
done
t0=$(now_ms)
while [ -n "$(pids_matching '^(/usr/local/bin/)?(hyper-vmm|containerd-shim-hyper-v1) ')" ] && (( $(now_ms) - t0 < 15000 )); do th_sleep 0.2; done
[ -z "$(pids_matching '^(/usr/local/bin/)?hyper-vmm ')" ] || fail "a VMM runs 15 s after rmp"
[ -z "$(hyper_state_left)" ] || fail "state left in /tmp/hyper: $(hyper_state_left)"
log "PASS-INFO cri-template: two CRI pods restored from one template, each with its own IP, MAC, hostname and RNG"

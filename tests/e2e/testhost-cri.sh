#!/bin/bash
# The test host can run containerd's CRI with CNI: with the CRI plugin on and a host-only
# bridge network, `crictl info` reports RuntimeReady and NetworkReady, and the runtime
# classes runc and hyper are declared. The base for crictl/critest tests.
# timeout: 240
# needs: containerd cni cri
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd crictl critest
[ -x /usr/lib/cni/bridge ] || fail "no CNI bridge plugin in /usr/lib/cni"
modprobe bridge || fail "modprobe bridge failed"
modprobe br_netfilter || fail "modprobe br_netfilter failed"
modprobe veth || fail "modprobe veth failed"
CTD_CRI=1 ctd_start
t0=$(now_ms)
info=$(crictl info 2>&1) || { echo "$info"; fail "crictl info failed"; }
log "crictl info answered in $(( $(now_ms) - t0 )) ms"
echo "$info" | head -40
for c in RuntimeReady NetworkReady; do
  tr -d ' \n' <<<"$info" | grep -q "\"type\":\"$c\",\"status\":true" || fail "crictl info: $c is not true"
done
tr -d ' \n' <<<"$info" | grep -q '"hyper":{' || fail "crictl info does not show the hyper runtime class"
critest --version || fail "critest does not run in the test host"
log "PASS-INFO testhost-cri: CRI runtime and network ready"

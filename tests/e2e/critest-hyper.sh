#!/bin/bash
# cri-tools' conformance suite, critest v1.26.1, against containerd's CRI with every pod on
# the runtime handler `hyper`, images pulled from a registry inside the test host. Passes
# when every spec ran but those that need the host's namespaces (listed below with the
# reason; a VM cannot share them) and the one that needs gcr.io's real digest.
# CRITEST_FOCUS=REGEX runs a subset (the default suite runs the lifecycle specs this way).
# timeout: 5400
# needs: containerd cni cri critest hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd crictl critest docker-registry hyper-vmm containerd-shim-hyper-v1
HYPER_DEBUG_CONSOLE=false hyper_config
remove_new_shm() {
  local id
  for id in $(awk -v before="${shm_before:-}" 'BEGIN { n = split(before, b, " "); for (i = 1; i <= n; i++) old[b[i]] = 1 }
      NR > 1 && !($2 in old) { print $2 }' /proc/sysvipc/shm); do
    ipcrm -m "$id" || true
  done
}
trap 'cri_remove_pods; cri_registry_stop; remove_new_shm; _th_cleanup' EXIT
cri_registry_start
# hostPort: CNI's portmap writes NAT rules with iptables (nft); load what they use.
for m in nf_tables nft_compat nft_chain_nat nf_nat nf_conntrack xt_nat xt_conntrack xt_comment \
  xt_mark xt_addrtype xt_multiport xt_tcpudp xt_MASQUERADE; do
  modprobe "$m" || fail "modprobe $m failed"
done
cri_start
# critest's HostIpc checks leave SysV shm segments on the host: remove those it made.
shm_before=$(awk 'NR > 1 { printf "%s ", $2 }' /proc/sysvipc/shm)

# Not run, and why:
skips=(
  # The pod would share a namespace with the host: hyper refuses these pods
  # (a VM has its own kernel; see cri-pod's hostNetwork check).
  'should support HostPID$'
  'HostIpc is true'
  'HostNetwork is true'
  'portforward in host network'
  # Shares the host's mount namespace with the container, both ways: a mount made in the
  # container must appear on the host, but the container's mounts are in the pod's own
  # kernel (host to container alone would be virtio-fs; back is not possible).
  "mount with 'rshared' should support propagation from host to container and vice versa"
  # Pulls gcr.io's real image by its digest: not reproducible offline (runc fails it too).
  'with digest'
)
skip_re=$(IFS='|'; echo "${skips[*]}")
args=(--runtime-endpoint "unix://$CTD/containerd.sock" --image-endpoint "unix://$CTD/containerd.sock"
  --runtime-handler hyper --ginkgo.no-color --ginkgo.skip "$skip_re"
  --ginkgo.junit-report "$TH_ART/critest.xml")
[ -n "${CRITEST_FOCUS:-}" ] && args+=(--ginkgo.focus "$CRITEST_FOCUS")
t0=$(now_ms)
rc=0
critest "${args[@]}" > "$TH_ART/critest.log" 2>&1 || rc=$?
secs=$(( ($(now_ms) - t0) / 1000 ))
summary=$(grep -E '^(Ran|FAIL!|SUCCESS!)|Passed \| ' "$TH_ART/critest.log" | tail -3)
log "critest (rc $rc, ${secs} s): $(tr '\n' ' ' <<<"$summary")"
grep -E '^\s*\[FAIL\]' "$TH_ART/critest.log" | sort -u | head -40 || true
[ "$rc" -eq 0 ] || fail "critest failed (log: $TH_ART/critest.log)"
log "PASS-INFO critest-hyper: $(grep -oE '[0-9]+ Passed \| [0-9]+ Failed \| [0-9]+ Pending \| [0-9]+ Skipped' "$TH_ART/critest.log" | tail -1) in ${secs} s"

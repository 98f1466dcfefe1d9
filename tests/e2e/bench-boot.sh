#!/bin/bash
# Boot benchmark: hyper-vmm against QEMU microvm, alternated, same guest kernel + image,
# 1 vCPU / 256 MiB: VMM spawn -> HYPER-AGENT-READY on the console, and the VMM's peak RSS.
# Env: BENCH_N (boots per VMM, default 10), BENCH_WARM_MIB (fresh memory written before
# each boot against the 2nd-VM stall, default 600; 0 = off). Not in the default suite.
# timeout: 1800
# needs: hyper-vmm
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin hyper-vmm qemu-system-x86_64
n=${BENCH_N:-10} warm=${BENCH_WARM_MIB:-600}
log "bench: $n boots per VMM, alternated (hyper-vmm first in odd rounds, QEMU first in even ones); warm ${warm} MiB before each"
declare -A READY=() RSS=()
OWN=""
boot() {                                   # boot KIND ROUND
  local kind=$1 vm=$1-$2
  [ "$warm" -gt 0 ] && th_warm_memory "$warm"
  if [ "$kind" = hyper ]; then vm_start_hyper "$vm" --vsock 3 --memory-mib 256 > /dev/null
  else vm_start_qemu "$vm" --vsock 3 --memory-mib 256 > /dev/null; fi
  expect_console "$vm" "$READY_MARKER" 120
  READY[$kind]+="$WAIT_MS "; RSS[$kind]+="$(vm_peak_rss_kb "$vm") "
  # hyper-vmm's guest RAM is a memfd (RssShmem): what is left is the VMM's own memory.
  [ "$kind" = hyper ] && OWN+="$(awk '/^RssAnon:|^RssFile:/ { s += $2 } END { print s }' "/proc/${VM_PID[$vm]}/status") "
  vm_stop "$vm"
  echo "round $2 $kind: ready ${WAIT_MS} ms"
}
for ((i = 1; i <= n; i++)); do
  if (( i % 2 )); then boot hyper "$i"; boot qemu "$i"; else boot qemu "$i"; boot hyper "$i"; fi
done
stats() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { printf "median %d  min %d  max %d  (n=%d)", (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2), a[1], a[NR], NR }'; }
for k in hyper qemu; do
  log "RESULT $k: spawn -> ready ms: $(stats <<<"${READY[$k]}"); peak RSS kB: $(stats <<<"${RSS[$k]}")"
done
log "RESULT hyper-vmm's own memory after boot (RssAnon+RssFile, guest RAM excluded) kB: $(stats <<<"$OWN")"

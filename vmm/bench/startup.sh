#!/usr/bin/env bash
# hyper-vmm start-up cost on this machine (no guest boot needed, so it runs on the bare
# machine): process spawn -> first KVM_RUN, wall and CPU time, and the VMM's own memory
# at that point (RssAnon + RssFile: guest RAM is memfd, counted apart as RssShmem).
# Firecracker's spec for the same: <= 8 CPU ms to the API socket, <= 5 MiB of VMM memory.
# usage: vmm/bench/startup.sh [N]   (default 20 runs; prints medians)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../scripts/common.sh
source "$here/../../scripts/common.sh"
n=${1:-20}
cd "$HYPER_ROOT"
nice cargo build -q --release -p hyper-vmm
vmm=$HYPER_ROOT/target/release/hyper-vmm
kernel=$(bash guest-kernel-config/build.sh)
initrd=$(bash guest-kernel-config/image/build.sh)
[ -c /dev/kvm ] || die "no /dev/kvm"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

: > "$work/spawn" ; : > "$work/wall" ; : > "$work/cpu" ; : > "$work/own" ; : > "$work/shmem"
for i in $(seq "$n"); do
  log_file=$work/vmm-$i.log
  t0=$(date +%s%N)
  HYPER_VMM_LOG=info "$vmm" --kernel "$kernel" --initrd "$initrd" --memory-mib 128 --serial none \
    --api-socket "$work/api-$i.sock" > "$log_file" 2>&1 &
  pid=$!
  until grep -q 'vcpus-started' "$log_file"; do
    kill -0 "$pid" 2>/dev/null || die "hyper-vmm exited early: $(tail -3 "$log_file")"
    [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 10000 ] || die "no vcpus-started line within 10 s"
    sleep 0.001
  done
  echo $(( ($(date +%s%N) - t0) / 1000 )) >> "$work/spawn"
  awk '/^RssAnon:|^RssFile:/ { s += $2 } END { print s }' "/proc/$pid/status" >> "$work/own"
  awk '/^RssShmem:/ { print $2 }' "/proc/$pid/status" >> "$work/shmem"
  line=$(grep -m1 -o 'vcpus-started wall-us=[0-9]* cpu-us=[0-9]*' "$log_file")
  w=${line#*wall-us=}; echo "${w%% *}" >> "$work/wall"
  echo "${line#*cpu-us=}" >> "$work/cpu"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
done
echo "hyper-vmm start-up, $n runs on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), medians:"
echo "  spawn -> first KVM_RUN (seen from outside, incl. exec): $(median < "$work/spawn") us"
echo "  main() -> first KVM_RUN wall: $(median < "$work/wall") us; CPU (user+sys since exec): $(median < "$work/cpu") us"
echo "  VMM's own memory then (RssAnon+RssFile): $(median < "$work/own") kB; guest RAM touched (RssShmem): $(median < "$work/shmem") kB"

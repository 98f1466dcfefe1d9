#!/usr/bin/env bash
# hyper-vmm restored from a snapshot against a cold start of the same VM, on this machine
# (no guest boot needed): spawn -> first KVM_RUN as the VMM logs it (wall time from
# main(), CPU time since exec), and the snapshot's size. The snapshot is of our guest
# kernel and initramfs loaded and running for 2 s (under nested KVM that is early boot:
# the kernel's and initramfs's pages are all there, the guest has touched few others).
# usage: vmm/bench/restore.sh [N]   (default 20 runs of each; prints medians)
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
pids=()
trap 'for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# config NAME [SNAPSHOT_JSON]: a VM config with vsock, rng and a control socket.
config() {
  local snapshot=""
  [ -n "${2:-}" ] && snapshot=", \"snapshot\": $2"
  cat > "$work/$1.json" <<JSON
{"kernel": "$kernel", "initrd": "$initrd", "memory_mib": 256, "serial": "none",
 "vsock": {"uds": "$work/$1.vsock", "cid": 3}, "rng": true,
 "api_socket": "$work/$1.sock"$snapshot}
JSON
  echo "$work/$1.json"
}
# ask SOCKET REQUEST: one control request; prints the reply line.
ask() {
  python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect(sys.argv[1])
s.sendall((sys.argv[2] + "\n").encode()); print(s.makefile().readline().strip())
PY
}
# start NAME CONFIG: runs a VMM until it logs vcpus-started; records its numbers.
start() {
  local log=$work/$1.log t0 pid
  t0=$(date +%s%N)
  HYPER_VMM_LOG=info "$vmm" --config "$2" > "$log" 2>&1 &
  pid=$!; pids+=("$pid")
  until grep -q 'vcpus-started' "$log"; do
    kill -0 "$pid" 2>/dev/null || die "hyper-vmm exited early: $(tail -3 "$log")"
    [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 10000 ] || die "no vcpus-started line within 10 s"
    sleep 0.001
  done
  local line; line=$(grep -m1 -o 'vcpus-started wall-us=[0-9]* cpu-us=[0-9]*' "$log")
  w=${line#*wall-us=}; echo "${w%% *}" >> "$work/$3.wall"
  echo "${line#*cpu-us=}" >> "$work/$3.cpu"
  LAST_PID=$pid
}
stop() { kill -TERM "$1"; wait "$1" 2>/dev/null || true; }

# The template: booted, running 2 s, saved.
files="{\"state\": \"$work/state.json\", \"memory\": \"$work/memory\"}"
start template "$(config template "{\"save_to\": $files}")" template
sleep 2
reply=$(ask "$work/template.sock" snapshot)
[ "$reply" = '{"ok":true}' ] || die "snapshot: $reply"
stop "$LAST_PID"
restore_cfg=$(config restored "{\"restore_from\": $files}")
cold_cfg=$(config cold)
# Alternated, so drift hits both alike.
for _ in $(seq "$n"); do
  start cold "$cold_cfg" cold; stop "$LAST_PID"
  start restored "$restore_cfg" restored; stop "$LAST_PID"
done
mem_kb=$(( $(stat -c %s "$work/memory") / 1024 ))
used_kb=$(( $(stat -c %b "$work/memory") * $(stat -c %B "$work/memory") / 1024 ))
echo "hyper-vmm cold start vs restore, $n runs each on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), medians:"
echo "  cold (load kernel + initramfs): main() -> first KVM_RUN $(median < "$work/cold.wall") us wall, $(median < "$work/cold.cpu") us CPU since exec"
echo "  restored from the snapshot:     main() -> first KVM_RUN $(median < "$work/restored.wall") us wall, $(median < "$work/restored.cpu") us CPU since exec"
echo "  snapshot: memory file $mem_kb kB, of which $used_kb kB on disk (sparse); state file $(( $(stat -c %s "$work/state.json") / 1024 )) kB"

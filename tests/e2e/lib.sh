# Helpers for the end-to-end tests; they run inside the test host (see tests/harness/).
# A test is a bash script tests/e2e/<name>.sh that sources this file (". "$TH_LIB"") and
# exits 0 to pass. Header lines read by tests/harness/run.sh:
#   # timeout: SECONDS      per-test limit inside the test host (TCG-slow: be generous)
#   # needs: BIN...         our binaries the test needs built and copied (e.g. hyper-vmm)
#   # expect: timeout|leak  harness self-tests only: passing means the watchdog stopped it,
#                           or the leak check caught what it left running
# Environment from the runner: TH_TEST (name), TH_ART (artefact dir, brought back to the
# host), TH_TIMEOUT. Inner VMs are started with vm_start_qemu / vm_start_hyper; their
# consoles go to $TH_ART/<vm>.console; every VM still running when the test exits is
# killed by PID (the EXIT trap), and the runner fails any test that leaves processes.
# shellcheck shell=bash disable=SC2034  # variables here are for the tests that source it
set -euo pipefail
TH_TEST=${TH_TEST:-$(basename "$0" .sh)}
TH_ART=${TH_ART:-/tmp/art/$TH_TEST}
mkdir -p "$TH_ART"
GUEST_KERNEL=${GUEST_KERNEL:-/guest/vmlinux}
GUEST_INITRD=${GUEST_INITRD:-/guest/initramfs.cpio.gz}
BROKEN_INITRD=/guest/broken-initramfs.cpio.gz
READY_MARKER=HYPER-AGENT-READY
# hyper-vmm's default guest command line; the i8042/8250 options save ~0.4 s of probing.
GUEST_CMDLINE=${GUEST_CMDLINE:-console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1}

# HYPER_CONTAINERD=DIR (run.sh --env): the containerd, ctr and runc shim in DIR instead of
# the test host's Debian 12 ones, e.g. containerd 1.7 (scripts/containerd-1.7.sh, carried
# in with run.sh --add; tests/e2e/containerd-1.7.list).
if [ -n "${HYPER_CONTAINERD:-}" ]; then
  [ -x "$HYPER_CONTAINERD/containerd" ] || { echo "HYPER_CONTAINERD=$HYPER_CONTAINERD has no containerd" >&2; exit 1; }
  export PATH=$HYPER_CONTAINERD:$PATH
fi

declare -A VM_PID=() VM_T0=() VM_KIND=()
# hyper-vmm's hybrid-vsock sockets (host side: connect, send "CONNECT <port>\n").
TH_VSOCK_DIR=/tmp/vsock-$TH_TEST
mkdir -p "$TH_VSOCK_DIR"
VMS=()
WAIT_MS=0

# A sleep that forks nothing (a fork costs milliseconds under TCG).
exec {_th_sleep_fd}<> <(:)
th_sleep() { read -r -t "$1" -u "$_th_sleep_fd" _ || true; }
now_ms() { local u; read -r u _ < /proc/uptime; echo $(( ${u%.*} * 1000 + 10#${u#*.} * 10 )); }
log() { echo "[$TH_TEST $(awk '{ print $1 }' /proc/uptime)] $*"; }

# console_tail VM [LINES]: prints the end of VM's console (and of its VMM's own log).
console_tail() {
  local vm=$1 n=${2:-40} f
  for f in "$TH_ART/$vm.console" "$TH_ART/$vm.vmm.log"; do
    [ -s "$f" ] || continue
    echo "----- last $n lines of $f -----"
    tail -n "$n" "$f" | tr -d '\r'
    echo "----- end of $f -----"
  done
}

# fail MSG: the test fails with MSG; every VM's console tail is attached.
fail() {
  local vm
  echo "FAIL: $TH_TEST: $*"
  for vm in "${VMS[@]}"; do console_tail "$vm"; done
  exit 1
}

# skip MSG: the test cannot run here; it says why, and counts as failed (never a silent pass).
skip() { echo "SKIP: $TH_TEST: $*"; exit 77; }

need_bin() {
  local b
  for b in "$@"; do
    command -v "$b" >/dev/null || fail "$b is not in the test host (run.sh builds it when a test's header says '# needs: $b'; see the build log above)"
  done
}

_vm_register() {
  VMS+=("$1"); VM_PID[$1]=$2; VM_T0[$1]=$3; VM_KIND[$1]=$4
  echo "$2" > "$TH_ART/$1.pid"
  log "started $4 VM '$1' (pid $2); console: $TH_ART/$1.console"
}

# vm_start_qemu VM [--kernel P] [--initrd P] [--cmdline S] [--vcpus N] [--memory-mib M] [--vsock CID]
# QEMU microvm under the test host's KVM, booting the ELF vmlinux (PVH).
vm_start_qemu() {
  local vm=$1; shift
  local kernel=$GUEST_KERNEL initrd=$GUEST_INITRD cmdline=$GUEST_CMDLINE vcpus=1 mem=256 extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --kernel) kernel=$2 ;; --initrd) initrd=$2 ;; --cmdline) cmdline=$2 ;;
      --vcpus) vcpus=$2 ;; --memory-mib) mem=$2 ;;
      --vsock) modprobe vhost_vsock || fail "modprobe vhost_vsock failed"
               extra+=(-device "vhost-vsock-device,guest-cid=$2") ;;
      *) fail "vm_start_qemu: unknown option $1" ;;
    esac
    shift 2
  done
  : > "$TH_ART/$vm.console"
  local t0; t0=$(now_ms)
  qemu-system-x86_64 -M microvm -accel kvm -cpu host -smp "$vcpus" -m "$mem" \
    -nodefaults -no-user-config -display none -monitor none -no-reboot \
    -serial "file:$TH_ART/$vm.console" -kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
    "${extra[@]}" > "$TH_ART/$vm.vmm.log" 2>&1 < /dev/null &
  _vm_register "$vm" $! "$t0" qemu
}

# vm_start_hyper VM [--kernel P] [--initrd P] [--cmdline S] [--vcpus N] [--memory-mib M] [--vsock CID] [--api-socket P]
#                   [--fs SPEC] [--config FILE.json] [--rng]
vm_start_hyper() {
  local vm=$1; shift
  local kernel=$GUEST_KERNEL initrd=$GUEST_INITRD args=(--serial "$TH_ART/$vm.console")
  while [ $# -gt 0 ]; do
    case "$1" in
      --kernel) kernel=$2 ;; --initrd) initrd=$2 ;;
      --cmdline|--vcpus|--memory-mib|--api-socket|--fs|--config) args+=("$1" "$2") ;;
      --vsock) args+=(--vsock-uds "$TH_VSOCK_DIR/$vm.vsock" --vsock-cid "$2") ;;
      --rng) args+=(--rng); shift; continue ;;
      *) fail "vm_start_hyper: unknown option $1" ;;
    esac
    shift 2
  done
  need_bin hyper-vmm
  : > "$TH_ART/$vm.console"
  local t0; t0=$(now_ms)
  hyper-vmm --kernel "$kernel" --initrd "$initrd" "${args[@]}" > "$TH_ART/$vm.vmm.log" 2>&1 < /dev/null &
  _vm_register "$vm" $! "$t0" hyper-vmm
}

vm_running() { kill -0 "${VM_PID[$1]}" 2>/dev/null; }

# wait_console VM PATTERN TIMEOUT_S: waits until VM's console matches PATTERN (grep -E).
# Returns 0 and sets WAIT_MS (VMM spawn -> match, ~50 ms resolution); returns 1 and sets
# WAIT_ERR if the VM exits first or the time runs out.
WAIT_ERR=""
wait_console() {
  local vm=$1 pat=$2 limit=$(( $3 * 1000 )) f=$TH_ART/$1.console now
  while :; do
    now=$(now_ms)
    if grep -qE "$pat" "$f" 2>/dev/null; then
      WAIT_MS=$(( now - VM_T0[$vm] )); return 0
    fi
    if ! vm_running "$vm"; then
      local rc=0; wait "${VM_PID[$vm]}" 2>/dev/null || rc=$?
      WAIT_ERR="VM '$vm' (${VM_KIND[$vm]}) exited with status $rc after $(( now - VM_T0[$vm] )) ms without printing /$pat/"
      return 1
    fi
    if (( now - VM_T0[$vm] > limit )); then
      WAIT_ERR="timed out after $(( limit / 1000 )) s waiting for /$pat/ on the console of VM '$vm' (${VM_KIND[$vm]})"
      return 1
    fi
    th_sleep 0.05
  done
}

# expect_console VM PATTERN TIMEOUT_S: wait_console, or fail the test with the console attached.
expect_console() { wait_console "$@" || fail "$WAIT_ERR"; }

# vm_wait_exit VM TIMEOUT_S: waits for the VMM to exit on its own; sets VM_RC.
vm_wait_exit() {
  local vm=$1 limit=$(( $2 * 1000 ))
  while vm_running "$vm"; do
    (( $(now_ms) - VM_T0[$vm] > limit )) && fail "VM '$vm' did not exit within $2 s"
    th_sleep 0.05
  done
  VM_RC=0; wait "${VM_PID[$vm]}" 2>/dev/null || VM_RC=$?
  WAIT_MS=$(( $(now_ms) - VM_T0[$vm] ))
}

# vm_stop VM: stops the VMM by PID (TERM, then KILL after 5 s) and reaps it.
vm_stop() {
  local vm=$1 pid=${VM_PID[$1]} i
  if vm_running "$vm"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do vm_running "$vm" || break; th_sleep 0.05; done
    vm_running "$vm" && { log "VM '$vm' ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
  fi
  wait "$pid" 2>/dev/null || true
}

# ---- containerd (tests that say "# needs: containerd")
CTD=/tmp/ctd
CTD_PID=""
# ctd_start: containerd 1.6 with everything under $CTD, and a busybox rootfs in
# $CTD/rootfs for `ctr run --rootfs`. Waits until it answers (60 s). CRI is off unless
# CTD_CRI=1 (needs the @cni group): then CNI is a host-only bridge (hyperlab0, 10.88/16)
# and the runtime classes are runc and hyper (config $CTD-hyper.toml).
ctd_start() {
  mkdir -p $CTD/root $CTD/state $CTD/rootfs/{bin,proc,dev,sys,etc,tmp}
  local cri='"io.containerd.grpc.v1.cri", '
  [ "${CTD_CRI:-0}" = 1 ] && cri=""
  cat > $CTD/config.toml <<EOT
version = 2
root = "$CTD/root"
state = "$CTD/state"
disabled_plugins = [${cri}"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.btrfs"]
[grpc]
  address = "$CTD/containerd.sock"
[ttrpc]
  address = "$CTD/containerd.sock.ttrpc"
[debug]
  level = "${CTD_LOG_LEVEL:-info}"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTD/opt"
EOT
  if [ "${CTD_CRI:-0}" = 1 ]; then
    mkdir -p $CTD/cni/net.d
    cat > $CTD/cni/net.d/10-hyperlab.conflist <<EOT
{"cniVersion":"1.0.0","name":"hyperlab","plugins":[
 {"type":"bridge","bridge":"hyperlab0","isGateway":true,"isDefaultGateway":false,"ipMasq":false,"hairpinMode":true,
  "ipam":{"type":"host-local","dataDir":"$CTD/cni/ipam","ranges":[[{"subnet":"10.88.0.0/16"}]]}},
 {"type":"portmap","capabilities":{"portMappings":true}}]}
EOT
    cat >> $CTD/config.toml <<EOT
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.6"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CTD/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CTD/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hyper]
      runtime_type = "io.containerd.hyper.v1"
      pod_annotations = ["io.hyper.*"]
      container_annotations = ["io.hyper.*"]
      privileged_without_host_devices = true
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hyper.options]
        ConfigPath = "$CTD-hyper.toml"
EOT
    printf 'runtime-endpoint: unix://%s/containerd.sock\nimage-endpoint: unix://%s/containerd.sock\ntimeout: 60\n' $CTD $CTD > $CTD/crictl.yaml
  fi
  cp /usr/bin/busybox $CTD/rootfs/bin/busybox
  ln -sf busybox $CTD/rootfs/bin/sh
  local t0; t0=$(now_ms)
  containerd --config $CTD/config.toml > "$TH_ART/containerd.log" 2>&1 < /dev/null &
  CTD_PID=$!
  until ctr version > /dev/null 2>&1; do
    kill -0 "$CTD_PID" 2>/dev/null || { tail -20 "$TH_ART/containerd.log"; fail "containerd exited"; }
    (( $(now_ms) - t0 < 60000 )) || { tail -20 "$TH_ART/containerd.log"; fail "containerd did not answer within 60 s"; }
    th_sleep 0.2
  done
  log "containerd $(containerd --version | awk '{ print $3 }') (pid $CTD_PID) answers after $(( $(now_ms) - t0 )) ms; log: $TH_ART/containerd.log"
}
ctr() { command ctr --address $CTD/containerd.sock "$@"; }
crictl() { command crictl --config $CTD/crictl.yaml "$@"; }
# hyper_config: the shim's config for the tests, in $CTD-hyper.toml: the test host's guest
# kernel and image, timeouts scaled for TCG, the guest console kept in
# /tmp/hyper/<pod>/console.log unless HYPER_DEBUG_CONSOLE=false (quiet boots, for benchmarks);
# with HYPER_TEMPLATE=true pods restore from VM templates (any test then runs restored pods).
hyper_config() {
  mkdir -p /tmp/hyper
  cat > $CTD-hyper.toml <<EOT
[hypervisor]
path = "/usr/local/bin/hyper-vmm"
kernel = "$GUEST_KERNEL"
image = "$GUEST_INITRD"
debug_console = ${HYPER_DEBUG_CONSOLE:-true}
boot_timeout_ms = 120000
[agent]
request_timeout_ms = 60000
create_container_timeout_ms = 120000
debug_console = ${HYPER_AGENT_DEBUG_CONSOLE:-false}
[runtime]
log_level = "debug"
state_dir = "/tmp/hyper"
[factory]
template = ${HYPER_TEMPLATE:-false}
EOT
}
# hyper_state_left: what pods left in /tmp/hyper, the shim's state dir here: the VM
# templates' cache (.templates) stays on purpose, and *.toml are the tests' configs.
hyper_state_left() { ls -A /tmp/hyper 2>/dev/null | grep -v -e '^\.templates$' -e '\.toml$' || true; }
# tctr SECONDS ARGS...: ctr with a time limit (timeout cannot run the ctr function).
tctr() { timeout "$1" "$(type -P ctr)" --address $CTD/containerd.sock "${@:2}"; }
# pids_matching REGEX: processes whose command line matches (the test host has no pgrep).
pids_matching() {
  local p
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -qE -- "$1" && echo "${p#/proc/}"
  done
  return 0
}
# outer_pids PID...: those whose parent is not the same program (a jailed hyper-vmm is two
# processes: the one the shim started and, forked in the jail, the VMM itself).
outer_pids() {
  local p pp
  for p in "$@"; do
    pp=$(awk '/^PPid:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || continue
    [ "$(cat "/proc/$pp/comm" 2>/dev/null)" = "$(cat "/proc/$p/comm" 2>/dev/null)" ] || echo "$p"
  done
}
task_status() { ctr tasks ls 2>/dev/null | awk -v id="$1" '$1 == id { print $3 }'; }
# wait_status ID STATUS SECONDS: waits for a task's status, or fails the test.
wait_status() {
  local t0; t0=$(now_ms)
  until [ "$(task_status "$1")" = "$2" ]; do
    (( $(now_ms) - t0 < $3 * 1000 )) || fail "task $1 is '$(task_status "$1")', not $2, after $3 s"
    th_sleep 0.2
  done
}
# keep_hyper_logs: the shim's per-pod logs (VMM log, guest console) into $TH_ART.
keep_hyper_logs() {
  find /tmp/hyper -maxdepth 2 -name '*.log' -exec sh -c 'cp "$1" "$2/$(basename "$(dirname "$1")")-$(basename "$1")"' _ {} "$TH_ART" \; 2>/dev/null || true
}
# ctr_delete ID: kills a running task, waits for it to stop and removes task and container,
# failing the test on any error.
ctr_delete() {
  ctr tasks kill -s SIGKILL "$1" || fail "ctr task kill $1 failed"
  wait_status "$1" STOPPED 60
  ctr tasks rm "$1" > /dev/null || fail "ctr task rm $1 failed"
  ctr containers rm "$1" || fail "ctr container rm $1 failed"
}
# ctr_remove ID...: kills and removes containers, ignoring errors (for EXIT traps).
ctr_remove() {
  local c
  for c in "$@"; do ctr tasks kill -s SIGKILL "$c" > /dev/null 2>&1 || true; done
  th_sleep 1
  for c in "$@"; do
    ctr tasks rm -f "$c" > /dev/null 2>&1 || true
    ctr containers rm "$c" > /dev/null 2>&1 || true
  done
}
# The busybox image on the data disk, for `ctr images import` (payload group @containerd).
BUSYBOX_OCI=/usr/share/hyper-tests/busybox-oci.tar
BUSYBOX_REF=docker.io/library/busybox:1.35
# ctd_import_busybox: imports it as $BUSYBOX_REF (containerd unpacks it with overlayfs).
ctd_import_busybox() {
  ctr images import --base-name docker.io/library/busybox "$BUSYBOX_OCI" > /dev/null \
    || fail "ctr images import $BUSYBOX_OCI failed"
}
# The pod sandbox image on the data disk (payload group @cri), CRI's sandbox_image.
PAUSE_OCI=/usr/share/hyper-tests/pause-oci.tar
# cri_start: containerd with CRI and the host-only CNI bridge, the kernel modules CNI's
# bridge plugin and the shim's pod network (tap + tc redirect) need, and busybox + pause
# imported where CRI sees images (namespace k8s.io).
cri_start() {
  local m
  [ -x /usr/lib/cni/bridge ] || fail "no CNI bridge plugin in /usr/lib/cni"
  for m in bridge br_netfilter veth tun sch_ingress cls_u32 act_mirred; do
    modprobe "$m" || fail "modprobe $m failed"
  done
  # CRI copies the host's resolv.conf into pods without a DNS config; the test host has none.
  if [ ! -e /etc/resolv.conf ]; then
    echo "nameserver 10.88.0.1" > /etc/resolv.conf
    CRI_MADE_RESOLV=1
  fi
  CTD_CRI=1 ctd_start
  ctr -n k8s.io images import --base-name docker.io/library/busybox "$BUSYBOX_OCI" > /dev/null \
    || fail "ctr -n k8s.io images import $BUSYBOX_OCI failed"
  ctr -n k8s.io images import --base-name registry.k8s.io/pause "$PAUSE_OCI" > /dev/null \
    || fail "ctr -n k8s.io images import $PAUSE_OCI failed"
}
# http_get HOST PORT PATH: the body of an HTTP/1.0 GET, through bash's /dev/tcp, within
# 20 s (the test host's static busybox wget dies of SIGSEGV on connect).
http_get() {
  timeout 20 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "GET %s HTTP/1.0\r\n\r\n" "$3" >&3 &&
    awk "body; /^\r?\$/ { body = 1 }" <&3' _ "$@"
}
# cri_registry_start: the registry of critest's images (payload group @critest) on
# 127.0.0.1:5000, and containerd's mirrors of registry.k8s.io and gcr.io pointing at it.
# Call before cri_start. The registry is stopped by PID at exit (REG_PID).
REG_PID=""
cri_registry_start() {
  local h t0
  mkdir -p $CTD/registry
  tar -C $CTD/registry -xf /usr/share/hyper-tests/critest-registry.tar
  printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s/registry}}\nhttp: {addr: 127.0.0.1:5000}\n' $CTD > $CTD/registry.yml
  docker-registry serve $CTD/registry.yml > "$TH_ART/registry.log" 2>&1 &
  REG_PID=$!
  for h in registry.k8s.io gcr.io; do
    mkdir -p "$CTD/certs.d/$h"
    printf 'server = "https://%s"\n[host."http://127.0.0.1:5000"]\n  capabilities = ["pull", "resolve"]\n' "$h" > "$CTD/certs.d/$h/hosts.toml"
  done
  t0=$(now_ms)
  until http_get 127.0.0.1 5000 /v2/ > /dev/null 2>&1; do
    (( $(now_ms) - t0 < 30000 )) || fail "the registry does not answer on 127.0.0.1:5000: $(cat "$TH_ART/registry.log")"
    th_sleep 0.2
  done
}
cri_registry_stop() {
  [ -n "$REG_PID" ] || return 0
  kill "$REG_PID" 2>/dev/null || true
  wait "$REG_PID" 2>/dev/null || true
  REG_PID=""
}
# cri_remove_pods: stops and removes every CRI pod (for EXIT traps; errors ignored).
cri_remove_pods() {
  local p
  for p in $(crictl pods -q 2>/dev/null); do
    crictl stopp "$p" > /dev/null 2>&1 || true
    crictl rmp -f "$p" > /dev/null 2>&1 || true
  done
}
# ctd_stop: TERM, then KILL after 10 s; by PID. (Shims outlive containerd by design: a
# test that starts containers removes them first, e.g. with `ctr run --rm`.)
ctd_stop() {
  [ -n "$CTD_PID" ] || return 0
  kill -TERM "$CTD_PID" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do kill -0 "$CTD_PID" 2>/dev/null || break; th_sleep 0.1; done
  kill -KILL "$CTD_PID" 2>/dev/null || true
  wait "$CTD_PID" 2>/dev/null || true
  CTD_PID=""
}

# th_warm_memory MIB: writes MIB of fresh memory in the test host and frees it. Before a
# boot, this removed the 0.6-0.9 s stall that every VM after the first in one test-host
# boot showed in ../shared/testing.md (cause unproven). For benchmarks.
th_warm_memory() { dd if=/dev/zero of=/dev/null bs="${1}M" count=1 2>/dev/null; }

# vm_peak_rss_kb VM: the VMM's peak RSS so far (VmHWM), in kB.
vm_peak_rss_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/${VM_PID[$1]}/status" 2>/dev/null || echo 0; }

_th_cleanup() {
  local vm
  for vm in "${VMS[@]}"; do vm_running "$vm" && vm_stop "$vm"; done
  ctd_stop
  [ -z "${CRI_MADE_RESOLV:-}" ] || rm -f /etc/resolv.conf
  rm -rf "$TH_VSOCK_DIR"
  return 0
}
trap _th_cleanup EXIT
trap 'echo "$TH_TEST: terminated"; exit 143' TERM INT

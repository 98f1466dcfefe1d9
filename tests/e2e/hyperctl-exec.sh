#!/bin/bash
# `hyperctl exec --sandbox POD` opens the agent's debug console (vsock 1026) of a pod
# started with agent.debug_console = true: a command, and an interactive shell on a real
# terminal, run in the guest itself (the agent is PID 1 there and the container's process
# is visible), and a pod started without it is refused with what to do.
# timeout: 400
# needs: containerd hyper-vmm containerd-shim-hyper-v1 hyperctl
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1 hyperctl script
trap 'keep_hyper_logs; ctr_remove on off; _th_cleanup' EXIT
HYPER_AGENT_DEBUG_CONSOLE=true hyper_config
cp $CTD-hyper.toml $CTD-console.toml
hyper_config
ctd_start
ctd_import_busybox
hrun() { tctr 300 run -d --runtime io.containerd.hyper.v1 --runtime-config-path "$1" "$BUSYBOX_REF" "$2" sleep 100000 > /dev/null; }
hctl() { timeout 60 hyperctl --config $CTD-console.toml "$@"; }

hrun $CTD-console.toml on || fail "ctr run -d (console on) failed"
wait_status on RUNNING 120
out=$(hctl exec --sandbox on -- sh -c 'echo pid1=$(cat /proc/1/comm); uname -r; tty; ps' 2>&1) \
  || fail "hyperctl exec CMD failed: $out"
echo "$out"
grep -q 'pid1=init' <<<"$out" || fail "the command did not run beside the agent (guest PID 1): $out"
grep -q -- '-hyper' <<<"$out" || fail "uname -r is not the guest kernel's: $out"
grep -q '^/dev/pts/[0-9]' <<<"$out" || fail "the command has no terminal: $out"
grep -q 'sleep 100000' <<<"$out" || fail "the container's process is not visible: not outside the container? $out"
log "hyperctl exec CMD ran in the guest, on a pty, outside the container"

# An interactive shell, on a terminal of our own (script(1)), typed into.
out=$(printf 'echo typed-$((6 * 7))\nexit\n' | timeout 60 script -qec "hyperctl --config $CTD-console.toml exec --sandbox on" /dev/null 2>&1 | tr -d '\r') \
  || fail "hyperctl exec (a shell) failed: $out"
echo "$out"
grep -q '^typed-42' <<<"$out" || fail "the shell did not run what was typed: $out"
log "an interactive shell in the guest ran what was typed and ended with exit"

hrun $CTD-hyper.toml off || fail "ctr run -d (console off) failed"
wait_status off RUNNING 120
rc=0; out=$(hctl exec --sandbox off -- true 2>&1) || rc=$?
[ $rc -ne 0 ] || fail "hyperctl exec into a pod without the debug console succeeded"
grep -q 'runs without the debug console: set `debug_console = true` under \[agent\]' <<<"$out" \
  || fail "the refusal does not say what to do: $out"
log "a pod without the debug console is refused: $out"

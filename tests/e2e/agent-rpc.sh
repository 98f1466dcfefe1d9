#!/bin/bash
# hyper-vmm's hybrid vsock reaches the agent's ttrpc server: after HYPER-AGENT-READY,
# `hyperctl agent health` answers SERVING and `version` reports the guest kernel.
# timeout: 240
# needs: hyper-vmm hyperctl
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin hyper-vmm hyperctl
vm_start_hyper g1 --vsock 3
expect_console g1 "$READY_MARKER" 90
log "spawn -> $READY_MARKER in $WAIT_MS ms"
uds=$TH_VSOCK_DIR/g1.vsock
[ -S "$uds" ] || fail "hyper-vmm made no vsock socket at $uds"
t0=$(now_ms)
health=$(hyperctl agent --vsock-uds "$uds" --wait 30 health 2>&1) || fail "hyperctl health failed: $health"
log "health: $health ($(( $(now_ms) - t0 )) ms, incl. the CONNECT handshake)"
[ "$health" = SERVING ] || fail "agent health is '$health', not SERVING"
t0=$(now_ms)
version=$(hyperctl agent --vsock-uds "$uds" --wait 30 version 2>&1) || fail "hyperctl version failed: $version"
log "version: $version ($(( $(now_ms) - t0 )) ms)"
grep -q "kernel 6\.1\." <<<"$version" || fail "the agent did not report a 6.1 guest kernel: $version"
log "PASS-INFO agent-rpc: health + version over hybrid vsock"
vm_stop g1

#!/bin/bash
# `hyperctl run` without containerd: it drives the shim's pod layer on an OCI bundle (a
# busybox rootfs, `runc spec`), relays stdin (-i), stdout and stderr through FIFOs, exits
# with the process's status, and leaves no VMM or state behind.
# timeout: 300
# needs: hyper-vmm hyperctl
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin hyper-vmm hyperctl runc busybox
hyper_config
B=/tmp/hc-bundle
trap '_th_cleanup; rm -rf "$B"' EXIT
mkdir -p $B/rootfs/{bin,proc,dev,sys,tmp}
cp "$(type -P busybox)" $B/rootfs/bin/busybox
for t in sh cat wc head echo; do ln -s busybox $B/rootfs/bin/$t; done
(cd $B && runc spec)
# Not a terminal, and a command of our own instead of `sh`.
sed -i 's/"terminal": true/"terminal": false/; s|^\([ \t]*\)"sh"$|\1"sh", "-c", "echo out-line; echo err-line >\&2; cat \| wc -c; exit 3"|' $B/config.json
grep -q 'exit 3"' $B/config.json || fail "could not set the bundle's command: $(grep -A3 '"args"' $B/config.json)"
rc=0
out=$(seq 1 20000 | timeout 200 hyperctl --config $CTD-hyper.toml run -i --id hc $B 2> $TH_ART/stderr) || rc=$?
err=$(cat $TH_ART/stderr)
[ $rc -eq 3 ] || fail "hyperctl run exited $rc, expected 3; stdout: $out; stderr: $err"
grep -q '^out-line$' <<<"$out" || fail "stdout missing: $out"
grep -q "^$(seq 1 20000 | wc -c)\$" <<<"$out" || fail "stdin did not arrive whole: $out"
grep -q '^err-line$' <<<"$err" || fail "stderr missing: $err"
left=$(pids_matching '^(/usr/local/bin/)?hyper-vmm ')
[ -z "$left" ] || fail "hyper-vmm left running: $left"
[ ! -e /tmp/hyper/hc ] || fail "state left: $(ls -A /tmp/hyper/hc)"
log "hyperctl run: exit 3, stdout, stderr and $(seq 1 20000 | wc -c) stdin bytes through the pod layer; nothing left"

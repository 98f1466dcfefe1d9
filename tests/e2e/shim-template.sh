#!/bin/bash
# VM templates (`[factory] template = true`): the first pod builds the template, later
# pods restore from it, each with its own RNG output, hostname and the host's clock; a
# template whose kernel changed is not used, a new one is built and the stale one
# removed; a template that cannot be restored is discarded and the pod boots instead.
# timeout: 420
# needs: containerd hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1
# A kernel of our own, so the test can make the templates stale by touching it.
mkdir -p $CTD && cp "$GUEST_KERNEL" $CTD/vmlinux
GUEST_KERNEL=$CTD/vmlinux HYPER_TEMPLATE=true hyper_config
ctd_start
templates=/tmp/hyper/.templates
# new_keys: the templates this test built (other tests' stay in the cache).
keys() { ls "$templates" 2>/dev/null | grep -v -e '\.lock$' -e '\.build-' || true; }
# ("/", never a key, keeps the pattern file from being empty: busybox grep -vf of an
# empty file drops every line.)
{ echo /; keys; } > $CTD/templates-before
new_keys() { keys | grep -vxF -f $CTD/templates-before || true; }
# run ID: a pod named host-ID that prints 16 random bytes, its hostname and its clock;
# sets OUT. ctr 1.6 has no --hostname, and with --config takes nothing but the spec: the
# default spec from `ctr oci spec` gets the hostname, the command, the rootfs and the
# cgroup ctr gives a container (/default itself has children once other tests ran).
cat > $CTD/rootfs/ident.sh <<'EOT'
b=/bin/busybox
$b head -c 16 /dev/urandom | $b od -An -tx1 | $b tr -d ' \n'; echo
$b hostname
$b date +%s
EOT
run() {
  local rc=0 t0; t0=$(now_ms)
  ctr oci spec | sed -e "1s|^{|{ \"hostname\": \"host-$1\",|" \
    -e 's|^    "process": {$|    "process": { "args": ["/bin/sh", "/ident.sh"], "env": ["PATH=/bin"],|' \
    -e "s|\"path\": \"rootfs\"|\"path\": \"$CTD/rootfs\"|" \
    -e "s|\"cgroupsPath\": \"/default\"|\"cgroupsPath\": \"/default/$1\"|" > $CTD/spec-$1.json
  printf -v HOST_BEFORE '%(%s)T' -1
  OUT=$(ctr run --rm --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml \
          --config $CTD/spec-$1.json "$1" 2>&1) || rc=$?
  if [ $rc -ne 0 ]; then
    grep -iE 'hyper|shim' "$TH_ART/containerd.log" | tail -30 || true
    fail "ctr run $1 failed (rc $rc): $OUT"
  fi
  printf -v HOST_AFTER '%(%s)T' -1
  log "$1 ran in $(( $(now_ms) - t0 )) ms: $(tr '\n' ' ' <<<"$OUT")"
}
# check_identity ID: the pod's hostname is its own and its clock the host's.
check_identity() {
  local host clock
  host=$(sed -n 2p <<<"$OUT" | tr -d '\r'); clock=$(sed -n 3p <<<"$OUT" | tr -d '\r')
  [ "$host" = "host-$1" ] || fail "$1: hostname is '$host', not host-$1"
  (( clock >= HOST_BEFORE && clock <= HOST_AFTER )) ||
    fail "$1: guest clock $clock is not the host's ($HOST_BEFORE..$HOST_AFTER): the template's time?"
}
restored_pods() { grep -c 'agent ready.*restored=true' "$TH_ART/containerd.log" || true; }

run t1; check_identity t1; r1=$(head -1 <<<"$OUT")
grep -q 'VM template built' "$TH_ART/containerd.log" || fail "the first pod built no template"
key=$(new_keys)
[ -n "$key" ] && [ -s "$templates/$key/state.json" ] || fail "no template in $templates: $(ls -la "$templates" 2>&1)"
log "template $key: $(grep -m1 -o 'VM template built.*' "$TH_ART/containerd.log"); $(du -k "$templates/$key/memory" | cut -f1) kB of memory on disk"
run t2; check_identity t2; r2=$(head -1 <<<"$OUT")
[ "$(restored_pods)" -ge 2 ] || fail "$(restored_pods) pods were restored from the template, not 2"
[ "$(grep -c 'VM template built' "$TH_ART/containerd.log")" -eq 1 ] || fail "the template was built again"
[ ${#r1} -eq 32 ] && [ "$r1" != "$r2" ] || fail "two restored pods read the same random bytes: $r1 / $r2"
log "PASS-INFO shim-template: two restored pods: random $r1 / $r2, own hostnames, the host's clock"

# A changed kernel makes the template stale: the next pod builds one of a new key.
touch $CTD/vmlinux
run t3; check_identity t3
[ "$(grep -c 'VM template built' "$TH_ART/containerd.log")" -eq 2 ] || fail "no new template after the kernel changed"
old_key=$key
key=$(new_keys | grep -vxF "$old_key" || true)
[ -n "$key" ] || fail "no template of a new key: $(ls "$templates")"
[ "$(restored_pods)" -ge 3 ] || fail "t3 was not restored from the new template"
[ ! -e "$templates/$old_key" ] && [ ! -e "$templates/$old_key.lock" ] || fail "the stale template $old_key was kept: $(ls "$templates")"
log "PASS-INFO shim-template: after the kernel changed the next pod built template $key and removed the stale $old_key"

# A template truncated on disk is refused, discarded, and the pod boots.
head -c 100 "$templates/$key/state.json" > "$templates/$key/state.json.new"
mv "$templates/$key/state.json.new" "$templates/$key/state.json"
run t4; check_identity t4
grep -q 'cannot restore the VM template' "$TH_ART/containerd.log" || fail "no warning for the broken template"
[ ! -e "$templates/$key" ] || fail "the broken template was kept"
named=$(grep -m1 -o "hyper-vmm: error: .*$key/state.json: [^\"]*" "$TH_ART/containerd.log" || true)
[ -n "$named" ] || fail "the warning does not say what was wrong with $key/state.json"
log "PASS-INFO shim-template: broken template discarded, the pod booted: $named"

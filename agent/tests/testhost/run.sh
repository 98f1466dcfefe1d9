#!/bin/bash
# Runs hyper-agent's unit and host tests inside the nested test host (tests/harness), where
# cgroup v2 has every controller (memory, pids, cpu, io, hugetlb ...), unlike v1-hybrid build
# machines. It builds the tests statically, packs them with the static agent into one cpio
# (handed to the harness as GUEST_INITRD, which lands in the test host as
# /guest/initramfs.cpio.gz), and runs them from a private copy of the harness, so nothing in
# tests/ is touched.
#
# usage: agent/tests/testhost/run.sh        (root; prints the harness summary; exit 0 = all passed)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
work=$(mktemp -d /tmp/agent-testhost.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$root"
export RUSTFLAGS='-C target-feature=+crt-static'
target=x86_64-unknown-linux-gnu
nice cargo build -q --release --target $target -p hyper-agent
nice cargo test -q --release --target $target -p hyper-agent --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\)".*"fresh".*/\1/p; s/.*"executable":"\([^"]*\)".*/\1/p' | sort -u > "$work/exes"
mkdir "$work/bundle"
cp "target/$target/release/hyper-agent" "$work/bundle/hyper-agent"
while read -r exe; do
  case "$(basename "$exe")" in
    hyper_agent-*) cp "$exe" "$work/bundle/unit" ;;
    host-*) cp "$exe" "$work/bundle/host" ;;
    hostile-*) cp "$exe" "$work/bundle/hostile" ;;
    guest-*) cp "$exe" "$work/bundle/guest" ;;
  esac
done < "$work/exes"
for t in unit host hostile guest; do [ -x "$work/bundle/$t" ] || { echo "no $t test binary" >&2; exit 1; }; done
# A guest image: the agent as /init plus a busybox rootfs under /images, which the agent is
# told (kernel command line: unknown words go to init) to accept as a rootfs root.
g=$work/guest
mkdir -p "$g"/{dev,proc,sys,run,tmp,etc,sbin} "$g/images/busybox"/{bin,proc,sys,dev,tmp,etc,root}
install -m 0755 "target/$target/release/hyper-agent" "$g/init"
ln -s ../init "$g/sbin/init"
printf 'root:x:0:0:root:/:/init\n' > "$g/etc/passwd"
cp /bin/busybox "$g/images/busybox/bin/busybox"
for a in $(/bin/busybox --list); do [ -e "$g/images/busybox/bin/$a" ] || ln -s busybox "$g/images/busybox/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$g/images/busybox/etc/passwd"
(cd "$g" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1) > "$work/bundle/guest-initrd.cpio.gz"
(cd "$work/bundle" && ls | cpio --quiet -o -H newc | gzip -1) > "$work/bundle.cpio.gz"

# A private harness root: the real harness and lib, plus this test.
mkdir -p "$work/root/tests/e2e"
cp -r scripts "$work/root/"
cp -r tests/harness "$work/root/tests/"
cp tests/e2e/lib.sh tests/e2e/default.list "$work/root/tests/e2e/"
cat > "$work/root/tests/e2e/agent-host-tests.sh" <<'TEST'
#!/bin/bash
# hyper-agent's unit and host tests inside the test host (cgroup v2 with controllers), then
# the guest test against the agent as PID 1 of a QEMU guest.
# timeout: 900
# needs: hyper-vmm
. "$TH_LIB"
mkdir -p /tmp/bundle && cd /tmp/bundle && gzip -dc /guest/initramfs.cpio.gz | cpio -i 2>/dev/null
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
  echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || log "cannot enable $c"
done
log "cgroup controllers for children: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
export HYPER_AGENT_BIN=/tmp/bundle/hyper-agent RUST_BACKTRACE=1 HYPER_AGENT_LOG=warn
rc=0
for t in unit host hostile; do
  log "== $t"
  /tmp/bundle/$t --test-threads 1 > "$TH_ART/$t.log" 2>&1 || rc=1
  grep -aE "^test |test result|^skipped|panicked" "$TH_ART/$t.log" | sed 's/\x1b\[[0-9;]*m//g'
done
# The agent as a real guest's PID 1, driven over vsock.
GUEST_INITRD=/tmp/bundle/guest-initrd.cpio.gz vm_start_hyper g1 --vsock 3 --memory-mib 512 \
  --cmdline "$GUEST_CMDLINE HYPER_AGENT_LOG=debug --allow-root /images"
expect_console g1 "$READY_MARKER" 120
log "== guest (agent is PID 1 after $WAIT_MS ms)"
HYPER_AGENT_GUEST=hvsock://$TH_VSOCK_DIR/g1.vsock:1024 HYPER_AGENT_GUEST_ROOTFS=/images/busybox \
  timeout 300 /tmp/bundle/guest --test-threads 1 --nocapture > "$TH_ART/guest.log" 2>&1 || rc=1
grep -aE "^test |test result|^skipped|panicked|^step" "$TH_ART/guest.log"
[ $rc = 0 ] || fail "guest test failed (results/agent-host-tests/guest.log, g1.console)"
vm_wait_exit g1 400
log "the VM exited after Shutdown (rc $VM_RC)"
[ $rc = 0 ] || fail "agent tests failed (logs: results/agent-host-tests/*.log, g1.console)"
log "PASS-INFO agent unit + host tests in the test host, and containers in a real guest"
TEST
chmod +x "$work/root/tests/e2e/agent-host-tests.sh"
kernel=${GUEST_KERNEL:-$(bash guest-kernel-config/build.sh)}
# hyper-vmm runs the guest (its hybrid vsock is what the shim uses too).
# (A plain build: the static RUSTFLAGS above would break its proc-macros.)
export HYPER_VMM=${HYPER_VMM:-$(env -u RUSTFLAGS nice cargo build -q --release -p hyper-vmm >&2 && echo "$root/target/release/hyper-vmm")}
[ -x "$HYPER_VMM" ] || { echo "agent test host: hyper-vmm did not build" >&2; exit 1; }
HYPER_ROOT="$work/root" HYPER_SHARED="$(cd "$root/.." && pwd)/shared" GUEST_KERNEL="$kernel" \
  GUEST_INITRD="$work/bundle.cpio.gz" HARNESS_OUT="${HARNESS_OUT:-$root/target/agent-testhost}" \
  "$work/root/tests/harness/run.sh" agent-host-tests

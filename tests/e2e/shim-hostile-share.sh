#!/bin/bash
# A guest that owns its kernel attacks the host through the pod's share. A privileged
# container mounts the share itself (`mount -t virtiofs hypershare /mnt`, what a
# compromised guest kernel can do) and tries: writing a read-only volume and a read-only
# rootfs, writing, symlinking and renaming at the share's top level, filling it, making
# setuid files and device nodes, and swapping symlinks while the host adds and removes
# containers of the pod in a loop. The host checks a canary tree and the read-only volume
# byte for byte, that nothing changed outside the pod's rw volume, that what the guest
# made cannot be used on the host (nosuid, nodev, 0700 state), and the socket modes. Also:
# a pod id with `../` is refused before it reaches a path.
# timeout: 1500
# needs: containerd hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1 sha256sum
hyper_config
RO=/tmp/hostile-ro RW=/tmp/hostile-rw CANARY=/tmp/hostile-canary
trap 'keep_hyper_logs; ctr_remove victim atk; _th_cleanup; rm -rf "$RO" "$RW" "$CANARY" /tmp/hostile-mark' EXIT
CTD_LOG_LEVEL=debug ctd_start
ctd_import_busybox
POD=/tmp/hyper/hpod
# tree_sum DIR: one hash of every entry's name, mode, owner, size, type, link and content.
tree_sum() { (cd "$1" && find . -exec stat -c '%n %a %u %g %s %F %N' {} + | sort
  find . -type f -exec sha256sum {} + | sort) | sha256sum; }
# mount_opts PATH: the per-mount options of the mount on top at PATH (none: not a mount).
mount_opts() { awk -v p="$1" '$5 == p { o = $6 } END { if (o == "") exit 1; print o }' /proc/self/mountinfo; }

mkdir -p $RO/sub $RW $CANARY/etc
echo read-only > $RO/file; echo nested > $RO/sub/n
for i in $(seq 1 50); do head -c 4096 /dev/urandom > $CANARY/etc/f$i; done
ln -s etc/f1 $CANARY/link
canary_before=$(tree_sum $CANARY); ro_before=$(tree_sum $RO)
touch /tmp/hostile-mark
run() { # run ID [FLAGS...]: a long-running container of pod "hpod"
  local id=$1; shift
  tctr 300 run -d --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml \
    --annotation io.kubernetes.cri.sandbox-id=hpod "$@" "$BUSYBOX_REF" "$id" sleep 100000 \
    > /dev/null || fail "ctr run -d $id failed"
  wait_status "$id" RUNNING 120
}
gexec() { tctr 300 tasks exec --exec-id x "$1" sh -c "$2"; }

# The attacker: privileged (as Kubernetes privileged pods are) with a ro and a rw volume.
run atk --privileged --mount "type=bind,src=$RO,dst=/ro,options=rbind:ro" \
  --mount "type=bind,src=$RW,dst=/rw,options=rbind:rw"
out=$(gexec atk 'mkdir -p /mnt && mount -t virtiofs hypershare /mnt && ls /mnt') \
  || fail "the privileged container could not mount the share: $out"
grep -qx atk <<<"$out" || fail "the share's top level does not list atk: $out"
log "a privileged container runs and has mounted the pod's share itself"

# Every write outside the rw volume must fail; each line says what got through.
out=$(gexec atk '
  v=$(grep -l read-only /mnt/atk/volumes/*/file | head -1); v=${v%/file}
  try() { if eval "$2" 2>/dev/null; then echo "GOT-THROUGH: $1"; fi; }
  try "ro volume write" "echo pwned > $v/file"
  try "ro volume nested write" "echo pwned > $v/sub/n"
  try "ro volume create" "echo x > $v/new"
  try "ro volume chmod" "chmod 777 $v/file"
  try "ro volume unlink" "rm $v/sub/n"
  try "top-level file" "echo x > /mnt/planted"
  try "top-level dir" "mkdir /mnt/evil"
  try "top-level symlink" "ln -s /etc /mnt/evil-link"
  try "container-level symlink" "ln -s /etc/cron.d /mnt/atk/volumes/99"
  try "rename of volumes" "mv /mnt/atk/volumes /mnt/atk/v"
  try "rename of rootfs" "mv /mnt/atk/rootfs /mnt/atk/r"
  try "rmdir of rootfs" "rmdir /mnt/atk/rootfs"
  try "fill the top level" "dd if=/dev/zero of=/mnt/fill bs=1M count=64"
  echo done')
[ "$(tail -1 <<<"$out")" = done ] || fail "the attack script did not run: $out"
! grep GOT-THROUGH <<<"$out" || fail "writes got through to the share: $(grep GOT-THROUGH <<<"$out")"
log "read-only volume and the share's top level: every write refused"

# What the guest may make in its rw volume and rootfs is useless on the host.
out=$(gexec atk 'set -e; cp /bin/busybox /rw/suid; chmod 4755 /rw/suid; mknod /rw/disk b 8 0
  cp /bin/busybox /mnt/atk/rootfs/suid-root; chmod 4755 /mnt/atk/rootfs/suid-root
  mknod /mnt/atk/rootfs/disk b 8 0; echo made') || fail "the guest could not make its files: $out"
for f in $POD/shared/atk/rootfs/disk $POD/mounts/atk/rootfs/disk; do
  ! head -c1 "$f" > /dev/null 2>&1 || fail "the host opened the guest's device node $f"
done
for m in $POD/shared $POD/shared/atk/rootfs $POD/shared/atk/volumes/* $POD/mounts/atk/rootfs; do
  opts=$(mount_opts "$m") || fail "$m is not a mount"
  grep -q nosuid <<<"$opts" && grep -q nodev <<<"$opts" || fail "$m is mounted $opts (want nosuid,nodev)"
done
grep -q '^ro,' <<<"$(mount_opts $POD/shared)" || fail "the guest's view of the share is not read-only"
for p in /tmp/hyper $POD; do
  [ "$(stat -c %a $p)" = 700 ] || fail "$p is mode $(stat -c %a $p), want 700"
done
for f in vm/vmm.sock vm/vsock.sock vm.json vmm.log vmm.pid owner.pid; do
  [ "$(stat -c %a $POD/$f)" = 600 ] || fail "$POD/$f is mode $(stat -c %a $POD/$f), want 600"
done
[ "$(stat -c %a $POD/vm)" = 700 ] || fail "$POD/vm is mode $(stat -c %a $POD/vm), want 700"
log "setuid files and device nodes from the guest: nosuid,nodev on every host view, state 0700, sockets 0600"

# The VMM itself is jailed: its own namespaces, a root holding only the VM's files.
vmm_all=$(pids_matching "^(/usr/local/bin/)?hyper-vmm .*$POD/")
outer=$(outer_pids $vmm_all)
inner=$(for p in $vmm_all; do [ "$p" = "$outer" ] || echo "$p"; done | head -1)
[ -n "$inner" ] || fail "no jailed VMM process under $outer"
for ns in mnt pid net ipc uts; do
  [ "$(readlink /proc/$inner/ns/$ns)" != "$(readlink /proc/self/ns/$ns)" ] || fail "the VMM shares the host's $ns namespace"
done
# Of the pod's own files it sees only the share and its sockets.
for host_path in /etc/passwd /run/containerd /tmp/ctd /root /var/lib/containerd $POD/mounts/atk $POD/vm.json $POD/vmm.pid; do
  [ ! -e "/proc/$inner/root$host_path" ] || fail "the jailed VMM sees $host_path"
done
[ -e "/proc/$inner/root/dev/kvm" ] && [ -d "/proc/$inner/root$POD/shared/atk/rootfs" ] || fail "the jail lacks /dev/kvm or the share"
grep -q Seccomp:.*2 /proc/$inner/status || fail "the VMM runs without a seccomp filter: $(grep Seccomp /proc/$inner/status)"
# In the pod's cgroup (the first container's cgroupsPath; ctr's is /<namespace>/<id>).
grep -qx '0::/default/atk' /proc/$inner/cgroup || fail "the VMM is not in the pod's cgroup: $(cat /proc/$inner/cgroup)"
log "the VMM runs jailed (own mnt/pid/net/ipc/uts namespaces, no host files, seccomp on, the pod's cgroup)"

# Symlink swaps in the guest while the host adds and removes a container, five times.
tctr 60 tasks exec -d --exec-id race atk sh -c 'i=0; while :; do
  ln -sfn /etc /rw/swap 2>/dev/null; mv -T /rw/swap /rw/target 2>/dev/null
  ln -s /etc /mnt/victim/volumes/0 2>/dev/null; ln -s / /mnt/victim 2>/dev/null
  mv /mnt/victim/rootfs /mnt/victim/x 2>/dev/null; i=$((i+1)); done' \
  || fail "cannot start the racing exec"
for i in 1 2 3 4 5; do
  run victim --mount "type=bind,src=$RW,dst=/data,options=rbind:rw" \
    --mount "type=bind,src=$RO,dst=/ro2,options=rbind:ro"
  ctr_delete victim
done
[ "$(task_status atk)" = RUNNING ] || fail "the attacker's pod died during the race"
log "five add/remove rounds of a second container under racing symlink swaps"

# The host: canary and read-only volume byte for byte; nothing new outside the pod.
[ "$(tree_sum $CANARY)" = "$canary_before" ] || fail "the canary tree changed"
[ "$(tree_sum $RO)" = "$ro_before" ] || fail "the read-only volume changed: $(ls -lR $RO)"
changed=$(find /etc /root /usr /var /tmp -xdev ! -type d -newer /tmp/hostile-mark \
  ! -path "$RW*" ! -path '/tmp/hyper*' ! -path "$CTD*" ! -path '/var/lib/containerd*' \
  ! -path '/tmp/hostile-*' ! -path '/tmp/e2e/*' ! -path '/var/log*' ! -path '/var/tmp/*' ! -path '/tmp/th-*' \
  ! -path '/var/cache*' 2>/dev/null | head -20 || true)
[ -z "$changed" ] || fail "host paths changed outside the pod's rw volume: $changed"
log "canary and read-only volume intact, nothing changed on the host outside the rw volume"
ctr_delete atk
! grep " $POD" /proc/mounts || fail "mounts of the pod left after delete"
[ ! -d /sys/fs/cgroup/default/atk ] || fail "the pod's cgroup is left after delete"

# A pod id that would leave the state dir is refused, and creates nothing.
out=$(tctr 120 run --rm --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml \
  --annotation 'io.kubernetes.cri.sandbox-id=../escape' "$BUSYBOX_REF" badid true 2>&1) \
  && fail "a pod id of ../escape was accepted"
grep -qi 'identifier\|invalid' <<<"$out" || fail "the refusal does not say why: $out"
[ ! -e /tmp/escape ] && [ ! -e /tmp/hyper/../escape ] || fail "the bad id created a directory"
ctr_remove badid
log "a pod id of ../escape is refused: $(tail -1 <<<"$out")"

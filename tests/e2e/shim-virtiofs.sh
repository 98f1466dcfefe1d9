#!/bin/bash
# virtio-fs end to end: a container started by containerd through our shim gets its rootfs
# and a bind volume over hyper-vmm's virtio-fs share. In the guest it writes and reads both,
# sees the host's changes, and ls -l, chmod, chown, mkfifo, ln -s and a 64 MiB file behave
# as on the host (the host side checks each result itself); a chown clears set-uid bits,
# and the share reads ahead 1 MiB. Writes to the rootfs land in
# containerd's snapshot.
# timeout: 900
# needs: containerd hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd ctr hyper-vmm containerd-shim-hyper-v1 md5sum
hyper_config
VOL=/tmp/vol
trap 'keep_hyper_logs; ctr_remove fs; _th_cleanup; rm -rf "$VOL"' EXIT
CTD_LOG_LEVEL=debug ctd_start
ctd_import_busybox
# gexec CMD: runs CMD in the container and prints its output. Every call reuses one exec
# id: ctr deletes each exec when it ends, which frees the id.
gexec() { tctr 300 tasks exec --exec-id x fs sh -c "$1"; }

mkdir -p $VOL
echo host-v1 > $VOL/hostfile
head -c $((64 << 20)) /dev/urandom > $VOL/hostbig
tctr 300 run -d --runtime io.containerd.hyper.v1 --runtime-config-path $CTD-hyper.toml \
  --memory-limit $((64 << 20)) \
  --mount "type=bind,src=$VOL,dst=/data,options=rbind:rw" "$BUSYBOX_REF" fs sleep 100000 \
  > /dev/null || fail "ctr run -d with a bind volume failed"
wait_status fs RUNNING 120
grep -q 'virtiofs' <<<"$(gexec 'cat /proc/mounts')" || fail "no virtiofs mount in the guest"
# The container's 64 MiB memory limit comes on top of the VM's 256 MiB default.
grep -Eq '"memory_mib": *320[^0-9]' /tmp/hyper/fs/vm.json \
  || fail "the VM was not sized 256 + 64 MiB for the container's limit: $(cat /tmp/hyper/fs/vm.json)"
log "container running; its mounts come over virtio-fs"

# The host's file, then the host's change to it.
out=$(gexec 'cat /data/hostfile') || fail "reading the volume failed: $out"
[ "$out" = host-v1 ] || fail "volume file reads '$out', expected host-v1"
echo host-v2 > $VOL/hostfile
seen=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
  seen=$(gexec 'cat /data/hostfile')
  [ "$seen" = host-v2 ] && break
  th_sleep 0.5
done
[ "$seen" = host-v2 ] || fail "the guest still reads '$seen' after the host changed the file"
log "host writes are seen in the guest"

# The guest makes files of every kind; the host checks what it finds.
out=$(gexec 'set -e; cd /data; echo from-guest > g; chmod 741 g; chown 1234:5678 g
  mkdir d; chmod 2750 d; mkfifo fifo; ln -s hostfile sym; ln g hard
  dd if=/dev/zero of=big bs=1M count=64 2>/dev/null; md5sum big hostbig; cat sym') \
  || fail "file operations in the volume failed: $out"
[ "$(cat $VOL/g)" = from-guest ] || fail "host reads '$(cat $VOL/g)' from the guest's file"
[ "$(stat -c '%a %u %g' $VOL/g)" = "741 1234 5678" ] || fail "chmod/chown: host sees $(stat -c '%a %u %g' $VOL/g)"
[ "$(stat -c '%a %F' $VOL/d)" = "2750 directory" ] || fail "mkdir/chmod: host sees $(stat -c '%a %F' $VOL/d)"
[ -p $VOL/fifo ] || fail "mkfifo: host sees $(stat -c %F $VOL/fifo)"
[ "$(readlink $VOL/sym)" = hostfile ] || fail "ln -s: host sees $(readlink $VOL/sym)"
[ "$(stat -c %i $VOL/hard)" = "$(stat -c %i $VOL/g)" ] || fail "ln: not the same inode on the host"
[ "$(stat -c %s $VOL/big)" = $((64 << 20)) ] || fail "64 MiB write: host sees $(stat -c %s $VOL/big) bytes"
host_md5=$(cd $VOL && md5sum big hostbig)
guest_md5=$(grep -E ' (big|hostbig)$' <<<"$out")
[ "$guest_md5" = "$host_md5" ] || fail "64 MiB files differ: guest $guest_md5, host $host_md5"
grep -q '^host-v2$' <<<"$out" || fail "reading through the symlink gave: $out"
log "chmod, chown, mkdir, mkfifo, ln -s, ln, 64 MiB both ways: as on the host"

# Set-id bits: a chown in the guest clears them on the host, as a chown there would (the
# device handles set-id clearing itself: HANDLE_KILLPRIV_V2).
out=$(gexec 'set -e; cd /data; echo b > suid-c; chmod 4755 suid-c; chown 1:1 suid-c' 2>&1) \
  || fail "chmod/chown of a set-uid file failed in the guest: $out"
[ "$(stat -c '%a %u' $VOL/suid-c)" = "755 1" ] || fail "chown left $(stat -c '%a %u' $VOL/suid-c) on the host"
log "a chown in the guest clears the set-uid bit on the host"

# The share's readahead is what one request carries (1 MiB), not FUSE's 128 KiB.
ra=$(gexec 'd=$(stat -c %d /data); cat /sys/class/bdi/$((d >> 8 & 0xfff)):$(( (d & 0xff) | (d >> 12 & 0xfff00) ))/read_ahead_kb') \
  || fail "cannot read the share's readahead: $ra"
[ "$ra" = 1024 ] || fail "the share's readahead is $ra KiB, expected 1024"
log "the share reads ahead 1 MiB"

# A tree unpacked in the guest arrives whole on the host (many small creates).
mkdir -p /tmp/tree-src && (cd /tmp/tree-src && for d in 0 1 2 3 4 5 6 7 8 9; do
  mkdir d$d; for f in $(seq 0 49); do echo "$d-$f" > d$d/f$f; done; ln -s d$d/f0 l$d; done)
tar -cf $VOL/tree.tar -C /tmp/tree-src . && rm -rf /tmp/tree-src
out=$(gexec 'mkdir /data/x && tar -xf /data/tree.tar -C /data/x 2>&1; echo "tar exit $?"')
grep -q 'tar exit 0' <<<"$out" || fail "tar -x in the volume failed: $out"
[ "$(find $VOL/x -type f | wc -l)" = 500 ] && [ "$(find $VOL/x -type l | wc -l)" = 10 ] \
  && [ "$(cat $VOL/x/d7/f42)" = 7-42 ] || fail "the unpacked tree is not whole on the host: $(find $VOL/x | wc -l) entries"
rm -rf $VOL/x $VOL/tree.tar
log "a 500-file tree unpacked in the guest is whole on the host"

# ls -l agrees (mode, links, owner, group, size, name; dates are formatted differently).
cols() { awk 'NF >= 9 { print $1, $2, $3, $4, $5, $NF }' | sort; }
guest_ls=$(gexec 'ls -ln /data' | cols)
host_ls=$(ls -ln $VOL | cols)
[ "$guest_ls" = "$host_ls" ] || fail "ls -ln differs:
guest:
$guest_ls
host:
$host_ls"
log "ls -ln of the volume is the same in the guest and on the host"

# The rootfs: written in the guest, present in containerd's snapshot (the overlay's upper).
gexec 'echo in-rootfs > /written-in-guest && chmod 600 /written-in-guest' || fail "writing the rootfs failed"
host_rootfs=$CTD/state/io.containerd.runtime.v2.task/default/fs/rootfs
[ "$(cat $host_rootfs/written-in-guest 2>/dev/null)" = in-rootfs ] \
  || fail "the guest's rootfs write is not in the host's rootfs mount $host_rootfs"
upper=$(grep -o "upperdir=[^,]*" /proc/mounts | grep -m1 snapshots | cut -d= -f2)
[ -n "$upper" ] && [ -f "$upper/written-in-guest" ] || fail "the rootfs write is not in containerd's snapshot (upper $upper)"
echo from-host > $host_rootfs/etc/from-host
t0=$(now_ms)
until [ "$(gexec 'cat /etc/from-host 2>/dev/null' || true)" = from-host ]; do
  (( $(now_ms) - t0 < 10000 )) || fail "the guest does not see a file the host put in its rootfs"
  th_sleep 0.5
done
log "rootfs writes reach containerd's snapshot; host changes reach the guest"

ctr_delete fs
t0=$(now_ms)
while grep -q " /tmp/hyper/" /proc/mounts && (( $(now_ms) - t0 < 15000 )); do th_sleep 0.2; done
! grep " /tmp/hyper/" /proc/mounts || fail "share mounts left after delete"
[ "$(cat $VOL/hostfile)" = host-v2 ] && [ -f $VOL/big ] || fail "the volume's files were touched by the teardown"
log "after delete: no share mounts left, the volume's files intact"

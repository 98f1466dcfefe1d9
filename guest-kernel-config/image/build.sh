#!/usr/bin/env bash
# Builds the guest image: a gzip'd newc initramfs whose /init is the statically linked
# hyper-agent, with Debian's static busybox as the guest's shell and tools (for the debug
# console, `hyperctl exec --sandbox`), and prints its path.
#
# usage: build.sh [--agent PATH] [--out FILE]
#   --agent  use this agent binary instead of building it (must be static)
#   --out    where to write the image (default: target/guest/initramfs.cpio.gz)
# Reproducible: the same agent binary gives the same bytes (fixed mtimes, owners and
# order, no gzip name or timestamp).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../scripts/common.sh
source "$here/../../scripts/common.sh"

agent="" out="$HYPER_ROOT/target/guest/initramfs.cpio.gz"
while [ $# -gt 0 ]; do
  case "$1" in
    --agent) agent=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) die "unknown argument '$1' (usage: build.sh [--agent PATH] [--out FILE])" ;;
  esac
done
apt_need cpio gzip busybox-static

if [ -z "$agent" ]; then
  log "building the static hyper-agent"
  (cd "$HYPER_ROOT" && RUSTFLAGS='-C target-feature=+crt-static' nice cargo build -q --release \
      --target x86_64-unknown-linux-gnu -p hyper-agent) >&2
  agent=$HYPER_ROOT/target/x86_64-unknown-linux-gnu/release/hyper-agent
fi
[ -x "$agent" ] || die "agent binary not found or not executable: $agent"
# A dynamic /init would die in the guest with a bare "No such file" from the kernel.
if readelf -l "$agent" | grep -q "program interpreter"; then
  die "$agent is dynamically linked; the guest has no libc (build with +crt-static)"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,run,tmp,etc,sbin}
install -m 0755 "$agent" "$stage/init"
ln -s ../init "$stage/sbin/init"
# busybox and its applets, each as a link where busybox says it lives (never over /init).
mkdir -p "$stage"/usr/{bin,sbin}
install -m 0755 /bin/busybox "$stage/bin/busybox"
for a in $(/bin/busybox --list-full); do
  [ -e "$stage/$a" ] || [ -L "$stage/$a" ] || ln -s /bin/busybox "$stage/$a"
done
printf 'root:x:0:0:root:/:/init\n' > "$stage/etc/passwd"
printf 'root:x:0:\n' > "$stage/etc/group"
chmod 1777 "$stage/tmp"
find "$stage" -exec touch -h -d @0 {} +

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
   | cpio --quiet --null -o -H newc -R 0:0 --reproducible) | gzip -9 -n > "$out.tmp"
mv "$out.tmp" "$out"
log "guest image: $out ($(stat -c %s "$out") bytes, sha256 $(sha256sum "$out" | cut -c1-16))"
echo "$out"

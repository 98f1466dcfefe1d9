#!/usr/bin/env bash
# Builds a busybox OCI image offline (umoci + Debian's busybox-static) as a tarball for
# `ctr images import`, and prints its path.
# usage: busybox-image.sh OUT_DIR      (cached: an existing OUT_DIR/busybox-oci.tar is reused)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
source "$here/common.sh"
out=$1
tar=$out/busybox-oci.tar
if [ -f "$tar" ]; then echo "$tar"; exit 0; fi
apt_need umoci busybox-static
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
umoci init --layout layout >&2
umoci new --image layout:1.35 >&2
umoci unpack --rootless --image layout:1.35 bundle >&2
r=bundle/rootfs
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,tmp,etc,proc,sys,dev,root,run}
cp /bin/busybox "$r/bin/busybox"
for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -f "$r/bin/busybox" "$r/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$r/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$r/etc/group"
umoci repack --image layout:1.35 bundle >&2
umoci config --image layout:1.35 --config.cmd=sh \
  --config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin >&2
umoci gc --layout layout >&2
mkdir -p "$out"
tar -C layout -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
echo "$tar"

#!/usr/bin/env bash
# Builds the pod sandbox ("pause") OCI image offline, tagged 3.6 as containerd 1.6's default
# sandbox_image, as a tarball for `ctr images import`, and prints its path. The program is
# pause/pause.c, linked statically; the image runs it as user 65535, like the upstream one.
# usage: pause-image.sh OUT_DIR      (cached by the hash of pause.c and this script)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
source "$here/common.sh"
out=$1
key=$(cat "$here/pause/pause.c" "$0" | sha256sum | cut -c1-16)
tar=$out/pause-oci-$key.tar
if [ -f "$tar" ]; then echo "$tar"; exit 0; fi
apt_need umoci gcc libc6-dev
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
gcc -static -Os -s -o pause "$here/pause/pause.c"
umoci init --layout layout >&2
umoci new --image layout:3.6 >&2
umoci unpack --rootless --image layout:3.6 bundle >&2
install -m 0755 pause bundle/rootfs/pause
umoci repack --image layout:3.6 bundle >&2
umoci config --image layout:3.6 --config.entrypoint=/pause --config.user=65535:65535 >&2
umoci gc --layout layout >&2
mkdir -p "$out"
tar -C layout -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
echo "$tar"

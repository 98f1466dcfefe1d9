#!/usr/bin/env bash
# Fetches Debian 13's containerd 1.7 (the second containerd release hyper supports; Debian
# 12's own is 1.6) without touching the system: a private apt source list and package
# lists under OUT_DIR, `apt-get download`, `dpkg-deb -x`. Its binaries need glibc 2.34,
# which Debian 12 has. Prints the directory holding bin/{containerd,ctr,containerd-shim-runc-v2}.
# usage: containerd-1.7.sh OUT_DIR      (cached: a second call with the same pin is instant)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
source "$here/common.sh"
VERSION=1.7.24~ds1-6+deb13u1
out=$1/$VERSION
if [ -x "$out/bin/containerd" ]; then echo "$out"; exit 0; fi
apt_need dpkg debian-archive-keyring
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{lists/partial,cache/archives/partial}
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" > "$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=- -o "Dir::State::Lists=$work/lists"
          -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
log "fetching containerd $VERSION from Debian 13 (trixie), for the containerd 1.7 suites"
apt-get "${apt_opts[@]}" -qq update >&2 || die "apt-get update of the trixie list failed (is deb.debian.org reachable?)"
(cd "$work" && apt-get "${apt_opts[@]}" -qq download "containerd=$VERSION" >&2) \
  || die "apt-get download containerd=$VERSION failed: Debian has moved on; bump VERSION in $0 to what 'apt-cache policy containerd' shows for trixie"
dpkg-deb -x "$work"/containerd_*.deb "$work/x"
mkdir -p "$out.tmp/bin"
for b in containerd ctr containerd-shim-runc-v2; do install -m 0755 "$work/x/usr/bin/$b" "$out.tmp/bin/$b"; done
"$out.tmp/bin/containerd" --version | grep -q " 1\.7\." || die "the package's containerd is not 1.7: $("$out.tmp/bin/containerd" --version)"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"

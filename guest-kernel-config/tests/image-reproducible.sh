#!/usr/bin/env bash
# The guest image is reproducible: two builds from the same agent binary, one copy with
# a different mtime, give the same bytes; and the image holds a static /init.
# usage: image-reproducible.sh AGENT_BINARY
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../scripts/common.sh
source "$here/../../scripts/common.sh"
agent=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$agent" "$work/agent-a"
cp "$agent" "$work/agent-b"
touch -d '2001-02-03 04:05:06' "$work/agent-b"
a=$(bash "$here/../image/build.sh" --agent "$work/agent-a" --out "$work/a.cpio.gz" 2>/dev/null)
sleep 1   # a different wall clock for the second build
b=$(bash "$here/../image/build.sh" --agent "$work/agent-b" --out "$work/b.cpio.gz" 2>/dev/null)
sa=$(sha256sum < "$a" | cut -d' ' -f1); sb=$(sha256sum < "$b" | cut -d' ' -f1)
[ "$sa" = "$sb" ] || die "image not reproducible: $sa != $sb"
listing=$(gzip -dc "$a" | cpio -t --quiet 2>/dev/null)
for want in init sbin/init dev proc sys etc/passwd; do
  grep -qx "$want" <<<"$listing" || die "image lacks /$want (has: $(echo $listing))"
done
mkdir "$work/x" && (cd "$work/x" && gzip -dc "$a" | cpio -id --quiet init 2>/dev/null)
cmp -s "$work/x/init" "$agent" || die "/init in the image is not the agent binary"
log "image reproducible: sha256 $sa, $(wc -l <<<"$listing") entries"

#!/usr/bin/env bash
# Builds what boots the test host (the QEMU-TCG VM in which our tests run real KVM guests)
# and prints the directory holding it:
#   vmlinuz            Debian's cloud kernel (bzImage; QEMU -M microvm boots it directly)
#   initramfs.cpio.gz  busybox-static, the modules of modules.list with their dependencies,
#                      and th-init as /init
#   kver               the kernel release
# Inputs: testhost.pin (package + version), modules.list, th-init, this script, busybox.
# Cached in $HYPER_CACHE/testhost/<hash of the inputs>/; a second call is instant.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../scripts/common.sh
source "$here/../../scripts/common.sh"
# shellcheck source=testhost.pin
source "$here/testhost.pin"

apt_need busybox-static cpio gzip kmod
busybox=/bin/busybox
[ -x "$busybox" ] || die "busybox-static did not install /bin/busybox"

key=$(hash_inputs "$here/testhost.pin" "$here/modules.list" "$here/th-init" "$0" "$busybox")
out=$HYPER_CACHE/testhost/$key
if [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.cpio.gz" ]; then
  log "test host cached: $out"
  echo "$out"; exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/hyper-testhost.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "downloading $TESTHOST_PACKAGE=$TESTHOST_VERSION"
(cd "$work" && apt-get download -q "$TESTHOST_PACKAGE=$TESTHOST_VERSION" >/dev/null 2>&1) || {
  (cd "$work" && apt-get update -qq >/dev/null 2>&1 && apt-get download -q "$TESTHOST_PACKAGE=$TESTHOST_VERSION" >/dev/null 2>&1) \
    || die "apt-get download $TESTHOST_PACKAGE=$TESTHOST_VERSION failed; bump tests/harness/testhost.pin"
}
deb=$(ls "$work"/*.deb)
dpkg-deb -x "$deb" "$work/x"
kver=$TESTHOST_KVER
src=$work/x/lib/modules/$kver
[ -f "$work/x/boot/vmlinuz-$kver" ] || die "$deb has no /boot/vmlinuz-$kver (is TESTHOST_KVER right?)"
# The .deb ships no modules.dep (the postinst makes it); make one for the whole tree.
depmod -b "$work/x" "$kver"

# resolve NAME: prints the module's path (relative to $src) and those of its dependencies,
# in load order (dependencies first). modules.dep lists a module's dependencies so that the
# last one must be loaded first.
resolve() {
  local name=${1//-/_} line path deps i
  line=$(awk -v n="$name" -F: '{ b=$1; sub(/.*\//, "", b); sub(/\.ko.*$/, "", b); gsub(/-/, "_", b); if (b == n) { print; exit } }' "$src/modules.dep")
  if [ -z "$line" ]; then
    grep -qE "/${name//_/[-_]}\.ko" "$src/modules.builtin" && return 0   # built in: nothing to load
    die "module $1 is neither in $TESTHOST_PACKAGE nor built in"
  fi
  path=${line%%:*}; read -ra deps <<<"${line#*:}"
  for ((i = ${#deps[@]} - 1; i >= 0; i--)); do echo "${deps[i]}"; done
  echo "$path"
}

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,lower,rw,newroot,etc} "$root/lib/modules/$kver"
cp "$busybox" "$root/bin/busybox"
install -m 0755 "$here/th-init" "$root/init"
: > "$root/etc/modules.boot"
seen=" "
while read -r kind name _; do
  case "$kind" in ''|'#'*) continue ;; boot|extra) ;; *) die "modules.list: unknown kind '$kind'" ;; esac
  for m in $(resolve "$name"); do
    case "$seen" in *" $m "*) continue ;; esac
    seen+="$m "
    mkdir -p "$root/lib/modules/$kver/$(dirname "$m")"
    cp "$src/$m" "$root/lib/modules/$kver/$m"
    [ "$kind" = boot ] && echo "$m" >> "$root/etc/modules.boot"
  done
done < "$here/modules.list"
cp "$src"/modules.{builtin,builtin.modinfo,order} "$root/lib/modules/$kver/"
depmod -b "$root" "$kver"            # modules.dep of the subset, for modprobe in the test host
echo "$kver" > "$root/etc/kver"

mkdir -p "$out.tmp"
cp "$work/x/boot/vmlinuz-$kver" "$out.tmp/vmlinuz"
cp "$work/x/boot/config-$kver" "$out.tmp/config"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -1 > "$out.tmp/initramfs.cpio.gz"
echo "$kver" > "$out.tmp/kver"
echo "$TESTHOST_PACKAGE=$TESTHOST_VERSION" > "$out.tmp/version"
rm -rf "$out"; mkdir -p "$(dirname "$out")"; mv "$out.tmp" "$out"
log "test host: $out (initramfs $(stat -c %s "$out/initramfs.cpio.gz") bytes, $(wc -w < "$root/etc/modules.boot") boot modules, $(echo "$seen" | wc -w) modules in all)"
echo "$out"

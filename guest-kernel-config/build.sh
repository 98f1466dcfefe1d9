#!/usr/bin/env bash
# Builds the guest kernel (uncompressed ELF vmlinux) from Debian's linux-source package
# and the fragments in fragments/, and prints the path of the cached vmlinux.
#
# The result is cached in $HYPER_CACHE/kernel/<key>/ where key = hash(package version,
# fragments, this script), so a second build with the same inputs is instant.
# Environment: JOBS (default: nproc), HYPER_CACHE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/common.sh
source "$here/../scripts/common.sh"
# shellcheck source=kernel.pin
source "$here/kernel.pin"

apt_need "$KERNEL_PACKAGE" make gcc flex bison bc libelf-dev libssl-dev xz-utils
version=$(dpkg-query -W -f='${Version}' "$KERNEL_PACKAGE")
case "$version" in
  "$KERNEL_SERIES".*) ;;
  *) die "$KERNEL_PACKAGE $version is not on the pinned $KERNEL_SERIES line" ;;
esac
[ "$version" = "$KERNEL_TESTED_VERSION" ] || log "note: $KERNEL_PACKAGE $version (fragments last verified on $KERNEL_TESTED_VERSION)"

# Bump when a change to this recipe changes the vmlinux it produces.
RECIPE_VERSION=1
fragments=("$here"/fragments/*.conf)
key=$(echo "recipe=$RECIPE_VERSION $KERNEL_PACKAGE=$version" | cat - "${fragments[@]}" | sha256sum | cut -c1-16)
out=$HYPER_CACHE/kernel/$key
if [ -f "$out/vmlinux" ] && [ -f "$out/config" ]; then
  log "guest kernel cached: $out/vmlinux"
  echo "$out/vmlinux"; exit 0
fi

tarball=/usr/src/$KERNEL_PACKAGE.tar.xz
[ -f "$tarball" ] || die "$tarball not found (is $KERNEL_PACKAGE installed?)"
build=$HYPER_CACHE/kernel/build-$key
rm -rf "$build"; mkdir -p "$build"
log "unpacking $tarball"
tar -C "$build" -xf "$tarball"
src=$build/$KERNEL_PACKAGE
cd "$src"
# Reproducible: no build host, user or time in the image.
export KBUILD_BUILD_TIMESTAMP="1970-01-01" KBUILD_BUILD_USER=hyper KBUILD_BUILD_HOST=hyper
make -s ARCH=x86_64 allnoconfig >/dev/null
scripts/kconfig/merge_config.sh -m -O . .config "${fragments[@]}" >/dev/null
make -s ARCH=x86_64 olddefconfig >/dev/null
"$here/check-config.sh" .config "${fragments[@]}" >&2
jobs=${JOBS:-$(nproc)}
start=$(date +%s)
log "building vmlinux with $jobs jobs (about 5 minutes on 2 cores; progress every 30 s)"
nice -n 10 make -s ARCH=x86_64 -j"$jobs" vmlinux >"$build/make.log" 2>&1 &
make_pid=$!
# Progress while make is silent: objects compiled so far.
while kill -0 "$make_pid" 2>/dev/null; do
  for _ in $(seq 30); do kill -0 "$make_pid" 2>/dev/null || break; sleep 1; done
  kill -0 "$make_pid" 2>/dev/null && log "  kernel build: $(find . -name '*.o' | wc -l) objects compiled, $(( $(date +%s) - start )) s"
done
wait "$make_pid" || { tail -40 "$build/make.log" >&2; die "kernel build failed (log: $build/make.log); fix what it says, then run $0 again"; }
log "vmlinux built in $(( $(date +%s) - start )) s"
mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp .config "$out.tmp/config"
echo "$KERNEL_PACKAGE=$version" > "$out.tmp/version"
rm -rf "$out"; mv "$out.tmp" "$out"
cd /; rm -rf "$build"
echo "$out/vmlinux"

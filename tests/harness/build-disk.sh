#!/usr/bin/env bash
# Builds the test host's data disk: an ext4 image (made with `mke2fs -d`: no root, no loop
# device) that becomes the test host's root (read-only, under a tmpfs overlay). It holds
# busybox, the entries of payload.list, our binaries, the guest kernel and image, the
# harness runner, the tests and the plan (which tests to run, with their timeouts).
#
# usage: build-disk.sh --out FILE --plan FILE [--env FILE] --guest-kernel PATH --guest-initrd PATH
#                      [--bin NAME=PATH]...     (our binaries, into /usr/local/bin/NAME)
#                      [--with GROUP]...        (payload.list lines marked @GROUP)
#                      [--add SRC:DEST]...      (a host file or tree, to DEST)
#                      [--test FILE]...         (a test script kept outside tests/e2e)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../scripts/common.sh
source "$here/../../scripts/common.sh"
HYPER_SHARED=${HYPER_SHARED:-$(cd "$HYPER_ROOT/.." && pwd)/shared}

out="" plan="" envfile="" gkernel="" ginitrd="" bins=() groups=" " adds=() xtests=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --plan) plan=$2; shift 2 ;;
    --env) envfile=$2; shift 2 ;;
    --guest-kernel) gkernel=$2; shift 2 ;;
    --guest-initrd) ginitrd=$2; shift 2 ;;
    --bin) bins+=("$2"); shift 2 ;;
    --with) groups+="$2 "; shift 2 ;;
    --add) adds+=("$2"); shift 2 ;;
    --test) xtests+=("$2"); shift 2 ;;
    *) die "build-disk.sh: unknown argument '$1'" ;;
  esac
done
[ -n "$out" ] && [ -f "$plan" ] && [ -f "$gkernel" ] && [ -f "$ginitrd" ] \
  || die "usage: build-disk.sh --out FILE --plan FILE --guest-kernel PATH --guest-initrd PATH [--bin NAME=PATH]..."
apt_need e2fsprogs busybox-static cpio gzip

stage=$(mktemp -d "${TMPDIR:-/tmp}/hyper-thdisk.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/usr/{bin,sbin,lib,lib64,local/bin} "$stage"/{etc,root,tmp,run,var/tmp,guest,results,lower}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$stage/$d"; done

# put SRC DEST: copies one file (dereferencing links) to DEST inside the stage.
put() {
  mkdir -p "$stage$(dirname "$2")"
  cp -L --preserve=mode "$1" "$stage$2"
}
# closure BIN: copies the shared libraries BIN needs (and the loader) to their own paths.
closure() {
  local lib
  ldd "$1" >/dev/null 2>&1 || return 0            # static: nothing to add
  for lib in $(ldd "$1" | awk '/=>/ { print $3 } !/=>/ { print $1 }' | grep '^/'); do
    [ -e "$stage$lib" ] || put "$lib" "$lib"
  done
}
is_elf() { [ "$(head -c4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }

n=0
while read -ra f; do
  case "${f[0]:-#}" in '#'*) continue ;; esac
  if [ "${f[0]#@}" != "${f[0]}" ]; then          # @GROUP KIND SRC [DEST]
    case "$groups" in *" ${f[0]#@} "*) ;; *) continue ;; esac
    f=("${f[@]:1}")
  fi
  kind=${f[0]} src=${f[1]:-} dest=${f[2]:-}
  src=${src//\$HYPER_ROOT/$HYPER_ROOT}; src=${src//\$HYPER_SHARED/$HYPER_SHARED}
  dest=${dest:-$src}
  case "$kind" in
    pkg) apt_need "$src"; continue ;;
    bin) [ -x "$src" ] || die "payload.list: $src is not an executable"
         put "$src" "$dest"; closure "$src" ;;
    file) [ -f "$src" ] || die "payload.list: $src not found"
          put "$src" "$dest" ;;
    dir) [ -d "$src" ] || die "payload.list: $src is not a directory"
         mkdir -p "$stage$dest"; cp -a "$src/." "$stage$dest/"
         while IFS= read -r f; do is_elf "$f" && closure "$f"; done < <(find "$src" -type f -perm -u+x) ;;
    build) [ -x "$src" ] || die "payload.list: $src is not an executable"
           # SCRIPT OUT_DIR prints the path of what it built (cached by the script itself)
           built=$("$src" "$HYPER_CACHE/payload/$(basename "$src" .sh)" | tail -1)
           [ -f "$built" ] || die "payload.list: $src printed '$built', which is not a file"
           put "$built" "$dest" ;;
    *) die "payload.list: unknown kind '$kind'" ;;
  esac
  n=$((n + 1))
done < "$here/payload.list"

for b in "${bins[@]}"; do
  name=${b%%=*} path=${b#*=}
  [ -x "$path" ] || die "--bin $name: $path is not an executable"
  put "$path" "/usr/local/bin/$name"; closure "$path"
done

for a in "${adds[@]}"; do
  src=${a%%:*} dest=${a#*:}
  if [ -d "$src" ]; then mkdir -p "$stage$dest"; cp -a "$src/." "$stage$dest/"
  elif [ -f "$src" ]; then put "$src" "$dest"
  else die "--add: $src not found"; fi
done

# busybox for everything else (after the payload, so real tools win).
put /bin/busybox /usr/bin/busybox
for a in $(/bin/busybox --list-full); do
  [ -e "$stage/$a" ] || [ -L "$stage/$a" ] || ln -s /usr/bin/busybox "$stage/$a"
done
[ -e "$stage/usr/bin/sh" ] || ln -s busybox "$stage/usr/bin/sh"

printf 'root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' > "$stage/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$stage/etc/group"
printf '127.0.0.1 localhost testhost\n::1 localhost\n' > "$stage/etc/hosts"
echo testhost > "$stage/etc/hostname"
chmod 1777 "$stage/tmp" "$stage/var/tmp"

# The guest: our kernel and image, plus a deliberately broken image for the self-test
# (its init says it is alive, then never prints the agent's marker and never exits).
put "$gkernel" /guest/vmlinux
put "$ginitrd" /guest/initramfs.cpio.gz
bg=$stage/.broken
mkdir -p "$bg"/{bin,proc,dev}
cp /bin/busybox "$bg/bin/busybox"
printf '#!/bin/busybox sh\necho BROKEN-GUEST-ALIVE: this init never prints the agent marker\nwhile :; do /bin/busybox sleep 3600; done\n' > "$bg/init"
chmod 0755 "$bg/init"
(cd "$bg" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -1 > "$stage/guest/broken-initramfs.cpio.gz"
rm -rf "$bg"

# The harness itself and the tests.
h=/usr/lib/hyper-harness
mkdir -p "$stage$h/e2e"
install -m 0755 "$here/runner" "$stage$h/runner"
cp "$HYPER_ROOT"/tests/e2e/*.sh "$stage$h/e2e/"
for t in "${xtests[@]}"; do
  [ -e "$stage$h/e2e/$(basename "$t")" ] && die "test $t has the name of a test in tests/e2e"
  cp "$t" "$stage$h/e2e/"
done
cp "$plan" "$stage$h/plan"
if [ -n "$envfile" ]; then cp "$envfile" "$stage$h/env"; else : > "$stage$h/env"; fi

mb=$(du -sm "$stage" | cut -f1)
size=$(( mb + mb / 4 + 32 ))
rm -f "$out"; mkdir -p "$(dirname "$out")"
mke2fs -q -t ext4 -O ^has_journal -E root_owner=0:0 -L hyper-th -d "$stage" -F "$out" "${size}M" \
  || die "mke2fs -d failed"
log "test-host disk: $out (${size} MiB, ${mb} MiB used, $n payload entries, ${#bins[@]} of our binaries)"

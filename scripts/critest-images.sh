#!/usr/bin/env bash
# Builds every image critest v1.26 pulls (but the one it names by a gcr.io digest) offline,
# pushes them into a throwaway docker-registry and packs that registry's storage as a
# tarball for the test host, where a registry serves it on 127.0.0.1:5000 and containerd
# mirrors registry.k8s.io and gcr.io to it. Prints the tarball's path.
#   base: Debian's dynamic busybox with its libraries (critest's MaskedPaths test needs
#         applets that are real exec'd files), hard-linked applets, small pgrep and ipcs
#   nginx, nonewprivs: critest/nginx.c and critest/nnp.c stand in for them
# usage: critest-images.sh OUT_DIR     (cached by the hash of its inputs)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
source "$here/common.sh"
out=$1
apt_need umoci skopeo docker-registry gcc libc6-dev curl
bb_version=$(apt-cache policy busybox | awk '/Candidate/ { print $2 }')
key=$(cat "$0" "$here/critest/nginx.c" "$here/critest/nnp.c" <(echo "$bb_version") | sha256sum | cut -c1-16)
tar=$out/critest-registry-$key.tar
if [ -f "$tar" ]; then echo "$tar"; exit 0; fi
work=$(mktemp -d)
reg_pid=""
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
log "building critest's images (busybox $bb_version)"
(apt-get download -qq "busybox=$bb_version" >&2) || die "apt-get download busybox failed"
dpkg-deb -x busybox_*.deb bbdeb
gcc -static -Os -s -o nginx "$here/critest/nginx.c"
gcc -static -Os -s -o nnp "$here/critest/nnp.c"

umoci init --layout L >&2
umoci new --image L:base >&2
umoci unpack --image L:base b >&2
r=b/rootfs
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,tmp,etc,proc,sys,dev,root,run,var/run,www,lib/x86_64-linux-gnu,lib64,home/default-user}
cp bbdeb/bin/busybox "$r/bin/busybox"
for l in libc.so.6 libresolv.so.2 ld-linux-x86-64.so.2; do cp -L "/lib/x86_64-linux-gnu/$l" "$r/lib/x86_64-linux-gnu/"; done
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$r/lib64/ld-linux-x86-64.so.2"
for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -f "$r/bin/busybox" "$r/bin/$a"; done
cat > "$r/bin/pgrep" <<'SH'
#!/bin/sh
# pgrep PATTERN: the pids whose command name matches (Debian's busybox has no pgrep)
found=1
for p in /proc/[0-9]*; do
  grep -q -- "$1" "$p/comm" 2>/dev/null && { echo "${p#/proc/}"; found=0; }
done
exit $found
SH
cat > "$r/bin/ipcs" <<'SH'
#!/bin/sh
# ipcs -m: the System V shared memory segments, from /proc/sysvipc/shm
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch"
tail -n +2 /proc/sysvipc/shm 2>/dev/null | while read -r key id perms size _ _ nattch uid _; do
  printf '0x%08x %-10s %-10s %-10s %-10s %-10s\n' "$key" "$id" "$uid" "$perms" "$size" "$nattch"
done
SH
chmod 755 "$r/bin/pgrep" "$r/bin/ipcs"
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'www-data:x:33:33:www-data:/var/www:/bin/false' \
  'default-user:x:1000:1000::/home/default-user:/bin/sh' 'nobody:x:65534:65534:nobody:/:/bin/false' > "$r/etc/passwd"
printf '%s\n' 'root:x:0:' 'www-data:x:33:' 'default-user:x:1000:' 'group-defined-in-image:x:50000:default-user' \
  'nobody:x:65534:' > "$r/etc/group"
chmod 1777 "$r/tmp"
echo '<html><body>hello from hyper critest</body></html>' > "$r/www/index.html"
umoci repack --image L:base b >&2
umoci config --image L:base --config.cmd=sh \
  --config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin >&2

# variant TAG FILE DEST [umoci config flags...]: base + one file (and config changes)
variant() {
  local tag=$1 file=$2 dest=$3; shift 3
  umoci insert --image L:base --tag "$tag" "$file" "$dest" >&2
  [ $# -eq 0 ] || umoci config --image "L:$tag" "$@" >&2
}
for n in test-image-latest test-image-tag test-image-1 test-image-2 test-image-3 test-image-tags; do
  echo "$n" > "m-$n"; variant "$n" "m-$n" "/$n"
done
mkdir -p ng/usr/sbin nn/usr/local/bin
cp nginx ng/usr/sbin/nginx
install -o 0 -g 0 -m 4755 nnp nn/usr/local/bin/nnp
variant nginx ng/usr /usr --clear=config.cmd --config.entrypoint=/usr/sbin/nginx
variant nonewprivs nn/usr /usr --clear=config.cmd --config.entrypoint=/usr/local/bin/nnp
umoci config --image L:base --tag httpd --clear=config.cmd --config.entrypoint=sh --config.entrypoint=-c \
  --config.entrypoint='echo "Command line: httpd -D FOREGROUND"; exec httpd -f -v -p 80 -h /www' >&2
umoci config --image L:base --tag hostnet --clear=config.cmd --config.entrypoint=sh --config.entrypoint=-c \
  --config.entrypoint='exec httpd -f -v -p 12003 -h /www' >&2
for u in uid:1002 username:www-data uid-group:1003:1004 username-group:www-data:1004 predefined-group:1000; do
  umoci config --image L:base --tag "user-${u%%:*}" --config.user="${u#*:}" >&2
done
umoci gc --layout L >&2

mkdir -p storage
cat > registry.yml <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/storage}}
http: {addr: 127.0.0.1:0}
YML
# A free port: the registry cannot report the one it picked.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -i "s/127.0.0.1:0/127.0.0.1:$port/" registry.yml
docker-registry serve registry.yml > registry.log 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" > /dev/null && break; sleep 0.1; done
push() { skopeo copy --quiet --dest-tls-verify=false "oci:L:$1" "docker://127.0.0.1:$port/$2" >&2 || die "push $2 failed"; }
k=k8s-staging-cri-tools
push base e2e-test-images/busybox:1.29-2
push nginx e2e-test-images/nginx:1.14-2
push httpd e2e-test-images/httpd:2.4.39-4
push nonewprivs e2e-test-images/nonewprivs:1.3
push test-image-latest $k/test-image-latest:latest
push test-image-tag $k/test-image-tag:test
push test-image-tag $k/test-image-tag:all
for n in 1 2 3; do push "test-image-$n" "$k/test-image-$n:latest"; push test-image-tags "$k/test-image-tags:$n"; done
push user-uid $k/test-image-user-uid:latest
push user-username $k/test-image-user-username:latest
push user-uid-group $k/test-image-user-uid-group:latest
push user-username-group $k/test-image-user-username-group:latest
push user-predefined-group $k/test-image-predefined-group:latest
push hostnet $k/hostnet-nginx-amd64:latest
kill "$reg_pid"; wait "$reg_pid" 2>/dev/null || true; reg_pid=""
mkdir -p "$out"
tar -C storage -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
log "critest registry: $(du -sh "$tar" | cut -f1)"
echo "$tar"

#!/usr/bin/env bash
# `make install` / `make uninstall`: puts hyper where containerd and an operator find it,
# or removes exactly what an install put there.
#
# usage: install.sh install|uninstall
# Environment (make passes its variables through):
#   PREFIX=/usr/local      binaries in PREFIX/bin, guest kernel and image in PREFIX/share/hyper
#   SYSCONFDIR=/etc        the shim's config in SYSCONFDIR/hyper/config.toml
#   DESTDIR=               staging root prepended to every path written (packaging)
#   CRI_CONFIG=FILE        also write containerd's CRI snippet to FILE (e.g. a file that
#                          containerd's `imports` reads); without it the snippet is printed
#   HYPER_VMM, CONTAINERD_SHIM_HYPER_V1, HYPERCTL, GUEST_KERNEL, GUEST_INITRD
#                          prebuilt files to install instead of building them
#
# The install records every file it wrote, with its sha256, in
# PREFIX/share/hyper/install-manifest; uninstall removes those files and nothing else,
# keeping (and naming) any the operator changed since, such as an edited config.toml.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
source "$here/common.sh"

action=${1:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
DESTDIR=${DESTDIR:-}
bindir=$PREFIX/bin datadir=$PREFIX/share/hyper confdir=$SYSCONFDIR/hyper
manifest=$datadir/install-manifest
case "$PREFIX" in /*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
case "$SYSCONFDIR" in /*) ;; *) die "SYSCONFDIR must be an absolute path, not '$SYSCONFDIR'" ;; esac

# release_bin VAR PACKAGE BIN: the prebuilt file in $VAR if given, else BIN built by cargo.
release_bin() {
  local given=${!1:-}
  if [ -n "$given" ]; then echo "$given"; return; fi
  log "building $3 (cargo build --release -p $2)"
  (cd "$HYPER_ROOT" && nice cargo build -q --release -p "$2" --bin "$3") >&2 \
    || die "cargo build --release -p $2 --bin $3 failed: fix the build, then make install again"
  echo "$HYPER_ROOT/target/release/$3"
}

written=()
# put MODE SRC DEST: installs one file, remembering it for the manifest.
put() {
  install -D -m "$1" "$2" "$DESTDIR$3" || die "cannot write $DESTDIR$3 (run as root, or set DESTDIR/PREFIX)"
  written+=("$3")
  log "installed $3"
}

do_install() {
  [ -e "$DESTDIR$manifest" ] && log "an earlier install is recorded in $DESTDIR$manifest; installing over it"
  local vmm shim ctl kernel image
  vmm=$(release_bin HYPER_VMM hyper-vmm hyper-vmm)
  shim=$(release_bin CONTAINERD_SHIM_HYPER_V1 hyper-shim containerd-shim-hyper-v1)
  ctl=$(release_bin HYPERCTL hyper-shim hyperctl)
  if [ -n "${GUEST_KERNEL:-}" ]; then kernel=$GUEST_KERNEL; else
    log "guest kernel (cached after the first build, about 5 minutes on 2 cores the first time)"
    kernel=$(bash "$HYPER_ROOT/guest-kernel-config/build.sh")
  fi
  if [ -n "${GUEST_INITRD:-}" ]; then image=$GUEST_INITRD; else
    log "guest image (the static hyper-agent as /init)"
    image=$(bash "$HYPER_ROOT/guest-kernel-config/image/build.sh")
  fi

  put 0755 "$vmm" "$bindir/hyper-vmm"
  put 0755 "$shim" "$bindir/containerd-shim-hyper-v1"
  put 0755 "$ctl" "$bindir/hyperctl"
  put 0644 "$kernel" "$datadir/vmlinux"
  put 0644 "$image" "$datadir/initramfs.cpio.gz"

  local stage
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' RETURN
  sed -e "s|@BINDIR@|$bindir|g" -e "s|@DATADIR@|$datadir|g" "$HYPER_ROOT/deploy/config.toml" > "$stage/config.toml"
  sed -e "s|^\(\s*ConfigPath = \).*|\1\"$confdir/config.toml\"|" "$HYPER_ROOT/deploy/containerd-hyper.toml" > "$stage/containerd-hyper.toml"
  # An operator's config stays; ours goes beside it.
  if [ -e "$DESTDIR$confdir/config.toml" ] && ! cmp -s "$stage/config.toml" "$DESTDIR$confdir/config.toml"; then
    put 0644 "$stage/config.toml" "$confdir/config.toml.new"
    log "kept $confdir/config.toml (it differs from this release's); the new default is $confdir/config.toml.new"
  else
    put 0644 "$stage/config.toml" "$confdir/config.toml"
  fi
  put 0644 "$stage/containerd-hyper.toml" "$datadir/containerd-hyper.toml"
  put 0644 "$HYPER_ROOT/deploy/runtimeclass.yaml" "$datadir/runtimeclass.yaml"
  [ -n "${CRI_CONFIG:-}" ] && put 0644 "$stage/containerd-hyper.toml" "$CRI_CONFIG"

  local f sum path
  {
    for f in "${written[@]}"; do
      printf '%s  %s\n' "$(sha256sum < "$DESTDIR$f" | cut -d' ' -f1)" "$f"
    done
    # What an earlier install wrote and this one did not (an operator's edited config)
    # stays recorded as it was installed, so uninstall still knows it.
    if [ -f "$DESTDIR$manifest" ]; then
      while read -r sum path; do
        [[ " ${written[*]} " == *" $path "* ]] || printf '%s  %s\n' "$sum" "$path"
      done < "$DESTDIR$manifest"
    fi
  } > "$stage/manifest"
  install -D -m 0644 "$stage/manifest" "$DESTDIR$manifest"
  log "installed ${#written[@]} files under $DESTDIR$PREFIX and $DESTDIR$confdir (list: $manifest)"

  cat <<EOT

Next steps
1. containerd finds containerd-shim-hyper-v1 on its PATH: $bindir must be on it.
2. Kubernetes (CRI): merge this into containerd's config (/etc/containerd/config.toml,
   config version 2) and restart containerd$([ -n "${CRI_CONFIG:-}" ] && printf '; it is also in %s' "$CRI_CONFIG"):

$(sed 's/^/    /' "$stage/containerd-hyper.toml")

3. Then apply the RuntimeClass (kubectl apply -f $datadir/runtimeclass.yaml):

$(sed 's/^/    /' "$HYPER_ROOT/deploy/runtimeclass.yaml")

4. Check the host: $bindir/hyperctl --config $confdir/config.toml check
   Try it: ctr run --rm --runtime io.containerd.hyper.v1 --runtime-config-path $confdir/config.toml docker.io/library/busybox:latest demo echo hello
EOT
}

do_uninstall() {
  [ -f "$DESTDIR$manifest" ] || die "no install recorded at $DESTDIR$manifest (give the PREFIX and DESTDIR the install used)"
  local sum path kept=0 removed=0
  while read -r sum path; do
    [ -n "$path" ] || continue
    if [ ! -e "$DESTDIR$path" ]; then
      log "already gone: $path"
    elif [ "$(sha256sum < "$DESTDIR$path" | cut -d' ' -f1)" = "$sum" ]; then
      rm -f "$DESTDIR$path"; removed=$((removed + 1))
    else
      log "kept $path: it changed since the install (remove it yourself if you no longer want it)"
      kept=$((kept + 1))
    fi
  done < "$DESTDIR$manifest"
  rm -f "$DESTDIR$manifest"
  # The directories the install made, if nothing else lives there now.
  rmdir "$DESTDIR$datadir" "$DESTDIR$confdir" 2>/dev/null || true
  log "removed $removed files, kept $kept"
}

case "$action" in
  install) do_install ;;
  uninstall) do_uninstall ;;
  *) die "usage: install.sh install|uninstall (make install / make uninstall)" ;;
esac

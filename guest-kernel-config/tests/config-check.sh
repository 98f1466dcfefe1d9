#!/usr/bin/env bash
# Every option the fragments ask for is in the built kernel's final .config, and the
# check itself fails on an option that did not survive (so it cannot pass vacuously).
# usage: config-check.sh FINAL_DOT_CONFIG
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../scripts/common.sh
source "$here/../../scripts/common.sh"
final=$1
"$here/../check-config.sh" "$final" "$here"/../fragments/*.conf >&2
bogus=$(mktemp)
trap 'rm -f "$bogus"' EXIT
printf 'CONFIG_HYPER_NO_SUCH_OPTION=y\n# CONFIG_VIRTIO_MMIO is not set\n' > "$bogus"
if out=$("$here/../check-config.sh" "$final" "$bogus" 2>&1); then
  die "check-config accepted a fragment that cannot be satisfied"
fi
grep -q "2 of 2 requested options" <<<"$out" || die "check-config did not name both bad options: $out"
log "config check: fragments satisfied; a bad fragment is rejected"

#!/usr/bin/env bash
# usage: check-config.sh FINAL_DOT_CONFIG FRAGMENT...
# Fails (exit 1) naming every option a fragment asked for that did not survive
# `make olddefconfig`: `CONFIG_X=v` must appear verbatim, `# CONFIG_X is not set` must not be set.
set -euo pipefail
final=$1; shift
[ -f "$final" ] || { echo "check-config: no such .config: $final" >&2; exit 2; }
bad=0; checked=0
for frag in "$@"; do
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*)
        checked=$((checked + 1))
        if ! grep -qxF -- "$line" "$final"; then
          opt=${line%%=*}
          got=$(grep -E "^(# )?$opt[= ]" "$final" || echo "absent")
          echo "check-config: $(basename "$frag"): wanted '$line', final .config has '$got'" >&2
          bad=$((bad + 1))
        fi ;;
      "# CONFIG_"*" is not set")
        checked=$((checked + 1))
        opt=${line#\# }; opt=${opt%% *}
        if grep -qE "^$opt=" "$final"; then
          echo "check-config: $(basename "$frag"): wanted $opt unset, final .config has '$(grep -E "^$opt=" "$final")'" >&2
          bad=$((bad + 1))
        fi ;;
    esac
  done < "$frag"
done
if [ "$bad" -ne 0 ]; then
  echo "check-config: $bad of $checked requested options did not survive olddefconfig" >&2
  exit 1
fi
echo "check-config: all $checked requested options present in $final"

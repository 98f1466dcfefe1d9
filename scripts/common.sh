# Shared by the project's shell scripts: paths, logging, apt installs.
# shellcheck shell=bash
HYPER_ROOT=${HYPER_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
# Expensive artefacts (guest kernel, test-host kernel) live outside the work tree,
# keyed by the hash of their inputs, so a fresh clone reuses them.
HYPER_CACHE=${HYPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hyper}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# median: the median of the integers on stdin, one per line.
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)) }'; }
die() { log "error: $*"; exit 1; }

# apt_need PKG...: installs the Debian packages that are missing (needs root).
apt_need() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); install them as root"
  log "apt-get install ${missing[*]}"
  if [ ! -f /var/lib/apt/periodic/hyper-updated ] || ! apt-cache policy "${missing[0]}" | grep -q Candidate; then
    apt-get update -qq >&2 && mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/hyper-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
}

# hash_inputs FILE...: one sha256 over the named files' contents and names.
hash_inputs() {
  local f
  for f in "$@"; do printf '%s\n' "$(basename "$f")"; cat "$f"; done | sha256sum | cut -c1-16
}

#!/usr/bin/env bash
# Builds the images the cluster suite needs and imports them into the node's
# containerd (up.sh --node), since no registry can be reached:
#   herald:e2e and herald:e2e-canary   one build of herald under two tags
#                                      (the canary needs a second tag)
#   herald:e2e-broken                  the same build, but every HTTP request it
#                                      makes goes to a proxy that is not there
#                                      (HTTP_PROXY): a release whose deliveries
#                                      all fail, for the aborted canary
#   redis:e2e                          Debian's redis-server
# Each image is one layer: the program, the shared libraries it links and
# the few files it needs, laid out like the project's Dockerfile (/herald,
# user 65532, workdir /var/lib/herald).
#
# Usage: e2e/k8s/images.sh [--dir DIR] [--herald PATH]
#   --dir DIR      the state dir of up.sh (default ${TMPDIR:-/tmp}/herald-k8s)
#   --herald PATH  the herald binary (default target/release/herald, else
#                  target/debug/herald)
# Prints the image names, one a line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
log() { printf 'e2e/k8s images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

dir="${TMPDIR:-/tmp}/herald-k8s"
herald=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
        --herald) herald="${2:?--herald needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
if [[ -z "$herald" ]]; then
    for c in "${CARGO_TARGET_DIR:-$root/target}/release/herald" "${CARGO_TARGET_DIR:-$root/target}/debug/herald"; do
        [[ -x "$c" ]] && { herald="$c"; break; }
    done
fi
[[ -x "$herald" ]] || die "no herald binary (build one with cargo build, or pass --herald)"
[[ -S "$dir/containerd.sock" ]] || die "no node's containerd at $dir (start one with e2e/k8s/up.sh --node)"
redis="$(command -v redis-server || true)"
[[ -n "$redis" ]] || die "redis-server is required (Debian: redis-server)"
certs=/etc/ssl/certs/ca-certificates.crt
[[ -f "$certs" ]] || die "$certs is missing (Debian: ca-certificates)"

ctr_import() {
    ctr --address "$dir/containerd.sock" -n k8s.io images import "$1" >/dev/null \
        || die "could not import $1 into the node's containerd"
}

mkdir -p "$dir/images"
python3 "$here/image.py" --out "$dir/images/herald.tar" \
    --name docker.io/library/herald:e2e --name docker.io/library/herald:e2e-canary \
    --program "$herald:/herald" --file "$certs:$certs" \
    --dir /var/lib/herald:755:65532 --dir /tmp:1777 \
    --env "SSL_CERT_FILE=$certs" --user 65532:65532 --workdir /var/lib/herald \
    --entrypoint '["/herald"]' --cmd '["--help"]'
ctr_import "$dir/images/herald.tar"
python3 "$here/image.py" --out "$dir/images/herald-broken.tar" --name docker.io/library/herald:e2e-broken \
    --program "$herald:/herald" --file "$certs:$certs" \
    --dir /var/lib/herald:755:65532 --dir /tmp:1777 \
    --env "SSL_CERT_FILE=$certs" --env HTTP_PROXY=http://127.0.0.1:9 \
    --user 65532:65532 --workdir /var/lib/herald \
    --entrypoint '["/herald"]' --cmd '["--help"]'
ctr_import "$dir/images/herald-broken.tar"
# The manifests run `redis-server ARGS` as the command: it must be on PATH.
python3 "$here/image.py" --out "$dir/images/redis.tar" --name docker.io/library/redis:e2e \
    --program "$redis:/usr/local/bin/redis-server" --dir /data:1777 --dir /tmp:1777 \
    --env PATH=/usr/local/bin:/usr/bin:/bin --workdir /data --cmd '["redis-server"]'
ctr_import "$dir/images/redis.tar"
log "imported herald:e2e, herald:e2e-canary, herald:e2e-broken (from $herald) and redis:e2e"
printf '%s\n' herald:e2e herald:e2e-canary herald:e2e-broken redis:e2e

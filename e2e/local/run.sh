#!/usr/bin/env bash
# The local e2e suite: the herald binary as sandbox and agent, plus a webhook
# receiver, as real processes on 127.0.0.1; prints a pass/fail table and
# exits non-zero when a scenario fails. Needs python3 (standard library only).
#
# Usage: e2e/local/run.sh [--only limits,failover,...] [--list] [--keep]
# HERALD_BIN: the binary to test (default target/debug/herald; build it first).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${HERALD_BIN:-$root/target/debug/herald}"

command -v python3 >/dev/null || { echo "e2e/local: python3 is required" >&2; exit 2; }
if [[ ! -x "$bin" ]]; then
    echo "e2e/local: no herald binary at $bin (run cargo build, or set HERALD_BIN)" >&2
    exit 2
fi

export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the source tree
# exec: signals reach the Python runner directly, which stops its children.
exec python3 "$here/scenarios.py" --bin "$bin" "$@"

#!/usr/bin/env bash
# Stops the control plane (and node) that up.sh started from a state dir, by
# the pids it recorded: SIGTERM, then SIGKILL after 10 s. The state dir stays
# for inspection (logs/), except the pid files.
#
# Usage: e2e/k8s/down.sh [--dir DIR]   (default ${TMPDIR:-/tmp}/herald-k8s)
set -euo pipefail

dir="${TMPDIR:-/tmp}/herald-k8s"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) printf 'e2e/k8s: unknown argument %s\n' "$1" >&2; exit 2 ;;
    esac
done
[[ -d "$dir/pids" ]] || exit 0

pids=()
for f in "$dir"/pids/*; do
    [[ -f "$f" ]] || continue
    # The watchdog is what may be running this script: leave it be.
    [[ "$(basename "$f")" == watchdog && "$(cat "$f")" == "$PPID" ]] && continue
    pid="$(cat "$f")"
    # Each component leads its own session (setsid): stop the whole group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
done
for _ in $(seq 1 50); do
    left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [[ $left == 0 ]] && break
    sleep 0.2
done
for pid in "${pids[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
done
rm -rf "$dir/pids"
printf 'e2e/k8s: stopped the processes of %s\n' "$dir" >&2

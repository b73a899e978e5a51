#!/usr/bin/env bash
# Builds the pinned Kubernetes release (and its etcd) from the upstream Go
# modules named in e2e/k8s/go.mod, into a cache directory outside the tree,
# and prints that directory.
#
# Nothing upstream is vendored here: go.mod/go.sum pin k8s.io/kubernetes and
# its staging modules (all at the same release), and the Go module proxy and
# build cache do the rest. A second run with a warm build cache takes seconds.
#
# Usage: e2e/k8s/build.sh [--node]
#   --node   also build the node: kubelet, kube-proxy, the pod sandbox's
#            pause process, and CoreDNS (its own module, coredns/go.mod, so
#            that its dependencies do not move Kubernetes' pinned ones)
# Environment:
#   HERALD_K8S_CACHE   where binaries go (default: ${XDG_CACHE_HOME:-~/.cache}/herald/k8s)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { printf 'e2e/k8s build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

node=0
for arg in "$@"; do
    case "$arg" in
        --node) node=1 ;;
        *) die "unknown argument $arg (usage: build.sh [--node])" ;;
    esac
done

command -v go >/dev/null || die "go is not installed; the control plane is built from Go modules (Go >= 1.24)"

version="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$here/go.mod")"
[[ -n "$version" ]] || die "go.mod does not require k8s.io/kubernetes"
bin="${HERALD_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald/k8s}/$version/bin"
mkdir -p "$bin"

pkgs=(./etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler)
if [[ $node == 1 ]]; then
    pkgs+=(k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy ./pause)
fi

# Stamp the release into the binaries as upstream's build does, so the API
# server reports its real version (Helm's kubeVersion checks, kubectl's skew
# warning and `kubectl version` read it).
IFS=. read -r major minor _ <<<"${version#v}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

start=$SECONDS
# -trimpath keeps machine paths out of the binaries; CGO off gives static
# binaries, as upstream releases are (kubelet needs no cgo on Linux either).
(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$bin/" "${pkgs[@]}") \
    || die "go build failed (see above)"
if [[ $node == 1 ]]; then
    (cd "$here/coredns" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$bin/coredns" .) \
        || die "go build of CoreDNS failed (see above)"
fi
log "Kubernetes $version built in $((SECONDS - start))s: $bin"
printf '%s\n' "$bin"

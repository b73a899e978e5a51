#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler of the release pinned in
# e2e/k8s/go.mod (built by build.sh), with generated certificates, RBAC and
# the admission plugins a normal cluster has. Writes an admin kubeconfig and
# prints its path as the last line of stdout.
#
# With --node it also starts a node (node.sh): containerd, kubelet,
# kube-proxy and CoreDNS, with pods on a private bridge; the API server then
# listens on the bridge's address (10.88.0.1) instead of 127.0.0.1, so that
# pods reach it too.
#
# Usage: e2e/k8s/up.sh [--node] [--dir DIR] [--owner-pid PID] [--no-build]
#   --dir DIR        state dir: certificates, data, logs, pids, kubeconfig
#                    (default ${TMPDIR:-/tmp}/herald-k8s); must not hold a
#                    running control plane (down.sh stops one)
#   --owner-pid PID  stop everything (down.sh) once process PID has exited;
#                    test harnesses pass their own pid so nothing outlives them
#   --no-build       use the binaries already in the cache
#   --node           start a node as well (root; see node.sh)
# Stop it with: e2e/k8s/down.sh [--dir DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly here
log() { printf 'e2e/k8s: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

dir="${TMPDIR:-/tmp}/herald-k8s"
owner=""
build=1
node=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
        --owner-pid) owner="${2:?--owner-pid needs a value}"; shift 2 ;;
        --no-build) build=0; shift ;;
        --node) node=1; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
for tool in openssl python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

start=$SECONDS
if [[ $build == 1 ]]; then
    if [[ $node == 1 ]]; then bin="$("$here/build.sh" --node)"; else bin="$("$here/build.sh")"; fi
else
    version="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$here/go.mod")"
    bin="${HERALD_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald/k8s}/$version/bin"
fi
for b in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    [[ -x "$bin/$b" ]] || die "$bin/$b is missing (run e2e/k8s/build.sh)"
done
api_ip=127.0.0.1
if [[ $node == 1 ]]; then
    # shellcheck source=e2e/k8s/node.sh
    source "$here/node.sh"
    node_check_tools
    api_ip="$NODE_IP"
fi

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [[ -d "$dir/pids" ]]; then
    for f in "$dir"/pids/*; do
        [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null \
            && die "a control plane is already running from $dir (stop it with e2e/k8s/down.sh --dir $dir)"
    done
fi
rm -rf "$dir/pids" "$dir/logs" "$dir/etcd" "$dir/pki"
mkdir -p "$dir/pids" "$dir/logs" "$dir/pki" "$dir/etcd"
pki="$dir/pki"

# Stops what was started so far when this script fails half-way.
up_ok=0
on_exit() {
    if [[ $up_ok == 0 ]]; then
        log "start-up failed; last log lines:"
        for f in "$dir"/logs/*.log; do
            [[ -f "$f" ]] || continue
            printf -- '--- %s\n' "$f" >&2
            tail -n 15 "$f" >&2
        done
        "$here/down.sh" --dir "$dir" >/dev/null 2>&1 || true
    fi
}
trap on_exit EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ------------------------------------------------------------ certificates

# One CA signs everything: serving certs, client certs, and (through the
# controller-manager) CSRs. The service-account tokens get their own key.
openssl_quiet() { openssl "$@" 2>/dev/null || die "openssl $1 failed"; }

openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=herald-e2e-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt"
openssl_quiet genrsa -out "$pki/sa.key" 2048
openssl_quiet rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

# cert NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA.
cert() {
    local name="$1" subject="$2" ext="$3"
    openssl_quiet req -new -newkey rsa:2048 -nodes -subj "$subject" \
        -keyout "$pki/$name.key" -out "$pki/$name.csr"
    printf '%s\n' "$ext" > "$pki/$name.ext"
    openssl_quiet x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 3650 -extfile "$pki/$name.ext" -out "$pki/$name.crt"
    rm -f "$pki/$name.csr" "$pki/$name.ext"
}
client_ext="keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
# The first address of the service range is the kubernetes Service's IP.
readonly SERVICE_CIDR="10.96.0.0/16" KUBERNETES_SERVICE_IP="10.96.0.1"
cert apiserver "/CN=kube-apiserver" "keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.88.0.1,IP:$KUBERNETES_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=kubernetes-admin" "$client_ext"
cert controller-manager "/CN=system:kube-controller-manager" "$client_ext"
cert scheduler "/CN=system:kube-scheduler" "$client_ext"
# The API server's identity towards kubelets (logs, exec, port-forward).
cert apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" "$client_ext"

ETCD_PORT="$(free_port)"
ETCD_PEER_PORT="$(free_port)"
API_PORT="$(free_port)"
readonly ETCD_PORT ETCD_PEER_PORT API_PORT
server="https://$api_ip:$API_PORT"

# kubeconfig NAME CERT: a kubeconfig that authenticates with a client cert.
kubeconfig() {
    local name="$1" cred="$2"
    cat > "$dir/$name.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: herald-e2e
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: $name
  user:
    client-certificate: $pki/$cred.crt
    client-key: $pki/$cred.key
contexts:
- name: herald-e2e
  context: {cluster: herald-e2e, user: $name}
current-context: herald-e2e
YAML
}
kubeconfig admin admin
kubeconfig controller-manager controller-manager
kubeconfig scheduler scheduler

# ------------------------------------------------------------ processes

# start_program NAME PATH ARGS...: runs PATH in the background in a session
# of its own, with its log and pid in the state dir.
start_program() {
    local name="$1" path="$2"; shift 2
    setsid "$path" "$@" >"$dir/logs/$name.log" 2>&1 < /dev/null &
    echo $! > "$dir/pids/$name"
}
# start NAME ARGS...: the same for a binary of the release ($bin).
start() { local name="$1"; shift; start_program "$name" "$bin/$name" "$@"; }
alive() { kill -0 "$(cat "$dir/pids/$1")" 2>/dev/null; }

# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds, failing
# at once when process NAME has died.
wait_for() {
    local name="$1" budget="$2"; shift 2
    local deadline=$((SECONDS + budget))
    until "$@" >/dev/null 2>&1; do
        alive "$name" || die "$name exited during start-up (log: $dir/logs/$name.log)"
        ((SECONDS < deadline)) || die "$name was not ready within ${budget}s (log: $dir/logs/$name.log)"
        sleep 0.2
    done
}

# Test data: fsync buys nothing for a throw-away store and costs seconds.
start etcd --name herald-e2e --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "herald-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

[[ $node == 1 ]] && node_network
# Admission: the release's default set plus NodeRestriction, as kubeadm runs it.
start kube-apiserver \
    --bind-address "$api_ip" --advertise-address "$api_ip" --secure-port "$API_PORT" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$pki/ca.crt" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --profiling=false
wait_for kube-apiserver 90 curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$server/readyz"

start kube-controller-manager \
    --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 \
    --leader-elect=false \
    --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --controllers '*'
start kube-scheduler \
    --kubeconfig "$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 \
    --leader-elect=false

admin=(kubectl --kubeconfig "$dir/admin.kubeconfig" --request-timeout=10s)
# The controller-manager is working once it has given the default namespace
# its service account (the token and root-CA controllers run beside it).
wait_for kube-controller-manager 60 "${admin[@]}" get serviceaccount default -n default
wait_for kube-controller-manager 60 "${admin[@]}" get configmap kube-root-ca.crt -n default
alive kube-scheduler || die "kube-scheduler exited during start-up (log: $dir/logs/kube-scheduler.log)"
if [[ $node == 1 ]]; then
    node_start=$SECONDS
    start_node
    log "node $NODE_NAME Ready in $((SECONDS - node_start))s"
fi

if [[ -n "$owner" ]]; then
    # Bounded by the owner's life: polls once a second and stops everything
    # when the owner is gone.
    # shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2/down.sh" --dir "$3"' \
        watchdog "$owner" "$here" "$dir" >/dev/null 2>&1 < /dev/null &
    echo $! > "$dir/pids/watchdog"
fi

up_ok=1
log "control plane up in $((SECONDS - start))s: $server ($("${admin[@]}" version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])' 2>/dev/null || echo '?'))"
log "stop it with: e2e/k8s/down.sh --dir $dir"
printf '%s\n' "$dir/admin.kubeconfig"

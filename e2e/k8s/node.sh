# shellcheck shell=bash disable=SC2154 # dir, pki, bin, here, admin: set by up.sh
# The node of the test cluster, sourced by up.sh --node: containerd (with
# runc and the CNI bridge plugin, all from Debian), kubelet and kube-proxy of
# the pinned release, CoreDNS as the cluster's DNS, the pod sandbox image
# built here, and local PersistentVolumes. Everything stays on this machine:
# pods live in network namespaces on a private bridge (herald0, 10.88.0.0/24)
# whose gateway address is the node's, and the API server, kubelet and DNS
# listen on that address only.
#
# Expects from up.sh: dir, pki, bin, here, server, API_PORT, SERVICE_CIDR,
# and the functions cert, kubeconfig, start, alive, wait_for, die, log.

readonly NODE_NAME="herald-e2e-node"
readonly NODE_BRIDGE="herald0"
readonly NODE_IP="10.88.0.1"
readonly POD_CIDR="10.88.0.0/24"
readonly CLUSTER_DOMAIN="cluster.local"
readonly SANDBOX_IMAGE="localhost/herald-e2e/pause:1"
# Local volumes for the operator's claims (queue and spool): enough for the
# e2e suite's tiers, each a directory of the state dir, not reused (Retain):
# a cluster lives for one suite run.
readonly LOCAL_VOLUMES=24

node_check_tools() {
    local t
    for t in containerd containerd-shim-runc-v2 runc ctr iptables ip conntrack; do
        command -v "$t" >/dev/null || die "$t is required for --node (Debian: containerd runc iptables iproute2 conntrack)"
    done
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] \
        || die "the CNI plugins are required for --node (Debian: containernetworking-plugins)"
    for b in kubelet kube-proxy coredns pause; do
        [[ -x "$bin/$b" ]] || die "$bin/$b is missing (run e2e/k8s/build.sh --node)"
    done
    [[ -d /sys/fs/cgroup/memory ]] || die "kubelet here runs on cgroup v1 (cgroupfs); /sys/fs/cgroup/memory is missing"
}

# A cluster that was killed without down.sh (its owner and watchdog killed
# together) leaves its pods' network namespaces behind, still plugged into
# the bridge with their addresses. The next cluster's IPAM starts afresh and
# hands the same addresses out again, and the kubelet's probes then reach the
# dead namespace ("connection refused") instead of the new pod. A namespace
# with no process in it runs nothing; one whose eth0 holds a pod address is
# one of ours.
clear_dead_pod_namespaces() {
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ { print $1 }'); do
        [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] || continue
        ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | grep -qF "inet ${POD_CIDR%.*/*}." || continue
        ip netns delete "$ns" 2>/dev/null && log "removed $ns, left behind by an earlier cluster"
    done
}

# The bridge exists before the API server starts: the server listens on it.
node_network() {
    clear_dead_pod_namespaces
    if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
        ip link add "$NODE_BRIDGE" type bridge || die "could not create bridge $NODE_BRIDGE (needs CAP_NET_ADMIN)"
    fi
    ip addr replace "$NODE_IP/24" dev "$NODE_BRIDGE"
    ip link set "$NODE_BRIDGE" up
    # Service traffic between pods on one bridge must pass iptables (DNAT
    # and its reply), and pods reach the node through forwarding.
    modprobe br_netfilter 2>/dev/null || true
    sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
        || die "could not set net.ipv4.ip_forward / net.bridge.bridge-nf-call-iptables"
}

node_certs() {
    local ext="keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "$ext"
    cert kube-proxy "/CN=system:kube-proxy" "$ext"
    cert kubelet-serving "/CN=$NODE_NAME" "keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
    kubeconfig kubelet kubelet-client
    kubeconfig kube-proxy kube-proxy
}

node_containerd() {
    mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/cni/ipam"
    cat > "$dir/containerd/config.toml" <<TOML
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd-ttrpc.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  # The machine gives no CAP_SYS_RESOURCE: an OOM score below containerd's
  # own (the kubelet asks -998 for sandboxes) fails with EPERM in runc.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
TOML
    cat > "$dir/cni/net.d/10-herald-e2e.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "herald-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$dir/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
    start_program containerd "$(command -v containerd)" --config "$dir/containerd/config.toml"
    wait_for containerd 30 ctr --address "$dir/containerd.sock" version
}

# ctr against the node's containerd, in the namespace the kubelet uses.
node_ctr() { ctr --address "$dir/containerd.sock" -n k8s.io "$@"; }

node_images() {
    python3 "$here/image.py" --out "$dir/pause.tar" --name "$SANDBOX_IMAGE" \
        --program "$bin/pause:/pause" --entrypoint '["/pause"]' >/dev/null 2>&1 \
        || die "could not build the pause image"
    node_ctr images import "$dir/pause.tar" >/dev/null || die "could not import the pause image"
}

node_kubelet() {
    mkdir -p "$dir/kubelet"
    # Pods with dnsPolicy Default would read this; no upstream DNS exists.
    printf 'nameserver %s\n' "$NODE_IP" > "$dir/resolv.conf"
    cat > "$dir/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(free_port)
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
containerRuntimeEndpoint: unix://$dir/containerd.sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: [$NODE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $dir/resolv.conf
podCIDR: $POD_CIDR
maxPods: 60
serializeImagePulls: false
# A shared CI machine: never evict the suite's pods or delete its images
# for disk or memory the rest of the machine uses.
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
YAML
    start kubelet --config "$dir/kubelet/config.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
        --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --root-dir "$dir/kubelet" \
        --v 1
}

node_proxy() {
    cat > "$dir/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
iptables: {localhostNodePorts: false}
# Leave the machine's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
    start kube-proxy --config "$dir/kube-proxy.yaml"
}

node_dns() {
    cat > "$dir/Corefile" <<COREFILE
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$(free_port)
    ready 127.0.0.1:$(free_port)
    cache 5
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $dir/coredns.kubeconfig herald-e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
}
COREFILE
    start coredns -conf "$dir/Corefile"
}

# Objects the node needs in the cluster: the API server's access to kubelets,
# CoreDNS's read access, a default StorageClass with local volumes.
node_objects() {
    local volumes="" i
    for i in $(seq 1 "$LOCAL_VOLUMES"); do
        mkdir -p "$dir/volumes/pv-$i"
        chmod 0777 "$dir/volumes/pv-$i"
        volumes+="---
apiVersion: v1
kind: PersistentVolume
metadata: {name: herald-e2e-local-$i, labels: {herald.dev/e2e: local}}
spec:
  capacity: {storage: 5Gi}
  accessModes: [ReadWriteOnce, ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  hostPath: {path: $dir/volumes/pv-$i, type: Directory}
"
    done
    "${admin[@]}" apply -f - >/dev/null <<YAML || die "could not create the node's RBAC, StorageClass and volumes"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: herald-e2e:apiserver-kubelet-client}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:kubelet-api-admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver-kubelet-client}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: herald-e2e:coredns}
rules:
  - apiGroups: [""]
    resources: [services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: herald-e2e:coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: herald-e2e:coredns}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: herald-e2e:coredns}]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
$volumes
YAML
}

node_ready() {
    [[ "$("${admin[@]}" get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

start_node() {
    printf 'bin=%q\n' "$bin" > "$dir/node.env"
    node_certs
    cert coredns "/CN=herald-e2e:coredns" "keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    kubeconfig coredns coredns
    node_objects
    node_containerd
    node_images
    node_kubelet
    node_proxy
    node_dns
    wait_for kubelet 120 node_ready
    alive kube-proxy || die "kube-proxy exited during start-up (log: $dir/logs/kube-proxy.log)"
    alive coredns || die "coredns exited during start-up (log: $dir/logs/coredns.log)"
}

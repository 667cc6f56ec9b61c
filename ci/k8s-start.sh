#!/usr/bin/env bash
# Start a real single-node Kubernetes on 127.0.0.1 over the local Docker engine:
# etcd, kube-apiserver (RBAC, token auth), kube-controller-manager, kube-scheduler, kubelet (dockershim).
# Prints the kubeconfig path last. Needs ci/k8s-build.sh first. Stop with ci/k8s-stop.sh.
# Already answering: prints the kubeconfig and does nothing else.
# Images: none can be pulled here, so the pause image and a busybox image are made locally; a test image
# of your own is loaded with `docker import`/`docker build` and used with imagePullPolicy: Never.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
K8S_CACHE=${K8S_CACHE:-/var/cache/launch-k8s}
BIN=$K8S_CACHE/bin
K8S_RUN=${K8S_RUN:-/tmp/launch-k8s}
PKI=$K8S_RUN/pki LOGS=$K8S_RUN/logs RUN=$K8S_RUN/run
mkdir -p "$PKI" "$LOGS" "$RUN"
export PATH=$BIN:$PATH

KC=$K8S_RUN/admin.kubeconfig
if [ -f "$KC" ] && [ -x "$BIN/kubectl" ] && "$BIN/kubectl" --kubeconfig "$KC" get --raw /readyz >/dev/null 2>&1; then
  echo "$KC"; exit 0
fi
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run ci/k8s-build.sh first" >&2; exit 1; }
done
command -v etcd >/dev/null || { echo "missing etcd: apt-get install etcd-server (ci/k8s-build.sh does)" >&2; exit 1; }
[ -x "$here/docker.sh" ] || { echo "missing $here/docker.sh (starts the Docker engine with the runc wrapper the kubelet needs here)" >&2; exit 1; }
"$here/docker.sh"   # Docker engine up, with the runc wrapper this VM needs

# Local images: the pod sandbox ("pause") and busybox:local
if ! docker image inspect k8s.gcr.io/pause:3.2 >/dev/null 2>&1; then
  d=$(mktemp -d); printf '#include <unistd.h>\n#include <signal.h>\nstatic void q(int s){_exit(0);}\nint main(){signal(SIGTERM,q);signal(SIGINT,q);for(;;)pause();}\n' > "$d/pause.c"
  mkdir -p "$d/root"; gcc -static -O2 -o "$d/root/pause" "$d/pause.c"
  tar -C "$d/root" -c . | docker import -c 'ENTRYPOINT ["/pause"]' - k8s.gcr.io/pause:3.2 >/dev/null; rm -rf "$d"
fi
if ! docker image inspect busybox:local >/dev/null 2>&1; then
  d=$(mktemp -d); mkdir -p "$d/bin" "$d/tmp" "$d/etc"; cp /bin/busybox "$d/bin/"
  for c in $("$d/bin/busybox" --list); do [ "$c" = busybox ] || ln -s busybox "$d/bin/$c"; done
  tar -C "$d" -c . | docker import -c 'CMD ["sh"]' - busybox:local >/dev/null; rm -rf "$d"
fi

if [ ! -f "$PKI/ca.crt" ]; then
  ( cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=launch-k8s-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
    printf "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n" > apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    echo "$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n'),admin,admin,system:masters" > tokens.csv )
fi
TOKEN=$(cut -d, -f1 "$PKI/tokens.csv")
cat > "$KC" <<KCF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$PKI/ca.crt"}
users:
- name: admin
  user: {token: "$TOKEN"}
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
KCF

start() { local name=$1; shift; setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null & echo $! >"$RUN/$name.pid"; }
wait_for() { local what=$1; shift; for _ in $(seq 1 120); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done; echo "timed out waiting for $what (logs in $LOGS)" >&2; return 1; }

start etcd etcd --name launch --data-dir "$RUN/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster launch=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
wait_for etcd curl -sf http://127.0.0.1:2379/health

start kube-apiserver kube-apiserver --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=6443 --insecure-port=0 \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
  --authorization-mode=RBAC --allow-privileged=true \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range=10.0.0.0/24 --kubelet-preferred-address-types=InternalIP,Hostname \
  --cert-dir="$RUN/apiserver-certs" --v=1
wait_for kube-apiserver curl -sf --cacert "$PKI/ca.crt" -H "Authorization: Bearer $TOKEN" https://127.0.0.1:6443/readyz

start kube-controller-manager kube-controller-manager --kubeconfig="$KC" --leader-elect=false \
  --bind-address=127.0.0.1 --port=0 --secure-port=10257 \
  --authentication-kubeconfig="$KC" --authorization-kubeconfig="$KC" \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --use-service-account-credentials=false --v=1
start kube-scheduler kube-scheduler --kubeconfig="$KC" --leader-elect=false \
  --bind-address=127.0.0.1 --port=0 --secure-port=10259 \
  --authentication-kubeconfig="$KC" --authorization-kubeconfig="$KC" --v=1

mkdir -p "$RUN/kubelet"
start kubelet kubelet --kubeconfig="$KC" --hostname-override=127.0.0.1 \
  --address=127.0.0.1 --port=10250 --read-only-port=0 --healthz-bind-address=127.0.0.1 \
  --root-dir="$RUN/kubelet" --cert-dir="$RUN/kubelet/pki" \
  --container-runtime=docker --docker-endpoint=unix:///var/run/docker.sock \
  --pod-infra-container-image=k8s.gcr.io/pause:3.2 --cgroup-driver=cgroupfs --fail-swap-on=false \
  --cluster-dns=10.0.0.10 \
  --eviction-hard='memory.available<100Mi,nodefs.available<1%,imagefs.available<1%' \
  --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
  --volume-plugin-dir="$RUN/kubelet/volume-plugins" --v=1

wait_for "node Ready" bash -c "kubectl --kubeconfig '$KC' get node 127.0.0.1 -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"
wait_for "default serviceaccount" kubectl --kubeconfig "$KC" get serviceaccount default
echo "$KC"

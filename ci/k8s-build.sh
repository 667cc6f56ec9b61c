#!/usr/bin/env bash
# Build (once) a real single-node Kubernetes (v1.20, from Debian bookworm's own `kubernetes` source package)
# into $K8S_CACHE/bin: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl.
# About 18 minutes and 1.4 GB of memory on a 2-core machine; reused when the binaries are already there.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/apt.sh"
set -euo pipefail
K8S_CACHE=${K8S_CACHE:-/var/cache/launch-k8s}
BIN=$K8S_CACHE/bin
want="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
have=1; for b in $want; do [ -x "$BIN/$b" ] || have=0; done
if [ $have = 1 ]; then echo "kubernetes binaries cached in $BIN"; exit 0; fi

export DEBIAN_FRONTEND=noninteractive
if [ ! -f /etc/apt/sources.list.d/launch-k8s-src.sources ]; then
  cat > /etc/apt/sources.list.d/launch-k8s-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt_get update -qq
apt_get install -y -qq golang-go rsync dpkg-dev etcd-server docker.io busybox-static jq openssl curl >/dev/null
mkdir -p "$K8S_CACHE/src" "$BIN"
cd "$K8S_CACHE/src"
[ -d kubernetes ] || { apt_get source -qq kubernetes >/dev/null; mv "$(find . -maxdepth 1 -type d -name 'kubernetes-*' | head -1)" kubernetes; }
cd kubernetes
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kubectl"
for b in $want; do install -m 755 "_output/local/bin/linux/amd64/$b" "$BIN/$b"; done
echo "kubernetes binaries built into $BIN"

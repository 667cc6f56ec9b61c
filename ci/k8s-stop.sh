#!/usr/bin/env bash
# Stop what ci/k8s-start.sh started (by recorded PID only) and remove the pod containers the kubelet left.
K8S_RUN=${K8S_RUN:-/tmp/launch-k8s}
RUN=$K8S_RUN/run
for c in kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
  [ -f "$RUN/$c.pid" ] && { kill "$(cat "$RUN/$c.pid")" 2>/dev/null; rm -f "$RUN/$c.pid"; }
done
sleep 2
ids=$(docker ps -aq --filter name=k8s_ 2>/dev/null); [ -n "$ids" ] && docker rm -f $ids >/dev/null
rm -rf "$RUN/etcd"
true

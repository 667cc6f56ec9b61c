#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine (as root), then run the whole suite.
# Docker engine, PostgreSQL, Chromium, a single-node Slurm, a local single-node Kubernetes (built once, cached in
# /var/cache/launch-k8s), the local Python base image, the venv with the package and test tools.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/apt.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
log=${CI_LOG_DIR:-/tmp/jupyter-launch-ci}; mkdir -p "$log"
t0=$(date +%s)
step() { echo "== $(( $(date +%s) - t0 ))s: $*"; }

step "apt packages"
need=""
for p in docker.io jq busybox-static postgresql chromium debootstrap golang-go rsync dpkg-dev etcd-server openssl curl; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then apt_get update -qq && apt_get install -y -qq $need >/dev/null; fi

step "Kubernetes build (background; a no-op when cached)"
bash ci/k8s-build.sh >"$log/k8s-build.log" 2>&1 &
k8s_build=$!

step "Docker engine and the local Python base image"
bash ci/docker.sh
bash ci/python-base.sh >"$log/python-base.log" 2>&1 &
base_image=$!

step "Slurm: munged, slurmctld, slurmd on this machine (installs slurm-wlm and munge when missing)"
bash ci/slurm.sh

step "venv with jupyter-launch[test]"
bash ci/setup.sh test
.venv/bin/python -m pip install -q playwright >/dev/null
step "configurable-http-proxy from npm (the JupyterHub tests' proxy; jupyterhub itself is in the test extra)"
if ! command -v configurable-http-proxy >/dev/null; then
  command -v npm >/dev/null || { apt_get update -qq && apt_get install -y -qq npm >/dev/null; }
  npm install -g --no-audit --no-fund configurable-http-proxy >/dev/null
fi

wait $base_image || { echo "python base image failed; see $log/python-base.log" >&2; cat "$log/python-base.log" >&2; exit 1; }
step "waiting for the Kubernetes build"
wait $k8s_build || { echo "Kubernetes build failed; see $log/k8s-build.log" >&2; tail -50 "$log/k8s-build.log" >&2; exit 1; }

step "jest (labextension unit tests)"
# Fail fast: a broken panel model or API client stops the run before the slower Python suite.
(cd labextension && PATH="$PWD/../.venv/bin:$PATH" jlpm test --ci)

step "tests"
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
step "done (pytest exit $rc)"
bash ci/k8s-stop.sh >/dev/null 2>&1 || true
bash ci/slurm-stop.sh >/dev/null 2>&1 || true
exit $rc

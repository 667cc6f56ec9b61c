#!/usr/bin/env bash
# Build the image the Kubernetes tests and bench run jobs in: launch-python:bookworm plus the runner's
# dependencies (a venv at /opt/venv) and this checkout's jupyter_launch package. Cached by tag: the tag is a
# hash of the package's sources, so an unchanged checkout reuses the image. Prints the tag last.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${LAUNCH_PYTHON_IMAGE:-launch-python:bookworm}
tag="jupyter-launch-k8s-test:$( (echo "$base"; find jupyter_launch -name '*.py' -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-12)"
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi
docker image inspect "$base" >/dev/null 2>&1 || { echo "missing base image $base (ci/python-base.sh builds it)" >&2; exit 1; }
ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca.crt"
mkdir -p "$ctx/src"; cp -r jupyter_launch "$ctx/src/"; find "$ctx/src" -name __pycache__ -prune -exec rm -rf {} +
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $base
COPY ca.crt /etc/ssl/certs/launch-build-ca.crt
ENV PIP_CERT=/etc/ssl/certs/launch-build-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -q nbclient nbformat nbconvert ipykernel cloudpickle pyyaml
ENV PATH=/opt/venv/bin:\$PATH PYTHONPATH=/opt/jupyter-launch
COPY src /opt/jupyter-launch
DOCKERFILE
docker build -q -t "$tag" "$ctx" >&2
echo "$tag"

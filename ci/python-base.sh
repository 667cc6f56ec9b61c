#!/usr/bin/env bash
# Make a local Docker image with Debian bookworm and Python 3.11, pip and venv, for machines that cannot pull
# from a registry: job images are built FROM it. Starts the engine first (ci/docker.sh).
# Usage: ci/python-base.sh [TAG]   (default launch-python:bookworm). Idempotent; about 70 s the first time.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/apt.sh"
set -euo pipefail
tag=${1:-launch-python:bookworm}
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/docker.sh" >/dev/null
docker image inspect "$tag" >/dev/null 2>&1 && { echo "$tag"; exit 0; }
command -v debootstrap >/dev/null || { apt_get update -qq; DEBIAN_FRONTEND=noninteractive apt_get install -y -qq debootstrap >/dev/null; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$root" http://deb.debian.org/debian >/dev/null
tar -C "$root" -c . | docker import -c 'CMD ["python3"]' - "$tag" >/dev/null
echo "$tag"

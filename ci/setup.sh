#!/usr/bin/env bash
# Make the project's virtual environment (.venv) and install jupyter-launch into it, editable.
# Usage: ci/setup.sh [EXTRAS]   e.g. ci/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "$extras" ]; then .venv/bin/python -m pip install -q -e ".[$extras]"; else .venv/bin/python -m pip install -q -e .; fi
echo "installed into $(pwd)/.venv"

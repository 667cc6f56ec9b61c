#!/usr/bin/env bash
# Make the project's virtual environment (.venv) and install jupyter-launch into it, editable, showing each step and
# what pip collects and installs as it goes (a fresh machine downloads a few hundred MB; minutes, not seconds).
# Usage: ci/setup.sh [EXTRAS]   e.g. ci/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
t0=$(date +%s)
step() { echo "setup [$(( $(date +%s) - t0 ))s]: $*" >&2; }
# pip's lines worth a person's eye: what it fetches, builds and installs, and every warning and error.
pip_progress() {
  { grep --line-buffered -v -E '^\s*(Requirement already satisfied|Using cached|Obtaining|Preparing metadata|Getting requirements|Checking if build|Installing build dependencies|Building editable|Created wheel|Stored in directory|Attempting uninstall|Found existing|Uninstalling|Successfully uninstalled|  )' || true; } \
    | sed -u 's/^/  /' >&2
}
if [ -x .venv/bin/python ]; then
  step "using the virtual environment in .venv"
else
  step "creating the virtual environment .venv"
  python3 -m venv .venv
fi
step "upgrading pip"
.venv/bin/python -m pip install --progress-bar off --upgrade pip 2>&1 | pip_progress
target=.; [ -n "$extras" ] && target=".[$extras]"
step "installing jupyter-launch${extras:+[$extras]} and its dependencies (the labextension builds with jlpm)"
.venv/bin/python -m pip install --progress-bar off -e "$target" 2>&1 | pip_progress
step "installed into $(pwd)/.venv"

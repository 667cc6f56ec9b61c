"""A data-science kernel of its own for tests: a virtual environment with ipykernel, pandas and matplotlib (not in
the test venv), installed as the kernelspec ``launch-data-test`` beside this Python's own kernels, so agents and
servers running on this venv find it as a user's kernel would be found.

Made once per machine under ``~/.cache/jupyter-launch-tests`` (about a minute, from PyPI); a test fails, naming what
is missing, when it cannot be made. Imported by its module name, like ``docker_engine``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KERNEL = "launch-data-test"
PACKAGES = ("ipykernel", "pandas", "matplotlib")
VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jupyter-launch-tests" / "data-kernel-v1"


def _works(python: Path) -> bool:
    probe = subprocess.run([str(python), "-c", "import ipykernel, pandas, matplotlib"], capture_output=True,
                           timeout=120)
    return probe.returncode == 0


def data_kernel() -> Path:
    """The kernel's Python, made if needed, with its kernelspec installed in this venv's prefix."""
    python = VENV / "bin" / "python"
    if not (python.exists() and _works(python)):
        VENV.parent.mkdir(parents=True, exist_ok=True)
        for cmd in ([sys.executable, "-m", "venv", "--clear", str(VENV)],
                    [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PACKAGES]):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                pytest.fail(f"cannot make the test kernel's environment {VENV} ({' '.join(cmd[-3:])}): "
                            f"{done.stderr.strip()[-800:]}", pytrace=False)
    spec = Path(sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL / "kernel.json"
    wanted = {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
              "display_name": "Python (launch data test)", "language": "python"}
    if not spec.exists() or json.loads(spec.read_text()) != wanted:
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(json.dumps(wanted, indent=1))
    return python


def freeze(python: Path) -> str:
    """``pip freeze`` of that environment: what a job must not change."""
    return subprocess.run([str(python), "-m", "pip", "freeze", "--disable-pip-version-check"], capture_output=True,
                          text=True, check=True, timeout=120).stdout

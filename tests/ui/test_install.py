"""The newcomer's setup command (`bash ci/setup.sh`) on a clean copy shows its steps and pip's progress as it goes; a
plain `pip install .` then ships the labextension: JupyterLab lists it enabled, OK."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Built or local-only folders a fresh checkout does not have.
SKIP = {".venv", "node_modules", "lib", ".git", ".pytest_cache", "__pycache__", "labextension", ".yarn", "build",
        "dist", ".launch-home", "generated"}


def _copy_tree(dst: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder)
        skipped = set()
        for n in names:
            # labextension/ (the TS sources) is kept; jupyter_launch/labextension (the build output) is not.
            if n == "labextension" and here == ROOT:
                continue
            if n in SKIP or n.endswith(".tsbuildinfo"):
                skipped.add(n)
        return skipped

    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)


@pytest.mark.timeout(1200)
def test_setup_shows_its_steps_and_its_install_ships_the_labextension(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _copy_tree(src)
    assert not (src / "jupyter_launch" / "labextension").exists()
    venv = src / ".venv"

    def run(*args: str, timeout: float = 900) -> str:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=src)
        assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc.stdout + proc.stderr

    # The setup command itself: each step on its own line with the seconds so far, pip's fetching in between (it
    # used to run pip -q: minutes of nothing on a fresh machine).
    shown = run("bash", "ci/setup.sh")
    steps = re.findall(r"^setup \[\d+s\]: (.*)$", shown, re.M)
    assert steps[0] == "creating the virtual environment .venv", shown
    assert steps[-1] == f"installed into {src}/.venv", shown
    install = shown.index("installing jupyter-launch and its dependencies")
    assert re.search(r"^  (Collecting|Processing) ", shown[install:], re.M), shown
    assert re.search(r"^  Successfully installed .*jupyter-launch-", shown[install:], re.M), shown
    # What a user's `pip install .` makes (setup's install is editable): a wheel with the labextension in it.
    py = venv / "bin" / "python"
    run(str(py), "-m", "pip", "install", "-q", ".")
    shipped = venv / "share" / "jupyter" / "labextensions" / "jupyter-launch"
    assert (shipped / "package.json").exists(), "the wheel did not put the labextension under share/jupyter"
    assert (shipped / "install.json").exists()
    # `jupyter labextension list` is JupyterLab's command; the package itself needs only jupyter_server.
    run(str(py), "-m", "pip", "install", "-q", "jupyterlab>=4,<5")
    listing = run(str(venv / "bin" / "jupyter"), "labextension", "list")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", listing)
    assert re.search(r"jupyter-launch v\S+ enabled OK \(python, jupyter_launch\)", plain), plain

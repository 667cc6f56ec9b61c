"""The fidelity corpus: every public notebook in tests/notebooks/public run by nbclient directly (what
``jupyter nbconvert --execute`` and papermill return) and through jupyter-launch (embedded client, SQLite store, local
queue, a real agent and runner), compared cell by cell after normalising what varies between runs.

At least 98% must come back equal; each one that does not is listed in docs/fidelity.md with its cause. Notebooks
in nbformat 2 and 3, which nbconvert upgrades as it reads them, are refused at submit (jupyter-launch takes nbformat 4,
``options.read_notebook``): they are checked for that one-line refusal instead, and listed in docs/fidelity.md too.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from fidelity import cells_compared, normalise_outputs
from nbclient import NotebookClient
from jupyter_client.kernelspec import NoSuchKernel
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
import test_docker_backend
from test_docker_backend import docker_queue
from test_docker_backend import run_jobs as run_docker_jobs
from test_local_jobs import run_until_done

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = Path(__file__).resolve().parent / "notebooks" / "public"
CORPUS = sorted(PUBLIC.glob("*/*.ipynb"))
OLD_FORMAT = [p for p in CORPUS if json.loads(p.read_text(encoding="utf-8")).get("nbformat") != 4]
RUNNABLE = [p for p in CORPUS if p not in OLD_FORMAT]
FIDELITY_DOC = ROOT / "docs" / "fidelity.md"
CELL_TIMEOUT = 60
PARALLEL = 3  # kernels at once on each side: the notebooks mostly wait, but every kernel's start is CPU
CLEAN_EXIT_VALUES = ("", "0", "None")  # SystemExit statuses papermill counts as a success
env_image = test_docker_backend.env_image  # the fixture that builds the notebook jobs' image once
# The Docker half: notebooks that need nothing beyond the job image's Python (no ipywidgets there).
ON_DOCKER = ["nbclient/Clear Output.ipynb", "nbclient/Empty Cell.ipynb", "nbclient/Error.ipynb",
             "nbclient/Factorials.ipynb", "nbclient/HelloWorld.ipynb", "nbclient/Inline Image.ipynb",
             "nbclient/SVG.ipynb", "nbclient/Unicode.ipynb", "nbclient/update-display-id.ipynb",
             "papermill/broken1.ipynb", "papermill/simple_execute.ipynb", "papermill/sysexit0.ipynb",
             "papermill/sysexit1.ipynb"]


def corpus_name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def ended_well(ename: str | None, evalue: str | None) -> bool:
    return ename == "SystemExit" and (evalue or "") in CLEAN_EXIT_VALUES


async def run_direct(path: Path, cwd: Path, gate: asyncio.Semaphore) -> tuple[Any, bool]:
    """The notebook as ``jupyter nbconvert --execute`` runs it (nbclient, the kernel its metadata names, stopping at
    the first error), or None where nbclient cannot start it; and whether it succeeded (a clean ``sys.exit()`` is a
    success, as papermill has it)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(cwd)}})
    async with gate:
        try:
            await client.async_execute()
            return nb, True
        except CellExecutionError as exc:
            client.set_widgets_metadata()
            return nb, ended_well(exc.ename, exc.evalue)
        except (CellTimeoutError, DeadKernelError):
            return nb, False
        except (NoSuchKernel, AttributeError):  # AttributeError: nbclient reading a kernelspec that is no mapping
            return None, False


def submit_copies(client: Any, paths: list[Path], tmp_path: Path, queue: str) -> dict[str, tuple[Path, Any]]:
    """Each notebook in a folder of its own (its working folder on both sides), submitted to ``queue``."""
    jobs = {}
    for path in paths:
        name = corpus_name(path)
        folder = tmp_path / queue / re.sub(r"\W", "_", name)
        folder.mkdir(parents=True)
        shutil.copy(path, folder / path.name)
        if path.parent.name == "papermill" and path.stem == "read_check":
            (folder / "check.txt").write_text("checked\n")  # the file papermill's test puts beside it
        jobs[name] = (folder / path.name, client.submit(folder / path.name, root=folder, queue=queue,
                                                          timeout=2 * CELL_TIMEOUT))
    return jobs


# nbclient's runs, by corpus name: the Docker half compares with the ones the local half made, when it ran first.
DIRECT_RUNS: dict[str, tuple[Any, bool]] = {}


async def run_direct_all(jobs: dict[str, tuple[Path, Any]]) -> dict[str, tuple[Any, bool]]:
    gate = asyncio.Semaphore(PARALLEL)
    runs = {name: asyncio.ensure_future(run_direct(path, path.parent, gate))
            for name, (path, _) in jobs.items() if name not in DIRECT_RUNS}
    for name, run in runs.items():
        DIRECT_RUNS[name] = await run
    return {name: DIRECT_RUNS[name] for name in jobs}


def collect(client: Any, jobs: dict[str, tuple[Path, Any]], direct: dict[str, tuple[Any, bool]]) -> dict[str, Any]:
    """name: (direct notebook, direct succeeded, launched notebook, job succeeded, the job's message)."""
    results = {}
    for name, (path, job) in jobs.items():
        record = job.refresh()
        outputs = [o.path for o in job.outputs]
        launched = nbformat.reads(client.read_output(job.id, f"{path.stem}.ipynb").decode(), as_version=4) \
            if f"{path.stem}.ipynb" in outputs else None
        results[name] = (*direct[name], launched, record.state == "succeeded", record.message or record.reason)
    return results


async def run_both(client: Any, tmp_path: Path) -> dict[str, Any]:
    jobs = submit_copies(client, RUNNABLE, tmp_path, "default")
    direct = asyncio.ensure_future(run_direct_all(jobs))
    await run_until_done(client, [job for _, job in jobs.values()], timeout=600, max_jobs=PARALLEL)
    return collect(client, jobs, await direct)


def widget_model_names(nb: Any) -> list[str]:
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return sorted(m.get("model_name") or "" for m in state.values())


def difference(direct: Any, direct_ok: bool, launched: Any, launched_ok: bool, message: str) -> str | None:
    """What differs between the two runs of a notebook, in a few words; None when they agree."""
    if direct is None and not direct_ok and not launched_ok:
        return None  # neither ran it (a kernel not installed): nbconvert fails, the job fails saying which kernel
    if launched is None:
        return f"no notebook came back from the job ({message})"
    if direct is None:
        return f"nbclient could not start it; the job {'succeeded' if launched_ok else 'failed'} ({message})"
    if direct_ok != launched_ok:
        return f"nbclient {'succeeded' if direct_ok else 'failed'}, the job {'succeeded' if launched_ok else 'failed'}" \
               f" ({message})"
    cells = cells_compared(direct, launched)
    if cells:
        code = [c for c in direct.cells if c.cell_type == "code"], [c for c in launched.cells if c.cell_type == "code"]
        first = cells[0]
        shown = [f"In [{side[first].get('execution_count')}] {json.dumps(normalise_outputs(side[first]))[:300]}"
                 for side in code] if first >= 0 else []
        return f"outputs differ in code cells {cells}: nbclient {shown[:1]} / job {shown[1:]}"
    if widget_model_names(direct) != widget_model_names(launched):
        return "the saved widget state differs"
    return None


def documented_differences() -> str:
    return FIDELITY_DOC.read_text(encoding="utf-8")


def test_the_corpus_is_large_and_its_licences_are_noted() -> None:
    assert len(RUNNABLE) >= 60
    licences = (PUBLIC / "LICENSES.md").read_text(encoding="utf-8")
    for path in CORPUS:
        assert f"`{corpus_name(path)}`" in licences, f"{corpus_name(path)} is not in LICENSES.md"
    for folder in {p.parent for p in CORPUS}:
        assert (folder / "LICENSE").is_file(), f"{folder.name}/ has no LICENSE"


# nbformat warns about the notebooks its own tests keep malformed on purpose (missing or repeated cell ids), and
# reads them anyway, as nbconvert does.
@pytest.mark.filterwarnings("ignore::nbformat.warnings.DuplicateCellId",
                            "ignore::nbformat.warnings.MissingIDFieldWarning")
def test_launched_notebooks_come_back_as_nbclient_returns_them(client, tmp_path: Path) -> None:
    results = asyncio.run(run_both(client, tmp_path))
    equal, differ = summarise(results, "local")
    doc = documented_differences()
    undocumented = {name: what for name, what in differ.items() if f"`{name}`" not in doc}
    assert not undocumented, f"differences not listed in docs/fidelity.md: {undocumented}"
    assert equal / len(results) >= 0.98, differ


def test_notebooks_older_than_nbformat_4_are_refused_at_submit_in_one_line(client, tmp_path: Path) -> None:
    from jupyter_launch.spec import SpecError

    doc = documented_differences()
    for path in OLD_FORMAT:
        assert f"`{corpus_name(path)}`" in doc, f"{corpus_name(path)} is not listed in docs/fidelity.md"
        with pytest.raises(SpecError, match=r"nbformat: unsupported nbformat [23]") as info:
            client.submit(path, root=path.parent)
        assert "\n" not in str(info.value)


def summarise(results: dict[str, Any], where: str) -> tuple[int, dict[str, str]]:
    differ = {name: d for name, r in results.items() if (d := difference(*r))}
    equal = len(results) - len(differ)
    print(f"\nfidelity corpus ({where}): {equal}/{len(results)} equal ({100 * equal / len(results):.1f}%)")
    for name, what in sorted(differ.items()):
        print(f"  differs: {name}: {what}")
    return equal, differ


@pytest.mark.filterwarnings("ignore::nbformat.warnings.DuplicateCellId",
                            "ignore::nbformat.warnings.MissingIDFieldWarning")
def test_on_the_docker_queue_they_come_back_as_nbclient_returns_them(client, tmp_path: Path, env_image) -> None:
    """The same comparison for a part of the corpus on a Docker queue (the job image's Python, not this one)."""
    paths = [PUBLIC / name for name in ON_DOCKER]
    assert len(paths) >= 10 and all(p.is_file() for p in paths)
    queue = docker_queue(client, "fidelity")
    jobs = submit_copies(client, paths, tmp_path, queue)
    direct = asyncio.run(run_direct_all(jobs))
    run_docker_jobs(client, [job for _, job in jobs.values()], timeout=600)
    equal, differ = summarise(collect(client, jobs, direct), "docker")
    doc = documented_differences()
    undocumented = {name: what for name, what in differ.items() if f"`{name}` on Docker" not in doc}
    assert not undocumented, f"Docker differences not listed in docs/fidelity.md: {undocumented}"
    assert equal / len(paths) >= 0.98, differ

"""HTML reports of executed notebooks: nbconvert's exporter, and a long-lived process that renders reports for a
backend's jobs so that no job's runner loads nbconvert.

Loading nbconvert and compiling its templates take about half a second of CPU; a render with them loaded, a few
milliseconds for a small notebook. A runner on its own (a container, a Slurm job) renders its report itself
(:func:`html_exporter`, :func:`write_report`); the local backend runs its runners with ``--no-report`` and renders
each notebook job's report after the runner's result record, through one :class:`ReportRenderer` per agent
(``python -m jupyter_launch.report``), before the job's outputs are collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .lifetime import die_with_parent

# jsonschema (imported by nbformat) imports these, when installed, for the string formats of its FormatChecker, which
# nbformat never uses: rfc3987_syntax compiles a grammar at import (about 0.8 s of CPU), isoduration brings arrow and
# dateutil (20 ms), and the rest 10 ms more. The processes that start with a job (the runner) or for reports opt out,
# before they import nbformat.
FORMAT_CHECK_MODULES = ("rfc3987_syntax", "rfc3987", "rfc3986_validator", "rfc3339_validator", "isoduration", "fqdn",
                        "idna", "webcolors", "jsonpointer", "uri_template")


def skip_format_checkers() -> None:
    for name in FORMAT_CHECK_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def html_exporter() -> Any:
    """nbconvert's HTMLExporter, having rendered a sample once: importing nbconvert and compiling its templates take
    about half a second, spent here rather than in the first report's render."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    outputs = [nbformat.v4.new_output("stream", name="stdout", text="0\n"),
               nbformat.v4.new_output("execute_result", data={"text/plain": "0"}, execution_count=1)]
    sample = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# 0"), nbformat.v4.new_code_cell("0", outputs=outputs)],
        metadata={"language_info": {"name": "python", "pygments_lexer": "ipython3"}})
    exporter.from_notebook_node(sample)
    return exporter


def write_report(exporter: Any, nb: Any, html: Path) -> None:
    """Render ``nb`` to ``html``: written beside it, then renamed over it, so a link put there is replaced, not
    followed, and no reader sees half a report."""
    body, _ = exporter.from_notebook_node(nb)
    partial = html.with_name(f".{html.name}.partial")
    partial.write_text(body, encoding="utf-8")
    os.replace(partial, html)


def serve() -> int:
    """Render reports asked for on stdin, one JSON line ``{"notebook": PATH, "html": PATH}`` each, answering one
    JSON line each on stdout: ``{"error": null}``, or the error's one-line description. Ends at the end of stdin."""
    import nbformat

    exporter = html_exporter()
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            nb = nbformat.read(request["notebook"], as_version=4)
            write_report(exporter, nb, Path(request["html"]))
            error = None
        except Exception as exc:  # a broken notebook or output, a template failing: this report only
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        sys.stdout.write(json.dumps({"error": error}) + "\n")
        sys.stdout.flush()
    return 0


class ReportRenderer:
    """One ``python -m jupyter_launch.report`` process, started when first needed and kept for the next report;
    reports are rendered one at a time, in the order asked. A renderer that died is started again."""

    def __init__(self, python: str = sys.executable, env: dict[str, str] | None = None):
        self.python = python
        self.env = env
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def start(self) -> None:
        """Start the process now, so the first report does not wait for nbconvert to load."""
        async with self._lock:
            await self._started()

    async def _started(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        self._proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "jupyter_launch.report", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,  # nbconvert's warnings: not ours
            env=self.env, preexec_fn=die_with_parent(), limit=1 << 20)
        await self._answer(self._proc)
        return self._proc

    @staticmethod
    async def _answer(proc: asyncio.subprocess.Process) -> dict[str, Any]:
        line = await proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            code = await proc.wait()
            raise RuntimeError(f"the report renderer ended (exit code {code})")
        return json.loads(line)

    async def render(self, notebook: Path, html: Path) -> None:
        """Write the HTML report of the executed notebook ``notebook`` to ``html``; ``RuntimeError`` saying why not."""
        async with self._lock:
            proc = await self._started()
            proc.stdin.write(json.dumps({"notebook": str(notebook), "html": str(html)}).encode() + b"\n")  # type: ignore[union-attr]
            try:
                await proc.stdin.drain()  # type: ignore[union-attr]
                answer = await self._answer(proc)
            except (ConnectionError, RuntimeError) as exc:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise RuntimeError(f"the report renderer ended while rendering ({exc})") from None
            except asyncio.CancelledError:  # its answer would be read as the next report's: start afresh
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise
        if answer.get("error"):
            raise RuntimeError(answer["error"])

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            await proc.wait()


if __name__ == "__main__":
    skip_format_checkers()
    sys.exit(serve())

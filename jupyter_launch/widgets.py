"""Live views of a job in a notebook: an ipywidgets panel, or plain text where widgets are not rendered.

A :class:`JobWatcher` follows one job on a background event loop (its own thread, so the view keeps moving while the
kernel runs other cells or blocks in ``--wait``) and feeds a view: :class:`JobView` (state and reason, elapsed time,
progress bar, log tail, metrics plot, Cancel button, output links) or :class:`TextView` (a terminal IPython).
Log updates are batched: at most one per ``interval``, the first line of a quiet spell at once.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import html
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import ipywidgets as W

from .loop import BackgroundLoop

STATE_POLL = 0.25  # seconds between state reads (logs have their own, faster follow)
METRICS_POLL = 0.5
TICK = 1.0  # elapsed-time label
MAX_POINTS = 4000  # per metric kept in memory; halved by decimation beyond this
PLOT_POINTS = 400  # per metric drawn
MAX_PLOTS = 6
SUMMARY_LINES = 20  # log lines in the plain-text summary

BAR_STYLE = {"succeeded": "success", "failed": "danger", "cancelled": "warning"}
STATE_COLOUR = {"queued": "#8a6d00", "claimed": "#1f6feb", "starting": "#1f6feb", "running": "#1f6feb",
                "succeeded": "#1a7f37", "failed": "#cf222e", "cancelled": "#6e7781"}


# ------------------------------------------------------------------ formatting helpers


def format_elapsed(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def elapsed_text(record: Any, now: float | None = None) -> str:
    """``queued 3.2s``, ``running 1m05s``, ``took 12.0s``: how long the job has been where it is."""
    now = now or time.time()
    if record.done:
        start = record.started_at or record.submitted_at
        return f"took {format_elapsed((record.finished_at or now) - start)}"
    if record.started_at:
        return f"{record.state} {format_elapsed(now - record.started_at)}"
    return f"{record.state} {format_elapsed(now - record.submitted_at)}"


def reason_text(record: Any) -> str:
    """The human sentence for the state: why it waits, where it runs, how it ended."""
    if record.state == "running":
        return f"running on agent {record.agent_id}" if record.agent_id else "running"
    return record.message or (record.reason or "").replace("_", " ")


def progress_text(progress: dict[str, Any]) -> str:
    value, total = progress.get("value"), progress.get("total")
    text = f"{value:g}" if isinstance(value, (int, float)) else str(value)
    if isinstance(total, (int, float)) and total:
        text += f"/{total:g}"
    return f"{progress.get('description') or ''} {text}".strip()


def end_notice(job_id: str, record: Any, outputs: list[Any]) -> str:
    """The line a view adds when its job ends: when, how, and how to fetch what it left (for a job left running in
    the background, this is the notice that it is done)."""
    at = time.strftime("%H:%M:%S", time.localtime(record.finished_at or time.time()))
    how = {"succeeded": "succeeded", "failed": "failed", "cancelled": "was cancelled"}.get(record.state, record.state)
    text = f"{at}: job {job_id} {how} ({elapsed_text(record)})"
    if outputs:
        text += (f"; its {len(outputs)} output{'s' if len(outputs) != 1 else ''}: jupyter launch outputs {job_id} "
                 f"--to DIR")
    return text


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def metrics_svg(series: dict[str, list[tuple[float, float]]], width: int = 260, height: int = 110) -> str:
    """Small multiples, one line chart per metric: plain SVG, so it needs no plotting library in the kernel."""
    panels = []
    for name, points in list(series.items())[:MAX_PLOTS]:
        if not points:
            continue
        step = max(1, math.ceil(len(points) / PLOT_POINTS))
        shown = points[::step]
        if shown[-1] is not points[-1]:
            shown.append(points[-1])
        xs, ys = [p[0] for p in shown], [p[1] for p in shown]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        left, top, w, h = 4, 18, width - 8, height - 32
        sx = w / (x1 - x0) if x1 > x0 else 0.0
        sy = h / (y1 - y0) if y1 > y0 else 0.0
        coords = " ".join(f"{left + (x - x0) * sx:.1f},{top + (h - (y - y0) * sy if sy else h / 2):.1f}"
                          for x, y in shown)
        label = html.escape(f"{name}  {points[-1][1]:.4g}")
        panels.append(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'style="border:1px solid var(--jp-border-color2, #d0d7de);border-radius:4px;'
            f'background:var(--jp-layout-color1, #fff)">'
            f'<text x="6" y="13" font-size="11" font-family="sans-serif" '
            f'style="fill:var(--jp-ui-font-color1, #24292f)">{label}</text>'
            f'<polyline fill="none" stroke-width="1.5" points="{coords}" '
            f'style="stroke:var(--jp-brand-color1, #1f6feb)"/>'
            f'<text x="6" y="{height - 4}" font-size="9" font-family="sans-serif" '
            f'style="fill:var(--jp-ui-font-color2, #6e7781)">'
            f'{html.escape(f"step {x0:g}–{x1:g}   {y0:.3g} … {y1:.3g}")}</text></svg>')
    return '<div style="display:flex;flex-wrap:wrap;gap:6px">' + "".join(panels) + "</div>"


class MetricSeries:
    """Numeric metrics by name, as (step, value) points; the step is the record's index where none was given."""

    def __init__(self) -> None:
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.last: dict[str, Any] = {}
        self.last_step: Any = None
        self.count = 0

    def add(self, records: list[dict[str, Any]]) -> bool:
        for rec in records:
            step = rec.get("step")
            x = float(step) if _numeric(step) is not None else float(self.count)
            self.count += 1
            self.last_step = step if step is not None else self.last_step
            for key, value in (rec.get("data") or {}).items():
                self.last[key] = value
                y = _numeric(value)
                if y is None:
                    continue
                points = self.series.setdefault(key, [])
                points.append((x, y))
                if len(points) > MAX_POINTS:
                    self.series[key] = points[::2]
        return bool(records)

    def summary(self) -> str:
        parts = [f"{k} {v:.4g}" if _numeric(v) is not None else f"{k} {v}" for k, v in self.last.items()]
        step = f"step {self.last_step}: " if self.last_step is not None else ""
        return step + " · ".join(parts)


class LogTail:
    """The last ``max_lines`` lines of a job's log, by stream, with carriage-return overwrites applied."""

    def __init__(self, max_lines: int = 500):
        self.lines: deque[tuple[str, str]] = deque(maxlen=max_lines)
        self.total = 0
        self._open = False  # the last line has no newline yet

    def add(self, stream: str, text: str) -> None:
        if not text:
            return
        if self._open and self.lines and self.lines[-1][0] == stream:
            text = self.lines.pop()[1] + text
            self.total -= 1
        parts = text.split("\n")  # not splitlines(): a carriage return overwrites a line, it does not end one
        for line in [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else []):
            self.lines.append((stream, _overwrite(line)))
            self.total += 1
        self._open = not text.endswith("\n")

    @property
    def dropped(self) -> int:
        return self.total - len(self.lines)

    def outputs(self) -> tuple[dict[str, str], ...]:
        """Output-widget stream outputs: consecutive lines of one stream in one output."""
        runs: list[dict[str, str]] = []
        if self.dropped:
            runs.append({"output_type": "stream", "name": "stdout",
                         "text": f"… {self.dropped} earlier line(s) not shown; job.logs() has the whole log\n"})
        for stream, line in self.lines:
            if runs and runs[-1]["name"] == stream:
                runs[-1]["text"] += line
            else:
                runs.append({"output_type": "stream", "name": stream, "text": line})
        return tuple(runs)

    def text(self, last: int | None = None) -> str:
        lines = list(self.lines)[-last:] if last else self.lines
        return "".join(line for _, line in lines)


def _overwrite(line: str) -> str:
    """What a terminal shows for a line with carriage returns (progress bars): the last segment written."""
    body, end = (line[:-1], "\n") if line.endswith("\n") else (line, "")
    body = body.removesuffix("\r")
    if "\r" in body:
        body = body.rsplit("\r", 1)[-1]
    return body + end


# ------------------------------------------------------------------ views


class JobView(W.VBox):
    """The live panel for one job; its parts carry CSS classes (``jl-state``, ``jl-log``, ...) for tests and themes.

    Where widgets are not rendered (nbconvert to text, a viewer without the widget state), its plain-text form is a
    summary: the final state and the end of the log.
    """

    def __init__(self, job_id: str, queue: str, *, tail_lines: int = 500, output_base: str = "/",
                 on_cancel: Callable[[], Any] | None = None, **kwargs: Any):
        self.job_id, self.queue = job_id, queue
        self.output_base = output_base
        self.tail = LogTail(tail_lines)
        self.metrics = MetricSeries()
        self.record: Any = None
        self.notes: list[str] = []
        self._on_cancel = on_cancel
        self.title_html = W.HTML(f"<b>job {html.escape(job_id)}</b> on queue <code>{html.escape(queue)}</code>",
                            _dom_classes=["jl-title"])
        self.state_html = W.HTML("", _dom_classes=["jl-state"])
        self.elapsed_label = W.Label("", _dom_classes=["jl-elapsed"])
        self.reason_label = W.Label("", _dom_classes=["jl-reason"])
        self.progress_bar = W.FloatProgress(value=0, min=0, max=1, _dom_classes=["jl-progress"],
                                        layout=W.Layout(display="none", width="60%"))
        self.progress_label = W.Label("", _dom_classes=["jl-progress-label"])
        # A reversed column keeps the box scrolled to its end as lines arrive (the browser anchors it there), unless
        # the reader scrolled up; a plain box stayed at its first line.
        self.log_output = W.Output(_dom_classes=["jl-log"],
                                   layout=W.Layout(max_height="22em", overflow="auto", display="flex",
                                                   flex_flow="column-reverse",
                                                   border="1px solid var(--jp-border-color2, #d0d7de)"))
        self.metrics_label = W.Label("", _dom_classes=["jl-metrics"])
        self.plot_html = W.HTML("", _dom_classes=["jl-plot"])
        self.metrics_box = W.VBox([self.metrics_label, self.plot_html], layout=W.Layout(display="none"))
        self.cancel_button = W.Button(description="Cancel", icon="stop", button_style="danger",
                                      tooltip="cancel this job", _dom_classes=["jl-cancel"])
        self.cancel_button.on_click(self._cancel_clicked)
        self.outputs_html = W.HTML("", _dom_classes=["jl-outputs"])
        self.note_html = W.HTML("", _dom_classes=["jl-note"])
        super().__init__([
            W.HBox([self.title_html, self.state_html, self.elapsed_label],
                   layout=W.Layout(grid_gap="12px", align_items="center")),
            self.reason_label,
            W.HBox([self.progress_bar, self.progress_label]),
            self.log_output,
            self.metrics_box,
            W.HBox([self.cancel_button, self.outputs_html], layout=W.Layout(grid_gap="12px", align_items="center")),
            self.note_html,
        ], _dom_classes=["jl-job"], **kwargs)

    # The watcher calls these from its thread; ipykernel sends comm messages from any thread.

    def show_state(self, record: Any) -> None:
        self.record = record
        colour = STATE_COLOUR.get(record.state, "#24292f")
        self.state_html.value = f'<span style="color:{colour};font-weight:600">{html.escape(record.state)}</span>'
        self.reason_label.value = reason_text(record)
        self.elapsed_label.value = elapsed_text(record)
        if isinstance(record.progress, dict) and record.progress:
            self.show_progress(record.progress)

    def tick(self) -> None:
        if self.record is not None:
            self.elapsed_label.value = elapsed_text(self.record)

    def show_progress(self, progress: dict[str, Any]) -> None:
        value, total = _numeric(progress.get("value")), _numeric(progress.get("total"))
        with self.progress_bar.hold_sync():
            if total:
                self.progress_bar.max = total
                self.progress_bar.value = min(max(value or 0.0, 0.0), total)
                self.progress_bar.layout.display = None
        self.progress_label.value = progress_text(progress)

    def add_log(self, pieces: list[tuple[str, str]]) -> None:
        for stream, text in pieces:
            self.tail.add(stream, text)
        self.log_output.outputs = self.tail.outputs()

    def add_metrics(self, records: list[dict[str, Any]]) -> None:
        if self.metrics.add(records):
            self.metrics_label.value = self.metrics.summary()
            self.plot_html.value = metrics_svg(self.metrics.series)
            self.metrics_box.layout.display = None

    def add_note(self, text: str) -> None:
        self.notes.append(text)
        self.note_html.value = "<br>".join(f'<span style="color:#57606a">{html.escape(n)}</span>' for n in self.notes)

    def show_final(self, record: Any, outputs: list[Any]) -> None:
        self.show_state(record)
        with self.progress_bar.hold_sync():
            self.progress_bar.bar_style = BAR_STYLE.get(record.state, "")
            if record.state == "succeeded" and self.progress_bar.layout.display is None:
                self.progress_bar.value = self.progress_bar.max
        with self.cancel_button.hold_sync():  # it said "Succeeded" in red: an ended job has nothing to cancel
            self.cancel_button.disabled = True
            self.cancel_button.layout.display = "none"
        links = [f'<a href="{html.escape(self.output_url(o.path))}" target="_blank" rel="noopener">'
                 f"{html.escape(o.path)}</a> <small>({_size(o.size)})</small>" for o in outputs]
        self.outputs_html.value = ("outputs: " + " · ".join(links)) if links else ""
        self.add_note(end_notice(self.job_id, record, outputs))

    def output_url(self, path: str) -> str:
        return f"{self.output_base.rstrip('/')}/launch/api/jobs/{quote(self.job_id)}/outputs/{quote(path)}"

    def _cancel_clicked(self, _button: Any = None) -> None:
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"
        if self._on_cancel is not None:
            self._on_cancel()

    # ------------------------------------------------------------ plain text

    def summary(self) -> str:
        r = self.record
        if r is None:
            return f"job {self.job_id} on queue {self.queue}"
        head = f"job {self.job_id} on queue {self.queue}: {r.state} ({reason_text(r)}), {elapsed_text(r)}"
        lines = [head]
        if self.metrics.last:
            lines.append(f"metrics: {self.metrics.summary()}")
        lines += self.notes
        tail = self.tail.text(SUMMARY_LINES)
        if tail:
            lines.append("--- log (last lines) ---")
            lines.append(tail.rstrip("\n"))
        return "\n".join(lines)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = super()._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.summary()
        return bundle


class TextView:
    """The same feed as plain text for a terminal IPython: state changes and (when ``echo``) the log, as they come."""

    def __init__(self, job_id: str, queue: str, *, echo: bool = False, stream: Any = None):
        self.job_id, self.queue, self.echo = job_id, queue, echo
        self.stream = stream or sys.stdout
        self.tail = LogTail(SUMMARY_LINES)
        self.record: Any = None
        self.notes: list[str] = []
        self._last_line: tuple[str, str] | None = None

    def _say(self, text: str) -> None:
        if self.echo:
            self.stream.write(text + "\n")
            self.stream.flush()

    def show_state(self, record: Any) -> None:
        self.record = record
        line = (record.state, reason_text(record))
        if line != self._last_line and not record.done:
            self._last_line = line
            self._say(f"[{record.state}] {line[1]}")

    def tick(self) -> None:
        pass

    def show_progress(self, progress: dict[str, Any]) -> None:
        pass

    def add_log(self, pieces: list[tuple[str, str]]) -> None:
        for stream, text in pieces:
            self.tail.add(stream, text)
            if self.echo:
                out = sys.stderr if stream == "stderr" else self.stream
                out.write(text)
                out.flush()

    def add_metrics(self, records: list[dict[str, Any]]) -> None:
        pass

    def add_note(self, text: str) -> None:
        self.notes.append(text)
        self._say(text)

    def show_final(self, record: Any, outputs: list[Any]) -> None:
        self.record = record
        self._say(f"job {self.job_id} {record.state}: {reason_text(record)} ({elapsed_text(record)})")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ------------------------------------------------------------------ the watcher


class JobWatcher:
    """Follows one job through the client (log, state, progress, metrics, outputs) and feeds a view.

    ``on_final(record)`` runs in the watcher's thread once the job has ended and its log is read to the end (the
    magics bring pulled variables back there); whatever text it returns is added to the view as a note. Then the
    view shows the end, ``on_settled()`` runs, and :attr:`settled` is set: a caller waiting on it sees it all.
    """

    def __init__(self, client: Any, job: Any, view: JobView | TextView, *, interval: float = 0.1,
                 on_final: Callable[[Any], str | None] | None = None,
                 on_settled: Callable[[], Any] | None = None):
        self.client, self.job, self.view = client, job, view
        self.interval = interval
        self.on_final = on_final
        self.on_settled = on_settled
        self.settled = threading.Event()
        self.first_log_at: float | None = None
        self.error: BaseException | None = None
        self._pending: list[tuple[str, str]] = []
        self._dirty = asyncio.Event()
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._future: concurrent.futures.Future[Any] | None = None

    def start(self, loop: BackgroundLoop | None = None) -> JobWatcher:
        self._future = (loop or BackgroundLoop.get()).submit(self.run())
        return self

    async def run(self) -> None:
        try:
            await self._follow()
        except Exception as exc:  # the view says so; the job itself is unaffected
            self.error = exc
            self.view.add_note(f"the live view stopped: {type(exc).__name__}: {exc} (job.status still works)")
        finally:
            self.settled.set()

    async def _follow(self) -> None:
        pump = asyncio.create_task(self._pump_logs())
        flusher = asyncio.create_task(self._flush_logs())
        seen: tuple[Any, ...] | None = None
        last_tick = last_metrics = 0.0
        metrics_after = 0
        try:
            while True:
                record = await asyncio.to_thread(self.job.refresh)
                key = (record.state, record.reason, record.message, record.agent_id, str(record.progress))
                now = time.monotonic()
                if key != seen:
                    seen, last_tick = key, now
                    self.view.show_state(record)
                elif now - last_tick >= TICK:
                    last_tick = now
                    self.view.tick()
                if now - last_metrics >= METRICS_POLL or record.done:
                    last_metrics = now
                    metrics_after = await self._read_metrics(metrics_after)
                if record.done:
                    break
                await asyncio.sleep(STATE_POLL)
            await pump  # the follow ends once the log is read to its end
        finally:
            flusher.cancel()
            if not pump.done():
                pump.cancel()
        self._flush_now()
        await self._read_metrics(metrics_after)
        outputs = await asyncio.to_thread(self.client.outputs, self.job.id)
        if self.on_final is not None:
            note = await asyncio.to_thread(self.on_final, record)
            if note:
                self.view.add_note(note)
        self.view.show_final(record, outputs)
        if self.on_settled is not None:
            self.on_settled()

    async def _read_metrics(self, after: int) -> int:
        records = await asyncio.to_thread(self.client.metrics, self.job.id, after)
        if records:
            self.view.add_metrics(records)
            return records[-1]["id"]
        return after

    async def _pump_logs(self) -> None:
        async for chunk in self.client.afollow(self.job.id, 0):
            decoder = self._decoders.get(chunk.stream)
            if decoder is None:
                decoder = self._decoders[chunk.stream] = codecs.getincrementaldecoder("utf-8")("replace")
            text = decoder.decode(chunk.data)
            if text:
                if self.first_log_at is None:
                    self.first_log_at = time.time()
                self._pending.append((chunk.stream, text))
                self._dirty.set()

    async def _flush_logs(self) -> None:
        """At most one view update per interval; the first piece after a quiet spell goes out at once."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self._flush_now()
            await asyncio.sleep(self.interval)

    def _flush_now(self) -> None:
        if self._pending:
            pieces, self._pending = self._pending, []
            self.view.add_log(pieces)

    def wait(self, timeout: float | None = None) -> bool:
        return self.settled.wait(timeout)

"""Figures for the magics: time from a ``%%launch`` cell's execution to its first log line in the widget, on a warm
local queue, and the cost of ``--push``/``--pull`` for a 100 MB numpy array. Prints a table.

    python bench/bench_magics.py [--runs 20] [--push-runs 3] [--mb 100]

A real kernel (jupyter_client) talks to a standalone agent through a temporary store. The first-log time is measured
where a frontend sees it: from sending the execute request to the iopub comm message that puts the line into the
view's Output model.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


class Kernel:
    def __init__(self, env: dict[str, str], cwd: str):
        from jupyter_client.manager import start_new_kernel

        self.km, self.kc = start_new_kernel(kernel_name="python3", cwd=cwd, env=env)
        self._out: list[str] = []

    def execute(self, code: str, *, until_log: str | None = None, timeout: float = 300) -> dict[str, float]:
        """Run ``code``; seconds from the request to: the view shown, the log line in a view update, the reply."""
        start = time.perf_counter()
        msg_id = self.kc.execute(code)
        marks: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while "reply" not in marks or (until_log and "first_log" not in marks):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply to {code!r}")
            try:
                msg = self.kc.get_iopub_msg(timeout=0.01)
            except queue.Empty:
                msg = None
            if msg is not None:
                kind, content = msg["msg_type"], msg["content"]
                if kind == "display_data" and "shown" not in marks:
                    marks["shown"] = time.perf_counter() - start
                elif kind == "comm_msg" and until_log and "first_log" not in marks:
                    outputs = content["data"].get("state", {}).get("outputs") or []
                    if any(until_log in o.get("text", "") for o in outputs):
                        marks["first_log"] = time.perf_counter() - start
                elif kind == "error":
                    raise RuntimeError("\n".join(content["traceback"]))
            try:
                reply = self.kc.get_shell_msg(timeout=0)
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                marks["reply"] = time.perf_counter() - start
                if reply["content"]["status"] != "ok":
                    raise RuntimeError(f"{reply['content'].get('ename')}: {reply['content'].get('evalue')}")
        return marks

    def value(self, expression: str) -> Any:
        reply = self.kc.execute_interactive(f"print(repr({expression}))", timeout=60, output_hook=self._collect)
        assert reply["content"]["status"] == "ok"
        import ast

        return ast.literal_eval(self._out.pop())

    def _collect(self, msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            self._out.append(msg["content"]["text"])

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="trivial cells for the first-log figure")
    parser.add_argument("--push-runs", type=int, default=3, help="runs of each push/pull variant")
    parser.add_argument("--mb", type=int, default=100, help="size of the pushed array in MB")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-magics-") as tmp:
        home = Path(tmp) / "home"
        work = Path(tmp) / "work"
        work.mkdir()
        env = dict(os.environ, JUPYTER_LAUNCH_HOME=str(home), PYTHONPATH=str(ROOT))
        os.environ["JUPYTER_LAUNCH_HOME"] = str(home)
        from jupyter_launch.client import LaunchClient
        from jupyter_launch.spec import QueueConfig

        client = LaunchClient()
        # Warm: runners with a started kernel wait for jobs; two, so one is ready while the other refills.
        client.create_queue(QueueConfig.model_validate(
            {"queue_name": "warm", "provider": {"type": "local", "min_instances": 2}}))
        agent = subprocess.Popen([sys.executable, "-m", "jupyter_launch.cli", "agent", "--queue", "warm"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kernel = Kernel(env, str(work))
        try:
            while not client.live_agents("warm"):
                time.sleep(0.05)
            kernel.execute("%load_ext jupyter_launch\nimport numpy as np")
            kernel.execute("%%launch --queue warm --wait\nprint('warm-up')")  # the client is open from here on
            time.sleep(3)

            first_log, shown = [], []
            for i in range(args.runs):
                marks = kernel.execute(f"%%launch --queue warm\nprint('hello {i}')", until_log=f"hello {i}")
                first_log.append(marks["first_log"])
                shown.append(marks["shown"])
                kernel.execute("_.wait(timeout=120)")
                time.sleep(1.5)  # let the pool start a new warm runner

            mb = args.mb
            kernel.execute(f"arr = np.ones({mb} * 1024 * 1024 // 8)\n"
                           "import cloudpickle, time\n"
                           "t = time.perf_counter(); blob = cloudpickle.dumps({'arr': arr}); "
                           "pickle_s = time.perf_counter() - t\n"
                           "t = time.perf_counter(); cloudpickle.loads(blob); unpickle_s = time.perf_counter() - t\n"
                           "del blob")
            pickle_s, unpickle_s = kernel.value("pickle_s"), kernel.value("unpickle_s")
            variants = {
                "no push/pull": "%%launch --queue warm --wait\nn = 1",
                f"--push arr ({mb} MB)": "%%launch --queue warm --wait --push arr\nn = arr.nbytes",
                f"--push arr --pull back ({mb} MB each way)":
                    "%%launch --queue warm --wait --push arr --pull back\nback = arr",
            }
            walls: dict[str, list[float]] = {}
            for _ in range(args.push_runs):
                for name, code in variants.items():
                    walls.setdefault(name, []).append(kernel.execute(code)["reply"])
                    time.sleep(1.5)
            assert kernel.value("int(back.nbytes)") == mb * 1024 * 1024
        finally:
            kernel.close()
            agent.send_signal(signal.SIGINT)
            agent.wait(30)

    print(f"jupyter-launch magics ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})\n")
    print(f"{'figure':58s} {'p50':>8s} {'p90':>8s} {'min':>8s}   runs")
    print(f"{'%%launch cell -> view shown (submit done)':58s} {pct(shown, .5) * 1e3:7.0f}ms "
          f"{pct(shown, .9) * 1e3:7.0f}ms {min(shown) * 1e3:7.0f}ms   {len(shown)}")
    print(f"{'%%launch cell -> first log line in the widget (warm queue)':58s} {pct(first_log, .5) * 1e3:7.0f}ms "
          f"{pct(first_log, .9) * 1e3:7.0f}ms {min(first_log) * 1e3:7.0f}ms   {len(first_log)}  (goal p50 <= 300ms)")
    print()
    base = statistics.median(walls["no push/pull"])
    print(f"{'--wait cell, wall time':58s} {'median':>8s} {'overhead':>9s}")
    for name, values in walls.items():
        med = statistics.median(values)
        print(f"{name:58s} {med:7.2f}s {med - base:+8.2f}s")
    print(f"{f'in-kernel cloudpickle of {mb} MB: dumps / loads':58s} {pickle_s:7.3f}s / {unpickle_s:.3f}s")


if __name__ == "__main__":
    main()

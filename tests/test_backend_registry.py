"""Backends come from one registry, the ``jupyter_launch.backends`` entry points: a third-party backend installed
that way can be named in a queue YAML, is validated by its own config model, and runs jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = '''
"""A third-party backend: local processes, with the queue's greeting in each job's environment."""
import sys
from typing import ClassVar, Literal

from jupyter_launch.backends.local import LocalBackend
from jupyter_launch.spec import ProviderConfig


class EchoProvider(ProviderConfig):
    type: Literal["echo"]
    greeting: str


class EchoBackend(LocalBackend):
    name: ClassVar[str] = "echo"
    config_model: ClassVar[type[EchoProvider]] = EchoProvider

    def python(self, config):
        return sys.executable

    def job_env(self, ctx):
        env = super().job_env(ctx)
        env["GREETING"] = ctx.queue_config.greeting  # the typed model, not a dict
        return env
'''

SCRIPT = '''
import asyncio, json, sys, time
from pathlib import Path
from jupyter_launch.agent import make_local_agent
from jupyter_launch.client import LaunchClient
from jupyter_launch.spec import SpecError, load_queue_config, parse_queue_config

home, folder = Path(sys.argv[1]), Path(sys.argv[2])
out = {}
config = load_queue_config(folder / "echo.yaml")
out["provider"] = type(config.provider).__name__
for name, text in [("misspelt", "queue_name: q\\nprovider:\\n  type: echo\\n  greeting: hi\\n  colour: red\\n"),
                   ("unknown", "queue_name: q\\nprovider:\\n  type: pbs\\n")]:
    try:
        parse_queue_config(text, "q.yaml")
    except SpecError as exc:
        out[name] = str(exc)
client = LaunchClient(home=home)
client.create_queue(config)
job = client.submit(spec={"kind": "command", "command": ["python", "-c", "import os; print(os.environ['GREETING'])"]},
                    root=folder / "src", queue="echoq")

async def run():
    agent = make_local_agent(client.store, ["echoq"], blobs=client.blobs, home=home, wake_socket=False)
    await agent.start()
    task = asyncio.create_task(agent.run())
    deadline = time.monotonic() + 60
    while not job.refresh().done and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await agent.stop()
    task.cancel()
    return type(agent.backend("echo")).__name__

out["backend"] = asyncio.run(run())
out["state"], out["log"] = job.record.state, job.logs()
client.close()
print(json.dumps(out))
'''


def test_a_backend_installed_through_the_entry_point_is_configured_validated_and_runs_a_job(tmp_path):
    site = tmp_path / "site"
    (site / "echo_backend-0.1.dist-info").mkdir(parents=True)
    (site / "echo_backend.py").write_text(PLUGIN)
    (site / "echo_backend-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-backend\n"
                                                                  "Version: 0.1\n")
    (site / "echo_backend-0.1.dist-info" / "entry_points.txt").write_text(
        "[jupyter_launch.backends]\necho = echo_backend:EchoBackend\n")
    folder = tmp_path / "work"
    (folder / "src").mkdir(parents=True)
    (folder / "echo.yaml").write_text(textwrap.dedent("""\
        queue_name: echoq
        provider:
          type: echo
          greeting: hello from the queue
        """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_LAUNCH_")}
    env.update(JUPYTER_LAUNCH_HOME=str(tmp_path / "home"),
               PYTHONPATH=os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "home"), str(folder)], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["provider"] == "EchoProvider"
    assert out["misspelt"] == "q.yaml:5: provider.colour: unknown field"
    assert out["unknown"].startswith("q.yaml:3: provider.type: unknown provider type; supported providers are ")
    assert "echo" in out["unknown"] and "slurm" in out["unknown"] and "local, docker, kubernetes" in out["unknown"]
    assert (out["backend"], out["state"]) == ("EchoBackend", "succeeded"), out
    assert out["log"] == "hello from the queue\n"

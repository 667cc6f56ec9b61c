"""The Docker backend on a real Docker Engine: LaunchClient → store → agent → containers, images built and reused.

These tests need the engine (``ci/docker.sh``) and the local base image ``launch-python:bookworm``
(``ci/python-base.sh``); without them they fail with a message saying which is missing. The job image for notebook
jobs is built once per machine (a minute or so of pip installs the first time) and reused by its hash after.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from traitlets.config import Config

from docker_engine import BASE_IMAGE, engine_client
from processes import PeakGrowth

from jupyter_launch.agent import make_local_agent
from jupyter_launch.backends.docker import DockerBackend, container
from jupyter_launch.backends.docker.container import (JOB_ID_LABEL, MANAGED_BY, QUEUE_LABEL, WARM_LABEL, secrets_line,
                                                      sh_quote)
from jupyter_launch.client import LaunchClient
from jupyter_launch.images import BuildSettings, pip_install_args, plan_build
from jupyter_launch.spec import QueueConfig

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
BUILD = {"base_image": BASE_IMAGE, "lock": "minimal"}  # the runner only: these tests are about the backend


@pytest.fixture(scope="session")
def env_image() -> str:
    """The job image notebook jobs on a plain queue get: built here once, then a cache hit for every job."""
    from jupyter_launch.images import ImageBuilder

    with engine_client() as api:
        builder = ImageBuilder(api)
        plan = plan_build(BuildSettings.from_config(BUILD, BASE_IMAGE), builder.image_id(BASE_IMAGE), {}, None)
        if not builder.cached(plan):
            builder.build(plan, lambda text: None)
    return plan.tag


@pytest.fixture
def client(tmp_path: Path, docker_api, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JUPYTER_LAUNCH_HOME", str(tmp_path / "home"))
    c = LaunchClient(home=tmp_path / "home")
    yield c
    c.close()


def docker_queue(client: LaunchClient, name: str = "dq", **provider) -> str:
    client.create_queue(QueueConfig(queue_name=name, provider={"type": "docker", "build": BUILD, **provider}))
    return name


def job_containers(api, job_id: str) -> list[dict]:
    return api.containers(all=True, filters={"label": f"{JOB_ID_LABEL}={job_id}"})


class Agent:
    """An in-process agent on the client's store, for the length of a ``with`` block inside a coroutine."""

    def __init__(self, client: LaunchClient, queues: list[str], **traits):
        self.agent = make_local_agent(client.store, queues, blobs=client.blobs, lease_seconds=5, **traits)

    async def __aenter__(self):
        await self.agent.start()
        self.task = asyncio.create_task(self.agent.run())
        return self.agent

    async def __aexit__(self, *exc):
        await self.agent.stop()
        self.task.cancel()


async def until(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def run_jobs(client: LaunchClient, jobs, timeout: float = 300, **traits):
    async def go():
        async with Agent(client, sorted({j.record.queue for j in jobs}), **traits) as agent:
            await until(lambda: all(j.refresh().done for j in jobs), timeout, "the jobs to end")
            return agent

    return asyncio.run(go())


def command_job(client: LaunchClient, tmp_path: Path, code: str, queue: str, **spec):
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    return client.submit(spec={"kind": "command", "command": ["python", "-c", code], **spec}, root=folder,
                         queue=queue)


# ---------------------------------------------------------------- jobs run to completion


def test_notebook_job_runs_in_the_built_image(client, tmp_path, env_image, docker_api):
    queue = docker_queue(client)
    folder = tmp_path / "nb"
    folder.mkdir()
    (folder / "trivial.ipynb").write_bytes((NOTEBOOKS / "trivial.ipynb").read_bytes())
    job = client.submit(folder / "trivial.ipynb", queue=queue)
    agent = run_jobs(client, [job])
    rec = job.record
    assert (rec.state, rec.exit_code, rec.reason) == ("succeeded", 0, "completed"), (rec.message, job.logs())
    assert "hello 3" in job.logs()
    assert f"image {env_image} is up to date" in job.logs()
    assert sorted(o.path for o in job.outputs) == ["trivial.html", "trivial.ipynb"]
    executed = json.loads(client.read_output(job.id, "trivial.ipynb"))
    assert "".join(executed["cells"][2]["outputs"][0]["text"]) == "hello 3\n"
    build = agent.backend("docker").builds[-1]
    assert (build["tag"], build["cached"]) == (env_image, True) and 0 < build["seconds"] < 5
    assert job_containers(docker_api, job.id) == []  # removed once its outputs were collected


def test_command_job_with_an_image_separates_streams_and_returns_outputs(client, tmp_path, docker_api):
    queue = docker_queue(client)
    job = command_job(client, tmp_path, (
        "import os, pathlib, sys\n"
        "for i in range(20000):\n"
        "    print(f'out {i}')\n"
        "print('to stderr', file=sys.stderr)\n"
        "print('greeting', os.environ['GREETING'])\n"
        "out = pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'])\n"
        "(out / 'sub').mkdir()\n"
        "(out / 'sub' / 'result.txt').write_text('42')\n"
        "pathlib.Path('written-into-the-artifact').write_text('mine')\n"  # its own copy: writable, as on local
        "print('wrote beside itself', pathlib.Path('written-into-the-artifact').read_text(), file=sys.stderr)\n"),
        queue, image=BASE_IMAGE, env={"GREETING": "hi"})
    run_jobs(client, [job])
    rec = job.record
    assert (rec.state, rec.exit_code) == ("succeeded", 0), (rec.message, job.logs())
    chunks, _ = client.read_log(job.id, 0)
    out = b"".join(c.data for c in chunks if c.stream == "stdout").decode().splitlines()
    err = b"".join(c.data for c in chunks if c.stream == "stderr").decode()
    assert out[:20000] == [f"out {i}" for i in range(20000)]
    assert out[20000:] == ["greeting hi"]
    assert "to stderr\n" in err and "wrote beside itself mine" in err
    assert [o.path for o in job.outputs] == ["sub/result.txt"]
    assert client.read_output(job.id, "sub/result.txt") == b"42"


def test_exit_code_fails_the_job_and_keep_on_failure_keeps_the_container(client, tmp_path, docker_api):
    queue = docker_queue(client, keep_on_failure=True)
    job = command_job(client, tmp_path, "import sys; print('bye'); sys.exit(3)", queue, image=BASE_IMAGE)
    run_jobs(client, [job])
    rec = job.record
    assert (rec.state, rec.exit_code, rec.reason) == ("failed", 3, "exit_code")
    kept = job_containers(docker_api, job.id)
    assert len(kept) == 1 and kept[0]["State"] == "exited"
    docker_api.remove_container(kept[0]["Id"], force=True)


# ---------------------------------------------------------------- images


def test_an_environment_is_built_once_and_reused_on_the_second_submit(client, tmp_path, env_image, docker_api):
    queue = docker_queue(client)
    folder = tmp_path / "env"
    folder.mkdir()
    # A fresh requirement set each run, so the first submit really builds (on the cached runner layer).
    (folder / "requirements.txt").write_text(f"# run {uuid.uuid4().hex}\nsix\n")
    code = "import six; print('six', six.__version__)"
    first = client.submit(spec={"kind": "command", "command": ["python", "-c", code]}, root=folder, queue=queue)
    second = client.submit(spec={"kind": "command", "command": ["python", "-c", code]}, root=folder, queue=queue)
    agent = run_jobs(client, [first, second], max_jobs=1)
    builds = agent.backend("docker").builds
    try:
        for job in (first, second):
            assert job.record.state == "succeeded", (job.record.message, job.logs())
            assert "six 1." in job.logs()
        assert [b["cached"] for b in builds] == [False, True]
        assert builds[0]["tag"] == builds[1]["tag"] != env_image
        assert "[build]" in first.logs() and "[build]" not in second.logs()
        assert "is up to date for this environment" in second.logs()
    finally:
        docker_api.remove_image(builds[0]["tag"], force=True)


def test_build_reason_is_reported_while_building(client, tmp_path, docker_api):
    """A job waiting on a build says so (reason building_image), never a bare 'starting'."""
    queue = docker_queue(client, build={**BUILD, "pip_args": ["--no-compile"]})
    folder = tmp_path / "env"
    folder.mkdir()
    (folder / "requirements.txt").write_text(f"# run {uuid.uuid4().hex}\n")
    job = client.submit(spec={"kind": "command", "command": ["python", "-c", "print(1)"]}, root=folder,
                        queue=queue)
    seen: list[str | None] = []

    async def go():
        async with Agent(client, [queue]):
            while not job.refresh().done:
                seen.append(job.record.reason)
                await asyncio.sleep(0.05)

    asyncio.run(go())
    tag = [line for line in job.logs().splitlines() if "built jupyter-launch-env:" in line]
    try:
        assert job.record.state == "succeeded", (job.record.message, job.logs())
        assert "building_image" in seen
    finally:
        for line in tag:
            docker_api.remove_image(line.split()[2], force=True)


def test_pip_install_lines_become_pip_arguments():
    assert pip_install_args(["%pip install -q numpy 'pandas<3'", "!pip install --upgrade rich", "six==1.16"]) == [
        "numpy", "pandas<3", "rich", "six==1.16"]


# ---------------------------------------------------------------- failures with reasons


def test_an_image_that_cannot_be_pulled_fails_fast_with_a_useful_message(client, tmp_path, docker_api):
    queue = docker_queue(client)
    image = "registry.invalid.example:5000/team/private-image:1.0"
    job = command_job(client, tmp_path, "print(1)", queue, image=image)
    t0 = time.monotonic()
    run_jobs(client, [job], timeout=60)
    rec = job.record
    assert (rec.state, rec.reason) == ("failed", "image_pull_failed")
    assert time.monotonic() - t0 < 30
    assert image in rec.message and "registry.invalid.example:5000" in rec.message
    assert "provider.registry_auth" in rec.message and "docker login registry.invalid.example:5000" in rec.message
    assert job_containers(docker_api, job.id) == []


def test_registry_auth_secret_missing_from_the_agent_says_so(client, tmp_path, monkeypatch):
    monkeypatch.delenv("JL_TEST_REGISTRY_AUTH", raising=False)
    queue = docker_queue(client, registry_auth="JL_TEST_REGISTRY_AUTH")
    job = command_job(client, tmp_path, "print(1)", queue, image="registry.invalid.example/x/y:2")
    run_jobs(client, [job], timeout=60)
    assert job.record.reason == "image_pull_failed"
    assert "'JL_TEST_REGISTRY_AUTH'" in job.record.message and "not set" in job.record.message


class FakeRegistry:
    """A registry on 127.0.0.1 (an insecure registry to every engine by default) that the engine pulls from.

    ``auth``: answers ``/v2/`` with a Basic challenge until a request carries credentials, records each
    Authorization header, then reports every manifest unknown. ``hang``: answers ``/v2/``, then never answers the
    manifest request, as a registry behind a stuck proxy does.
    """

    def __init__(self, *, auth: bool = False, hang: bool = False):
        self.auth, self.hang = auth, hang
        self.requests: list[str] = []
        self.authorizations: list[str] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data or data[:1] == b"\x16":  # closed, or a TLS hello: the engine retries in plain HTTP
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                line, *fields = head.decode().split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
                self.requests.append(line)
                if "authorization" in headers:
                    self.authorizations.append(headers["authorization"])
                if self.auth and "authorization" not in headers:
                    self._answer(conn, "401 Unauthorized", b"", 'WWW-Authenticate: Basic realm="fake"\r\n')
                elif line.startswith("GET /v2/ "):
                    self._answer(conn, "200 OK", b"{}")
                elif self.hang:
                    while conn.recv(65536):
                        pass
                    return
                else:
                    self._answer(conn, "404 Not Found", json.dumps({"errors": [
                        {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}).encode())
        except OSError:
            pass
        finally:
            conn.close()

    @staticmethod
    def _answer(conn: socket.socket, status: str, body: bytes, extra: str = "") -> None:
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     f"Docker-Distribution-API-Version: registry/2.0\r\n{extra}\r\n".encode() + body)

    def close(self) -> None:
        self.server.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


def test_a_registry_that_stops_answering_shows_pulling_image_then_fails_within_the_pull_timeout(client, tmp_path):
    registry = FakeRegistry(hang=True)
    queue = docker_queue(client, "hungq")
    image = f"{registry.address}/team/app:1"
    job = command_job(client, tmp_path, "print(1)", queue, image=image)
    seen: list[str | None] = []

    async def go():
        async with Agent(client, [queue], config=Config({"DockerBackend": {"pull_timeout": 3.0}})):
            t0 = time.monotonic()
            while not job.refresh().done:
                seen.append(job.record.reason)
                await asyncio.sleep(0.05)
            return time.monotonic() - t0

    try:
        took = asyncio.run(go())
    finally:
        registry.close()
    rec = job.record
    assert (rec.state, rec.reason) == ("failed", "image_pull_failed"), rec.message
    assert "pulling_image" in seen
    assert any("/manifests/" in r for r in registry.requests)  # it hung where the pull's request was waiting
    assert 3 <= took < 20  # docker-py's own pull would wait forever here
    assert image in rec.message and registry.address in rec.message
    assert "no progress for 3s" in rec.message and "DockerBackend.pull_timeout" in rec.message
    assert f"pulling {image} from {registry.address}" in job.logs()


def test_credentials_from_the_docker_config_file_reach_the_registry_and_nowhere_else(client, tmp_path, monkeypatch,
                                                                                    caplog):
    registry = FakeRegistry(auth=True)
    password = f"pw-{uuid.uuid4().hex}"
    basic = base64.b64encode(f"robot:{password}".encode()).decode()
    config_dir = tmp_path / "docker-config"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps({"auths": {registry.address: {"auth": basic}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    caplog.set_level(logging.DEBUG)
    queue = docker_queue(client, "authq")  # no registry_auth: the engine's login (the config file) is what counts
    image = f"{registry.address}/team/private:1"
    job = command_job(client, tmp_path, "print(1)", queue, image=image)
    try:
        run_jobs(client, [job], timeout=60)
    finally:
        registry.close()
    rec = job.record
    assert (rec.state, rec.reason) == ("failed", "image_pull_failed"), rec.message
    assert "manifest unknown" in rec.message
    assert registry.authorizations and set(registry.authorizations) == {f"Basic {basic}"}
    stored = [job.logs(), rec.message or "", json.dumps(client.store.get_job(job.id).spec), caplog.text]
    client.close()  # the store's files, flushed, are checked too
    stored += [p.read_bytes().decode("latin-1") for p in (tmp_path / "home").rglob("*") if p.is_file()]
    for text in stored:
        assert password not in text and basic not in text


def test_a_gpu_job_on_an_engine_without_the_nvidia_runtime_fails_with_a_reason(client, tmp_path, docker_api):
    runtimes = docker_api.info().get("Runtimes") or {}
    assert "nvidia" not in runtimes, "this test expects a GPU-less engine"
    queue = docker_queue(client)
    job = command_job(client, tmp_path, "print(1)", queue, image=BASE_IMAGE, resources={"gpu": 1})
    run_jobs(client, [job], timeout=60, gpus=[0])  # the agent's pool offers a GPU; the engine cannot
    rec = job.record
    assert (rec.state, rec.reason) == ("failed", "no_gpu_runtime"), rec.message
    assert "NVIDIA Container Toolkit" in rec.message
    assert job_containers(docker_api, job.id) == []


class GpuRecordingBackend(DockerBackend):
    """Records the GPUs each job's container asks the engine for, and holds every start until two jobs have theirs,
    so both hold GPUs at once before the engine (without NVIDIA's runtime) refuses them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.requests: dict[str, dict] = {}
        self.both_started = asyncio.Event()

    async def start(self, ctx):
        api = await self._api(ctx.queue_config)
        (request,) = container.host_config(api, ctx, None)["DeviceRequests"]
        self.requests[ctx.job_id] = {"gpu_ids": list(ctx.gpu_ids), "device_ids": request["DeviceIDs"],
                                     "visible": container.job_env(ctx, False)["NVIDIA_VISIBLE_DEVICES"]}
        if len(self.requests) == 2:
            self.both_started.set()
        await asyncio.wait_for(self.both_started.wait(), 30)
        return await super().start(ctx)


def test_two_gpu_jobs_at_once_get_disjoint_gpus_from_the_agents_pool(client, tmp_path, docker_api):
    queue = docker_queue(client, "gpuq")
    jobs = [command_job(client, tmp_path, "print(1)", queue, image=BASE_IMAGE, resources={"gpu": 2})
            for _ in range(2)]
    agent = run_jobs(client, jobs, timeout=60, gpus=[0, 1, 2, 3], backend_classes={"docker": GpuRecordingBackend})
    for job in jobs:
        assert (job.record.state, job.record.reason) == ("failed", "no_gpu_runtime"), job.record.message
    first, second = (agent.backend("docker").requests[job.id] for job in jobs)
    for got in (first, second):
        assert len(got["gpu_ids"]) == 2 and set(got["gpu_ids"]) <= {0, 1, 2, 3}
        assert got["device_ids"] == [str(g) for g in got["gpu_ids"]]
        assert got["visible"] == ",".join(map(str, got["gpu_ids"]))
    assert not set(first["gpu_ids"]) & set(second["gpu_ids"])


def test_cancel_stops_with_the_grace_period_then_kills(client, tmp_path, docker_api):
    queue = docker_queue(client, grace_period="1s")
    code = ("import signal, time\nsignal.signal(signal.SIGTERM, lambda *a: print('got TERM', flush=True))\n"
            "print('ready', flush=True)\ntime.sleep(120)\n")
    job = command_job(client, tmp_path, code, queue, image=BASE_IMAGE)

    async def go():
        async with Agent(client, [queue]):
            await until(lambda: "ready" in job.logs(), 60, "the job to start")
            t0 = time.monotonic()
            client.cancel(job.id)
            await until(lambda: job.refresh().done, 60, "the job to end")
            return time.monotonic() - t0

    took = asyncio.run(go())
    rec = job.record
    assert (rec.state, rec.reason) == ("cancelled", "cancelled")
    assert "got TERM" in job.logs()  # SIGTERM reached the job through the container's init
    assert 0.9 < took < 20
    assert job_containers(docker_api, job.id) == []


# ---------------------------------------------------------------- security


def test_secrets_reach_the_job_but_appear_nowhere_in_inspect_logs_or_the_store(client, tmp_path, docker_api,
                                                                               monkeypatch):
    canary = "canary-9d1e 'quoted' $HOME `x`\nsecond line"
    monkeypatch.setenv("JL_CANARY", canary)
    queue = docker_queue(client, keep_on_failure=True)
    code = ("import hashlib, os, sys\n"
            "v = os.environ['JL_CANARY']\n"
            "print('digest', hashlib.sha256(v.encode()).hexdigest())\n"
            "print('stdin closed', sys.stdin.read() == '')\n"
            "sys.exit(1)\n")  # fail, so keep_on_failure leaves the container to inspect
    job = command_job(client, tmp_path, code, queue, image=BASE_IMAGE, secrets=["JL_CANARY"],
                      resources={"cpu": 0.5, "memory": "256Mi"})
    run_jobs(client, [job], timeout=60)
    logs = job.logs()
    assert f"digest {hashlib.sha256(canary.encode()).hexdigest()}" in logs, logs
    assert "stdin closed True" in logs
    (kept,) = job_containers(docker_api, job.id)
    try:
        inspect = docker_api.inspect_container(kept["Id"])
        image = docker_api.inspect_image(inspect["Image"])
        text = json.dumps([inspect, image, kept])
        for piece in (canary, canary.split("\n")[0], "canary-9d1e", "second line"):
            assert piece not in text
        host = inspect["HostConfig"]
        assert host["Privileged"] is False and host["NetworkMode"] != "host"
        assert not host.get("CapAdd") and "no-new-privileges" in host["SecurityOpt"]
        assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 256 * 2**20
        modes = {m["Destination"]: m["RW"] for m in inspect["Mounts"]}
        assert modes == {"/jl/work": True}  # the attempt's own copy of the folder, read-write
    finally:
        docker_api.remove_container(kept["Id"], force=True)
    stored = json.dumps(client.store.get_job(job.id).spec)
    assert "canary-9d1e" not in stored and "canary-9d1e" not in logs


@pytest.mark.parametrize("transfer", ["mount", "copy"])
def test_a_container_gets_its_declared_secret_and_nothing_of_the_agents_environment(client, tmp_path, docker_api,
                                                                                    monkeypatch, transfer):
    declared = "declared-" + uuid.uuid4().hex
    undeclared = "undeclared-" + uuid.uuid4().hex
    token = "jlat_" + uuid.uuid4().hex
    monkeypatch.setenv("JL_DECLARED", declared)
    monkeypatch.setenv("JL_UNDECLARED", undeclared)
    monkeypatch.setenv("JUPYTER_LAUNCH_TOKEN", token)  # a remote agent's own credential
    queue = docker_queue(client, f"env{transfer}", transfer=transfer)
    code = ("import json, os, pathlib\n"
            "out = pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'])\n"
            "(out / 'env.json').write_text(json.dumps(dict(os.environ)))\n"
            "print('secret', os.environ['JL_DECLARED'])\n")
    job = command_job(client, tmp_path, code, queue, image=BASE_IMAGE, env={"GREETING": "hi"},
                      secrets=["JL_DECLARED"])
    run_jobs(client, [job], timeout=120)
    assert job.record.state == "succeeded", (job.record.message, job.logs())
    env = json.loads(client.read_output(job.id, "env.json"))
    assert env["JL_DECLARED"] == declared and env["GREETING"] == "hi"
    assert "JL_UNDECLARED" not in env and "JUPYTER_LAUNCH_TOKEN" not in env
    assert not [k for k, v in env.items() if undeclared in v or token in v]
    # Everything else is the image's own, the engine's (HOSTNAME, a default PATH), the wrapper shell's (PWD, SHLVL),
    # Python's own locale coercion (LC_CTYPE) or jupyter-launch's job variables.
    image_env = dict(e.split("=", 1) for e in docker_api.inspect_image(BASE_IMAGE)["Config"].get("Env") or [])
    others = {k for k in env if k not in image_env and not k.startswith("JUPYTER_LAUNCH_")}
    assert others <= {"JL_DECLARED", "GREETING", "HOSTNAME", "PATH", "HOME", "PWD", "SHLVL", "LC_CTYPE",
                      "PYTHONUNBUFFERED"}, others
    assert not [k for k in env if k in os.environ and env[k] == os.environ[k] and k not in image_env
                and k not in ("JL_DECLARED", "PYTHONUNBUFFERED")]
    assert job.logs() == "secret ***\n"  # masked before it was stored


def test_a_notebook_writes_a_file_beside_itself_and_returns_it_as_an_output(client, tmp_path, env_image, docker_api):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    queue = docker_queue(client, "writeq")
    folder = tmp_path / "nb"
    folder.mkdir()
    (folder / "data.csv").write_text("a,b\n1,2\n")
    nb = new_notebook(cells=[
        new_code_cell("from pathlib import Path\nPath('x.txt').write_text(Path('data.csv').read_text().upper())"),
        new_code_cell("import shutil, jupyter_launch\nshutil.copy('x.txt', jupyter_launch.output_dir())\n"
                      "print(open('x.txt').read())"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "writes.ipynb")
    job = client.submit(folder / "writes.ipynb", queue=queue)
    run_jobs(client, [job])
    rec = job.record
    assert (rec.state, rec.reason) == ("succeeded", "completed"), (rec.message, job.logs())
    assert "Errno 30" not in job.logs()
    assert sorted(o.path for o in job.outputs) == ["writes.html", "writes.ipynb", "x.txt"]
    assert client.read_output(job.id, "x.txt") == b"A,B\n1,2\n"
    assert not (folder / "x.txt").exists()  # the job wrote into its own copy, not the submitted folder


def test_secret_values_are_quoted_for_the_wrapper():
    assert sh_quote("a'b") == "'a'\\''b'"
    assert secrets_line({"K": "x\ny"}) == b"export K='x'\"$jl_nl\"'y'\n"


# ---------------------------------------------------------------- capacity, warm containers and stale ones
def test_max_instances_caps_the_queues_running_containers(client, tmp_path, docker_api):
    import docker

    queue = docker_queue(client, "capq", max_instances=2)
    jobs = [command_job(client, tmp_path, "import time; time.sleep(1.5)", queue, image=BASE_IMAGE)
            for _ in range(5)]
    counts: list[int] = []
    done = threading.Event()

    def watch() -> None:
        api = docker.APIClient(version="auto", timeout=30)  # its own connection: the test's is not for threads
        try:
            while not done.is_set():
                counts.append(len(api.containers(filters={"label": f"{QUEUE_LABEL}={queue}"})))
                time.sleep(0.02)
        finally:
            api.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run_jobs(client, jobs, timeout=120, max_jobs=5)  # the agent would run all five at once
    finally:
        done.set()
        watcher.join()
    for job in jobs:
        assert job.record.state == "succeeded", (job.record.message, job.logs())
    assert max(counts) == 2, counts  # the cap was reached, and never passed




def test_min_instances_starts_jobs_by_exec_in_warm_containers(client, tmp_path, docker_api, monkeypatch):
    monkeypatch.setenv("JL_WARM_SECRET", "warm-secret")
    queue = docker_queue(client, "warmq", min_instances=1, image=BASE_IMAGE)
    code = ("import os, pathlib\nprint('in warm', os.environ['JL_WARM_SECRET'] == 'warm-secret')\n"
            "pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'w.txt').write_text('warm')\n")

    async def go():
        async with Agent(client, [queue]):
            warm = lambda: docker_api.containers(filters={"label": [f"{QUEUE_LABEL}={queue}", WARM_LABEL]})  # noqa: E731
            await until(lambda: len(warm()) == 1, 60, "a warm container")
            before = warm()[0]["Id"]
            job = command_job(client, tmp_path, code, queue, secrets=["JL_WARM_SECRET"])
            await until(lambda: job.refresh().done, 60, "the job to end")
            await until(lambda: len(warm()) == 1 and warm()[0]["Id"] != before, 60, "the pool to be topped up")
            return job, before

    job, used = asyncio.run(go())
    rec = job.record
    assert (rec.state, rec.exit_code) == ("succeeded", 0), (rec.message, job.logs())
    assert "in warm True" in job.logs()
    assert client.read_output(job.id, "w.txt") == b"warm"
    assert job_containers(docker_api, job.id) == []  # no container was created for the job
    assert not docker_api.containers(all=True, filters={"id": used})  # the used warm container is gone
    # The agent's stop removed the pool.
    assert not docker_api.containers(all=True, filters={"label": [f"{QUEUE_LABEL}={queue}", WARM_LABEL]})


def test_an_agent_starting_up_removes_containers_of_jobs_no_longer_active(client, tmp_path, docker_api):
    queue = docker_queue(client, "reapq")
    job = command_job(client, tmp_path, "print(1)", queue, image=BASE_IMAGE)
    client.cancel(job.id)  # the job ends without ever running; a container claiming to be its attempt is stale
    stale = docker_api.create_container(BASE_IMAGE, ["sleep", "60"], labels={
        MANAGED_BY: "jupyter-launch", QUEUE_LABEL: queue, JOB_ID_LABEL: job.id, "jupyter-launch.fence": "1"})["Id"]
    docker_api.start(stale)

    async def go():
        async with Agent(client, [queue]):
            pass

    asyncio.run(go())
    assert not docker_api.containers(all=True, filters={"id": stale})


def running_container(api, job) -> str:
    """The id of the job's container once it runs (and the job says so)."""
    deadline = time.monotonic() + 60
    while True:
        running = [c for c in job_containers(api, job.id) if c["State"] == "running"]
        if running and job.refresh().state == "running":
            return running[0]["Id"]
        assert time.monotonic() < deadline and not job.record.done, (job.record, job.logs())
        time.sleep(0.1)


def stale_container(api, queue: str, job_id: str, fence: str = "1") -> str:
    """A running container labelled as an attempt of ``job_id`` on ``queue``, as an agent that died would leave."""
    cid = api.create_container(BASE_IMAGE, ["sleep", "60"], labels={
        MANAGED_BY: "jupyter-launch", QUEUE_LABEL: queue, JOB_ID_LABEL: job_id, "jupyter-launch.fence": fence})["Id"]
    api.start(cid)
    return cid


def test_agents_sharing_an_engine_leave_each_others_running_containers_alone(client, tmp_path, docker_api):
    queue = docker_queue(client, "shareq")
    job = command_job(client, tmp_path, "import time; print('started', flush=True); time.sleep(120)", queue,
                      image=BASE_IMAGE)
    ended = command_job(client, tmp_path, "print(1)", queue, image=BASE_IMAGE)
    client.cancel(ended.id)
    # An agent of another store, on a queue of the same name: none of this store's jobs are its to judge.
    other = LaunchClient(home=tmp_path / "other-home")
    other.create_queue(QueueConfig(queue_name=queue, provider={"type": "docker", "build": BUILD}))
    sweeping = Config({"DockerBackend": {"reap_interval": 0.2}})

    async def go():
        async with Agent(client, [queue]):
            cid = await asyncio.to_thread(running_container, docker_api, job)
            leftover = stale_container(docker_api, queue, ended.id)
            async with Agent(client, [queue], config=sweeping):  # starts, then sweeps every 0.2 s
                await asyncio.sleep(1.5)
            async with Agent(other, [queue], config=sweeping):
                await asyncio.sleep(1.5)
            assert docker_api.inspect_container(cid)["State"]["Running"], job.logs()
            assert job.refresh().state == "running", job.record
            assert not docker_api.containers(all=True, filters={"id": leftover})  # the ended job's: removed
            client.cancel(job.id)
            await until(lambda: job.refresh().done, 60, "the job to be cancelled")

    try:
        asyncio.run(go())
    finally:
        other.close()
    assert (job.record.state, job.record.reason) == ("cancelled", "cancelled"), job.record


def test_python_means_python3_in_images_without_python(client, tmp_path, docker_api):
    queue = docker_queue(client)
    job = command_job(client, tmp_path, "import sys; print(sys.version_info[:2])", queue, image=BASE_IMAGE)
    run_jobs(client, [job], timeout=60)
    assert job.record.state == "succeeded" and "(3, 11)" in job.logs()



class SocketProxy:
    """A unix socket forwarding to the engine's, that the test can cut: the engine 'goes away' mid-job."""

    def __init__(self, path: Path, upstream: str = "/var/run/docker.sock"):
        import socket
        import threading

        self.path, self.upstream = str(path), upstream
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(64)
        self.conns: list = []
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.closed:
                client.close()
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.upstream)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        import socket

        self.closed = True
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone would not
        except OSError:
            pass
        self.server.close()
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


# docker-py's unix transport leaves a socket unclosed when connect() is refused (the engine is gone): not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_losing_the_engine_mid_job_fails_the_job_with_a_reason(client, tmp_path, docker_api):
    proxy = SocketProxy(tmp_path / "engine.sock")
    queue = docker_queue(client, base_url=f"unix://{tmp_path / 'engine.sock'}")
    job = command_job(client, tmp_path, "import time; print('ready', flush=True); time.sleep(120)", queue,
                      image=BASE_IMAGE)
    config = Config({"DockerBackend": {"engine_retry_seconds": 1.0}})

    async def go():
        async with Agent(client, [queue], config=config):
            await until(lambda: "ready" in job.logs(), 60, "the job to start")
            proxy.cut()
            await until(lambda: job.refresh().done, 60, "the job to end")

    try:
        asyncio.run(go())
        rec = job.record
        assert (rec.state, rec.reason) == ("failed", "docker_engine_lost"), rec.message
        assert "rather than left running" in rec.message
    finally:
        for c in job_containers(docker_api, job.id):
            docker_api.remove_container(c["Id"], force=True)
        gc.collect()  # those refused sockets are reported here, under this test's filter, not at session end


def test_a_job_of_several_nodes_fails_at_once_on_a_backend_that_runs_one_rank(client, tmp_path, docker_api):
    # Before: the Docker backend ran such a job as one container, and its ranks never found each other.
    queue = docker_queue(client, image="launch-python:bookworm")
    job = command_job(client, tmp_path, "print('ran')", queue, resources={"nodes": 2})
    run_jobs(client, [job])
    rec = job.refresh()
    assert (rec.state, rec.reason) == ("failed", "nodes_unsupported"), rec
    assert rec.message == ("the job asks for 2 nodes, and the docker backend runs a job as one rank: submit it to a "
                           "local, kubernetes or slurm queue, or with --nodes 1")
    assert "ran" not in job.logs() and not job_containers(docker_api, job.id)


def test_a_container_writing_faster_than_its_store_is_held_back_not_buffered(client, tmp_path, docker_api,
                                                                            monkeypatch):
    """As on the local backend (tests/test_local_jobs.py): past ``LOG_HIGH_WATER`` held, the attach stream is not
    read until the store has taken some; the agent grows by a fraction of the 256 MiB log, which arrives whole."""
    from test_local_jobs import blocks_job, check_blocks_log, slow_store

    from jupyter_launch.agent import LOG_HIGH_WATER

    queue = docker_queue(client)
    job = command_job(client, tmp_path, blocks_job(), queue, image=BASE_IMAGE)
    slow_store(client.store, monkeypatch)
    with PeakGrowth() as grew:
        run_jobs(client, [job])
    assert (job.record.state, job.record.exit_code) == ("succeeded", 0), job.logs()[-2000:]
    assert grew.mib < 8 * LOG_HIGH_WATER / 2**20, f"the agent grew by {grew.mib:.0f} MiB for a 256 MiB log"
    check_blocks_log(client, job)

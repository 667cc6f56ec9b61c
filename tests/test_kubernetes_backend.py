"""The Kubernetes backend on a real cluster: LaunchClient → SQLite store → agent → batch/v1 Jobs on ci/k8s-start.sh's node.

The cluster and the job image are made by ci/k8s-start.sh and ci/k8s-test-image.sh; when either cannot be had the
tests fail (they do not skip) with a message that names what is missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_launch.agent import make_local_agent
from jupyter_launch.backends.base import BASE_VARIABLES, JOB_VARIABLES
from jupyter_launch.backends.kubernetes.bootstrap import OUTPUTS_MARK, OutputsSplitter
from jupyter_launch.backends.kubernetes.manifests import (JOB_ID_LABEL, MANAGED_BY, build_manifests, job_name,
                                                          merge_template)
from jupyter_launch.client import LaunchClient
from jupyter_launch.spec import JobSpec, QueueConfig

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
K8S_RUN = Path(os.environ.get("K8S_RUN", "/tmp/launch-k8s"))
NAMESPACE = "default"
HELPER_IMAGE = "busybox:local"  # ci/k8s-start.sh makes it (no registry here); the queues' default is busybox:1.36
CANARY = "canary-" + hashlib.sha256(os.urandom(16)).hexdigest()[:24]


# ---------------------------------------------------------------- fixtures: a real cluster and a job image

def _cluster_answers(kubeconfig: Path) -> bool:
    if not kubeconfig.exists():
        return False
    from kubernetes import client, config

    try:
        api = config.new_client_from_config(str(kubeconfig))
        client.VersionApi(api).get_code(_request_timeout=3)
        api.close()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    path = K8S_RUN / "admin.kubeconfig"
    if not _cluster_answers(path):
        proc = subprocess.run(["bash", str(ROOT / "ci" / "k8s-start.sh")], capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0 or not _cluster_answers(path):
            pytest.fail("no Kubernetes cluster: ci/k8s-start.sh failed (it needs the binaries from "
                        "ci/k8s-build.sh in /var/cache/launch-k8s/bin, etcd and the Docker engine):\n"
                        + proc.stdout[-2000:] + proc.stderr[-2000:], pytrace=False)
    return str(path)


@pytest.fixture(scope="session")
def image(kubeconfig: str) -> str:
    proc = subprocess.run(["bash", str(ROOT / "ci" / "k8s-test-image.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.fail("cannot build the job image with ci/k8s-test-image.sh (needs the Docker engine and "
                    "launch-python:bookworm):\n" + proc.stderr[-3000:], pytrace=False)
    return proc.stdout.split()[-1]


@pytest.fixture(scope="session")
def k8s(kubeconfig: str):
    """(BatchV1Api, CoreV1Api) for checking what the backend did."""
    from kubernetes import client, config

    api = config.new_client_from_config(kubeconfig)
    yield client.BatchV1Api(api), client.CoreV1Api(api)
    api.close()


@pytest.fixture
def launch(tmp_path: Path, kubeconfig: str, image: str, monkeypatch: pytest.MonkeyPatch):
    # Every agent of these tests, in this process or a child, keeps its job folders under the test's home.
    monkeypatch.setenv("JUPYTER_LAUNCH_HOME", str(tmp_path / "home"))
    client = LaunchClient(home=tmp_path / "home")
    client.create_queue(QueueConfig(queue_name="k8s", provider={
        "type": "kubernetes", "helper_image": HELPER_IMAGE, "kubeconfig": kubeconfig, "namespace": NAMESPACE, "image": image,
        "image_pull_policy": "Never", "grace_period": 2, "labels": {"team": "tests"}}))
    yield client
    client.close()


class ClusterRecorder:
    """Watches every Job, ConfigMap, Secret and Pod of the test in the namespace and keeps them as JSON text."""

    def __init__(self, kubeconfig: str):
        from kubernetes import client, config, watch

        self.api = config.new_client_from_config(kubeconfig)
        self.core, self.batch = client.CoreV1Api(self.api), client.BatchV1Api(self.api)
        self.seen: dict[str, list[str]] = {"Job": [], "ConfigMap": [], "Secret": [], "Pod": []}
        self.max_jobs = 0
        self.errors: list[Exception] = []
        self._closing = False
        self._live_jobs: set[str] = set()
        self._watches = [watch.Watch() for _ in range(4)]
        self._threads = [threading.Thread(target=self._run, args=(w, kind, fn), daemon=True) for w, (kind, fn) in
                         zip(self._watches, [("Job", self.batch.list_namespaced_job),
                                             ("ConfigMap", self.core.list_namespaced_config_map),
                                             ("Secret", self.core.list_namespaced_secret),
                                             ("Pod", self.core.list_namespaced_pod)])]
        for t in self._threads:
            t.start()

    def _run(self, w, kind, fn) -> None:
        try:
            self._watch(w, kind, fn)
        except Exception as exc:  # closing the client ends the stream with an error: expected then
            if not self._closing:
                self.errors.append(exc)

    def _watch(self, w, kind, fn) -> None:
        for event in w.stream(fn, NAMESPACE, label_selector=f"{MANAGED_BY}=jupyter-launch", timeout_seconds=600):
            obj = event["object"]
            self.seen[kind].append(json.dumps(self.api.sanitize_for_serialization(obj)))
            if kind == "Job":
                name = obj.metadata.name
                if event["type"] == "DELETED":
                    self._live_jobs.discard(name)
                else:
                    self._live_jobs.add(name)
                self.max_jobs = max(self.max_jobs, len(self._live_jobs))

    def close(self) -> None:
        self._closing = True
        for w in self._watches:
            w.stop()
        self.api.close()
        for t in self._threads:
            t.join(5)
        assert not self.errors, self.errors


def run_agent(client: LaunchClient, jobs, timeout: float = 180, while_running=None, **traits):
    """Run an in-process agent on the jobs' queues until every job has ended; ``while_running(agent)`` runs
    alongside (an async function)."""

    async def main():
        agent = make_local_agent(client.store, sorted({j.record.queue for j in jobs}), blobs=client.blobs,
                                 home=client.home, lease_seconds=5, **traits)
        await agent.start()
        task = asyncio.create_task(agent.run())
        side = asyncio.create_task(while_running(agent)) if while_running else None
        try:
            deadline = time.monotonic() + timeout
            while not all(j.refresh().done for j in jobs):
                assert time.monotonic() < deadline, [j.refresh() for j in jobs]
                await asyncio.sleep(0.05)
            if side:
                await side
        finally:
            await agent.stop()
            task.cancel()
            if side and not side.done():
                side.cancel()
        return [j.record for j in jobs]

    return asyncio.run(main())


def enqueue(client: LaunchClient, queue: str = "k8s", **spec):
    """A command job straight into the store (it needs no files, so no artifact)."""
    record = client.store.enqueue(queue, JobSpec(kind="command", **spec), artifact=None)
    return client.job(record.id)


def k8s_objects(k8s, job_id: str) -> dict[str, list[str]]:
    batch, core = k8s
    selector = f"{JOB_ID_LABEL}={job_id}"
    return {"jobs": [j.metadata.name for j in batch.list_namespaced_job(NAMESPACE, label_selector=selector).items],
            "pods": [p.metadata.name for p in core.list_namespaced_pod(NAMESPACE, label_selector=selector).items],
            "configmaps": [c.metadata.name for c in
                           core.list_namespaced_config_map(NAMESPACE, label_selector=selector).items],
            "secrets": [s.metadata.name for s in core.list_namespaced_secret(NAMESPACE, label_selector=selector).items]}


def wait_gone(k8s, job_id: str, timeout: float = 30) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        left = k8s_objects(k8s, job_id)
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def notebook(folder: Path, name: str, *sources: str) -> Path:
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                                                          "display_name": "Python 3"}},
          "cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "id": f"c{i}",
                     "source": source} for i, source in enumerate(sources)]}
    path = folder / name
    path.write_text(json.dumps(nb))
    return path


def jobs_seen(recorder: "ClusterRecorder", kind: str, job_id: str) -> list[dict]:
    """The recorded states of the job's objects of one kind."""
    objs = [json.loads(text) for text in recorder.seen[kind]]
    return [o for o in objs if (o["metadata"].get("labels") or {}).get(JOB_ID_LABEL) == job_id]


def reasons_until_done(job, seen: list[str]):
    """A ``while_running`` side task that records each reason the job shows."""

    async def watch(agent):
        while True:
            rec = await asyncio.to_thread(job.refresh)
            if not seen or seen[-1] != rec.reason:
                seen.append(rec.reason)
            if rec.done:
                return
            await asyncio.sleep(0.02)

    return watch


def wait_for_reason(job, reasons: tuple[str, ...], timeout: float) -> tuple[str, str, float]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        rec = job.refresh()
        if rec.reason in reasons:
            return rec.reason, rec.message or "", time.monotonic() - start
        assert not rec.done, (rec.state, rec.reason, rec.message)
        time.sleep(0.05)
    raise AssertionError(f"job never showed {reasons}; last {job.refresh().reason}: {job.record.message}")


# ---------------------------------------------------------------- pure parts

def test_outputs_splitter_takes_marker_lines_out_across_any_chunking():
    import base64
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"x" * 10000
        info = tarfile.TarInfo("a/b.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    payload = buf.getvalue()
    text = base64.b64encode(payload)
    stream = b"log line\n\x1ejupyter-launch {\"type\":\"metrics\"}\n"
    for i in range(0, len(text), 3000):
        stream += OUTPUTS_MARK + b" " + text[i:i + 3000] + b"\n"
    stream += OUTPUTS_MARK + b"-end " + hashlib.sha256(payload).hexdigest().encode() + b" %d\n" % len(payload)
    for size in (1, 7, 100, 4096, len(stream)):
        splitter = OutputsSplitter()
        plain = b"".join(splitter.feed(stream[i:i + size]) for i in range(0, len(stream), size)) + splitter.flush()
        assert plain == b"log line\n\x1ejupyter-launch {\"type\":\"metrics\"}\n"
        assert splitter.outputs == payload


def room() -> asyncio.Event:
    """A job's log with room (``JobContext.log_room``)."""
    event = asyncio.Event()
    event.set()
    return event


def test_a_log_stream_that_ended_before_its_container_ran_is_read_again():
    """A follow stream opened while the container was only being started can end empty before the job runs; a job of
    milliseconds is over by the next look. Its log is read once more (it was lost: found with an init container)."""
    import logging
    from types import SimpleNamespace as NS

    from jupyter_launch.backends.kubernetes.pods import KubernetesHandle, PodLogs

    class Stream:
        def __init__(self, data: bytes):
            self.chunks = [data] if data else []

        def read1(self, _n: int) -> bytes:
            return self.chunks.pop(0) if self.chunks else b""

        def release_conn(self) -> None:
            pass

    opened = []

    class Core:
        def read_namespaced_pod_log(self, pod, namespace, **kwargs):
            opened.append(kwargs.get("follow", False))
            return Stream(b"" if len(opened) == 1 else b"read 42\n")

        def read_namespaced_pod(self, pod, namespace):
            done = NS(name="job", state=NS(terminated=NS(exit_code=0), waiting=None, running=None), restart_count=0)
            return NS(status=NS(phase="Succeeded", container_statuses=[done]))

    async def call(fn, *args, **kwargs):
        return fn(*args, **kwargs)

    logged = []

    async def follow() -> None:
        ctx = NS(log=lambda stream, data: logged.append((stream, data)), log_room=room())
        handle = KubernetesHandle(name="jl-x", namespace="default", api=None, ctx=ctx, loop=asyncio.get_running_loop())
        await PodLogs(call, Core(), logging.getLogger("test")).follow(handle, ctx.log, "jl-x-pod")
        await asyncio.sleep(0)  # the pump hands lines to the loop

    asyncio.run(follow())
    assert opened == [True, False] and logged == [("stdout", b"read 42\n")]


def test_log_follows_of_starting_pods_share_a_rate_of_log_requests():
    """A container not started yet has its log asked for again every 0.05 s while few pods start (before: every
    0.25 s, the first line up to 0.25 s late), and no more often in all than ``retry_rate`` per second when many do.
    The waits asked for are recorded; the pod starts at the fourth ask."""
    import logging
    from types import SimpleNamespace as NS

    from kubernetes.client.exceptions import ApiException

    from jupyter_launch.backends.kubernetes.pods import KubernetesHandle, PodLogs

    class Core:
        def __init__(self):
            self.asks = 0

        def read_namespaced_pod_log(self, pod, namespace, **kwargs):
            self.asks += 1
            if self.asks < 4:
                raise ApiException(status=400, reason="ContainerCreating")
            return NS(read1=lambda _n: b"", release_conn=lambda: None)

        def read_namespaced_pod(self, pod, namespace):
            done = NS(name="job", state=NS(terminated=NS(exit_code=0), waiting=None, running=None), restart_count=0)
            return NS(status=NS(phase="Running" if self.asks < 4 else "Succeeded", container_statuses=[done]))

    async def call(fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def waits(others: int) -> list[float]:
        asked: list[float] = []

        async def until_started(handle, pod, longest=0.25):
            asked.append(longest)

        async def follow() -> None:
            ctx = NS(log=lambda stream, data: None, log_room=room())
            handle = KubernetesHandle(name="jl-x", namespace="default", api=None, ctx=ctx,
                                      loop=asyncio.get_running_loop())
            starting = {f"other-{i}" for i in range(others)}
            logs = PodLogs(call, Core(), logging.getLogger("test"), starting, retry_rate=40.0)
            logs.until_started = until_started  # type: ignore[method-assign]
            await logs.follow(handle, ctx.log, "jl-x-pod")
            assert starting == {f"other-{i}" for i in range(others)}  # this pod is no longer counted

        asyncio.run(follow())
        return asked

    assert waits(0) == [0.05] * 3  # alone: as often as a client polling the log by itself
    assert waits(7) == [0.2] * 3  # 8 pods starting share 40 asks a second
    assert waits(99) == [0.25] * 3  # never less often than every 0.25 s


def test_pod_template_merges_by_name():
    base = {"spec": {"containers": [{"name": "job", "image": "a", "env": [{"name": "X", "value": "1"}]}],
                     "nodeSelector": {"a": "b"}}}
    merged = merge_template(base, {"spec": {"containers": [{"name": "job", "env": [{"name": "Y", "value": "2"}]},
                                                           {"name": "sidecar", "image": "s"}],
                                            "priorityClassName": "high"}})
    assert merged["spec"]["containers"][0] == {"name": "job", "image": "a", "env": [
        {"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}
    assert merged["spec"]["containers"][1]["name"] == "sidecar"
    assert merged["spec"]["nodeSelector"] == {"a": "b"} and merged["spec"]["priorityClassName"] == "high"


# ---------------------------------------------------------------- manifests

def _full_context(tmp_path: Path):
    from jupyter_launch.backends.base import JobContext

    spec = JobSpec(kind="notebook", notebook="train.ipynb", resources={"cpu": "500m", "memory": "1Gi", "gpu": 2},
                   timeout="1h", retries=2, env={"LR": "0.1"}, secrets=["API_TOKEN"])
    cfg = QueueConfig(queue_name="gpu-training-queue", provider={
        "type": "kubernetes", "helper_image": HELPER_IMAGE, "namespace": "default", "service_account": "default",
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "image_pull_secrets": ["regcred"], "labels": {"team": "ml"}, "image_pull_policy": "IfNotPresent",
        "pod_template": {"metadata": {"annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}},
                         "spec": {"priorityClassName": "system-cluster-critical"}},
    }).provider
    return JobContext(job_id="65f0c0de1a2b3c", attempt=1, fence=1, queue="gpu-training-queue", spec=spec,
                      queue_config=cfg, workdir=tmp_path, output_dir=tmp_path / "out", env={"LR": "0.1"},
                      secrets={"API_TOKEN": CANARY}, artifact="sha256:" + "0" * 64, agent_id="agent-1")


def test_manifests_are_accepted_by_the_api_server_and_valid_for_newer_clusters(tmp_path, k8s):
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions

    ctx = _full_context(tmp_path)
    manifests = build_manifests(ctx, "registry.example.com/ml/train:1.0", b"\x1f\x8b" + b"\0" * 100)
    job = manifests["job"]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 2
    assert job["spec"]["activeDeadlineSeconds"] == 3600 and job["spec"]["ttlSecondsAfterFinished"] == 600
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": str(2**30)},
                                      "limits": {"cpu": "500m", "memory": str(2**30), "nvidia.com/gpu": "2"}}
    assert pod["nodeSelector"] and pod["tolerations"] and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert job["metadata"]["labels"][JOB_ID_LABEL] == "65f0c0de1a2b3c" and job["metadata"]["labels"]["team"] == "ml"
    assert container["envFrom"] == [{"secretRef": {"name": "jl-65f0c0de1a2b3c-secrets"}}]
    assert CANARY not in json.dumps(job) and CANARY not in json.dumps(manifests["configmap"])
    assert manifests["secret"]["stringData"] == {"API_TOKEN": CANARY}

    # The real API server (v1.20) validates and accepts each one (server-side dry run: nothing is created).
    batch, core = k8s
    batch.create_namespaced_job(NAMESPACE, job, dry_run="All")
    core.create_namespaced_config_map(NAMESPACE, manifests["configmap"], dry_run="All")
    core.create_namespaced_secret(NAMESPACE, manifests["secret"], dry_run="All")
    # A job image carries the folder: no ConfigMap, nothing mounted over the place the bootstrap reads it from.
    baked = build_manifests(ctx, "jupyter-launch-job:0123456789ab", None, "IfNotPresent")
    baked_pod = baked["job"]["spec"]["template"]["spec"]
    assert set(baked) == {"job", "secret"}
    assert [v["name"] for v in baked_pod["volumes"]] == ["jl-work"]
    # A notebook job's image has Python: no init container. A command job on an image it names gets one, which
    # unpacks the folder and lends the job's container a busybox.
    assert "initContainers" not in pod and container["command"][:2] == ["sh", "-c"]
    helped = build_manifests(ctx, "busybox:1.36", b"\x1f\x8b" + b"\0" * 100, helper=True)["job"]
    helped_pod = helped["spec"]["template"]["spec"]
    init, = helped_pod["initContainers"]
    assert (init["image"], init["imagePullPolicy"]) == (HELPER_IMAGE, "IfNotPresent")
    assert {m["mountPath"] for m in init["volumeMounts"]} == {"/jl/artifact", "/jl/work", "/jl/bin"}
    assert helped_pod["containers"][0]["command"][:3] == ["/jl/bin/busybox", "sh", "-c"]
    batch.create_namespaced_job(NAMESPACE, helped, dry_run="All")
    assert baked_pod["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    batch.create_namespaced_job(NAMESPACE, baked["job"], dry_run="All")
    # And the schemas of the clusters people run today (EKS/GKE 1.25+) accept them, strictly.
    for version in sorted(set(all_versions())):
        for manifest in [*manifests.values(), baked["job"], helped]:
            kubernetes_validate.validate(manifest, version, strict=True)


def test_a_kueue_local_queue_is_a_label_and_the_job_manifest_with_it_is_accepted(tmp_path, k8s):
    """docs/kubernetes.md, "Kueue": the queue's labels carry kueue.x-k8s.io/queue-name to the Job; Kueue's webhook
    suspends the Job itself. v1.20 (this cluster) has no spec.suspend: its API server drops the field, while the
    schemas of the clusters Kueue runs on (1.22+) accept it."""
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions

    ctx = _full_context(tmp_path)
    ctx.queue_config = ctx.queue_config.model_copy(update={"labels": {"kueue.x-k8s.io/queue-name": "team-a"}})
    job = build_manifests(ctx, "registry.example.com/ml/train:1.0", b"\x1f\x8b" + b"\0" * 100)["job"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    batch, _ = k8s
    created = batch.create_namespaced_job(NAMESPACE, job, dry_run="All")
    assert created.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-a"
    suspended = json.loads(json.dumps(job))
    suspended["spec"]["suspend"] = True  # what Kueue's webhook adds on a cluster that has it
    answer = json.loads(batch.create_namespaced_job(NAMESPACE, suspended, dry_run="All", _preload_content=False).data)
    assert "suspend" not in answer["spec"]  # v1.20: accepted, the unknown field dropped
    for version in sorted(set(all_versions())):
        kubernetes_validate.validate(suspended, version, strict=True)


def test_an_invalid_pod_template_is_refused_with_the_api_servers_message(launch, tmp_path, k8s):
    launch.create_queue(QueueConfig(queue_name="bad", provider={
        "type": "kubernetes", "helper_image": HELPER_IMAGE, "kubeconfig": str(K8S_RUN / "admin.kubeconfig"), "image": "busybox:local",
        "image_pull_policy": "Never", "pod_template": {"spec": {"restartPolicy": "Sometimes"}}}))
    job = enqueue(launch, "bad", command=["true"])
    rec, = run_agent(launch, [job])
    assert (rec.state, rec.reason) == ("failed", "backend_error"), rec
    assert "restartPolicy" in rec.message and "Sometimes" in rec.message
    assert not any(wait_gone(k8s, job.id).values())


# ---------------------------------------------------------------- jobs on the cluster

def test_notebook_job_runs_to_completion_with_logs_and_outputs(launch, tmp_path, k8s):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "data.txt").write_text("42\n")
    path = notebook(folder, "analysis.ipynb", "print('answer', open('data.txt').read().strip())",
                    "import jupyter_launch, pathlib\n"
                    "(jupyter_launch.output_dir() / 'result.txt').write_text('done')\n"
                    "jupyter_launch.log({'loss': 0.5}, step=1)")
    job = launch.submit(path, queue="k8s")
    rec, = run_agent(launch, [job])
    assert (rec.state, rec.reason) == ("succeeded", "completed"), (rec, job.logs())
    assert "answer 42" in job.logs()
    paths = {o.path for o in job.outputs}
    assert "result.txt" in paths, paths
    assert launch.read_output(job.id, "result.txt") == b"done"
    assert [m["data"] for m in launch.metrics(job.id)] == [{"loss": 0.5}]
    assert OUTPUTS_MARK.decode() not in job.logs()
    assert not any(wait_gone(k8s, job.id).values())


def test_command_job_logs_outputs_and_secret_that_never_leaks(launch, tmp_path, k8s, kubeconfig, monkeypatch,
                                                              caplog):
    monkeypatch.setenv("LAUNCH_TEST_TOKEN", CANARY)
    recorder = ClusterRecorder(kubeconfig)
    code = textwrap.dedent(f"""
        import hashlib, os, pathlib, sys
        print('first line', flush=True)
        token = os.environ['LAUNCH_TEST_TOKEN']
        print('token sha', hashlib.sha256(token.encode()).hexdigest(), 'greeting', os.environ['GREETING'])
        print('to stderr', file=sys.stderr)
        out = pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'])
        (out / 'sub').mkdir()
        (out / 'sub' / 'big.bin').write_bytes(bytes(range(256)) * 4096)
        (out / 'small.txt').write_text('ok')
        sys.exit(0)
    """)
    job = enqueue(launch, command=["python", "-c", code], env={"GREETING": "hi"}, secrets=["LAUNCH_TEST_TOKEN"])
    try:
        rec, = run_agent(launch, [job])
        time.sleep(1)
    finally:
        recorder.close()
    logs = job.logs()
    assert (rec.state, rec.exit_code) == ("succeeded", 0), (rec, logs)
    # The pod's log merges stdout and stderr as the container runtime copies each: stdout keeps its own order, but
    # an unbuffered stderr line may come before a stdout line printed earlier.
    assert logs.startswith(("first line\n", "to stderr\nfirst line\n")), logs
    assert logs.index("first line\n") < logs.index("token sha ")
    assert f"token sha {hashlib.sha256(CANARY.encode()).hexdigest()} greeting hi" in logs
    assert "to stderr" in logs
    assert {o.path: o.size for o in job.outputs} == {"small.txt": 2, "sub/big.bin": 256 * 4096}
    assert launch.read_output(job.id, "sub/big.bin") == bytes(range(256)) * 4096
    # The secret went through a Kubernetes Secret, and nowhere else: not the Job, its pod, the ConfigMap,
    # the stored log, the store's database, or the agent's own log.
    assert recorder.seen["Secret"] and recorder.seen["Job"] and recorder.seen["Pod"]
    for kind in ("Job", "Pod", "ConfigMap"):
        assert not any(CANARY in text for text in recorder.seen[kind]), kind
    assert CANARY not in logs
    for db in (tmp_path / "home").rglob("*"):
        if db.is_file():
            assert CANARY.encode() not in db.read_bytes(), db
    assert CANARY not in caplog.text
    assert not any(wait_gone(k8s, job.id).values())


def test_a_pod_gets_its_declared_secret_nothing_of_the_agents_environment_and_a_writable_folder(
        launch, tmp_path, k8s, monkeypatch, image, docker_api):
    declared, undeclared, token = (f"{what}-{os.urandom(8).hex()}" for what in ("declared", "undeclared", "jlat"))
    monkeypatch.setenv("JL_DECLARED", declared)
    monkeypatch.setenv("JL_UNDECLARED", undeclared)
    monkeypatch.setenv("JUPYTER_LAUNCH_TOKEN", token)  # a remote agent's own credential
    folder = tmp_path / "project"
    folder.mkdir()
    path = notebook(folder, "env.ipynb",
                    "import json, os, shutil, jupyter_launch\n"
                    "(jupyter_launch.output_dir() / 'env.json').write_text(json.dumps(dict(os.environ)))\n"
                    "open('x.txt', 'w').write('beside')\n"  # its folder is writable, as on local
                    "shutil.copy('x.txt', jupyter_launch.output_dir())\n"
                    "print('secret', os.environ['JL_DECLARED'])")
    job = launch.submit(path, queue="k8s", env={"GREETING": "hi"}, secrets=["JL_DECLARED"])
    rec, = run_agent(launch, [job])
    assert (rec.state, rec.reason) == ("succeeded", "completed"), (rec, job.logs())
    env = json.loads(launch.read_output(job.id, "env.json"))
    assert env["JL_DECLARED"] == declared and env["GREETING"] == "hi"
    assert "JL_UNDECLARED" not in env and "JUPYTER_LAUNCH_TOKEN" not in env
    assert not [k for k, v in env.items() if undeclared in v or token in v]
    # Nothing else of the agent's own environment came along (the image's own variables, HOME or LANG, may happen
    # to be equal to the agent's).
    image_env = dict(e.split("=", 1) for e in docker_api.inspect_image(image)["Config"].get("Env") or [])
    assert not [k for k in env if k in os.environ and env[k] == os.environ[k] and k not in image_env
                and k not in BASE_VARIABLES and not k.startswith("LC_") and k not in JOB_VARIABLES
                and k != "JL_DECLARED"]
    assert launch.read_output(job.id, "x.txt") == b"beside"
    assert "secret ***" in job.logs() and declared not in job.logs()  # masked before it was stored
    assert not any(wait_gone(k8s, job.id).values())


def test_failing_command_reports_its_exit_code(launch, k8s):
    job = enqueue(launch, command=["sh", "-c", "echo bye; exit 3"])
    rec, = run_agent(launch, [job])
    assert (rec.state, rec.exit_code, rec.reason) == ("failed", 3, "exit_code")
    assert job.logs().startswith("bye\n")


@pytest.fixture(scope="session")
def bare_image() -> str:
    """An image with one program and nothing else: no shell, no tar, no Python (busybox's binary as /usr/bin/cat)."""
    tag = "jupyter-launch-test-bare:1"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode != 0:
        import io
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add("/bin/busybox", arcname="usr/bin/cat")
        subprocess.run(["docker", "import", "-c", "ENV PATH=/usr/bin", "-", tag], input=buf.getvalue(), check=True,
                       capture_output=True)
    return tag


def test_a_command_job_runs_on_an_image_with_nothing_of_ours(launch, tmp_path, k8s, bare_image):
    """The init container unpacks the folder and lends the job's container a busybox: the job's own image needs no
    Python (busybox), not even a shell or tar (an image of one program); a command it lacks is exit code 127."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "data.txt").write_text("42\n")
    bare = launch.submit(spec={"kind": "command", "command": ["cat", "data.txt"], "image": bare_image},
                         queue="k8s", root=folder)
    shell = launch.submit(spec={"kind": "command", "image": "busybox:local", "command": [
        "sh", "-c", "echo read $(cat data.txt); echo made > $JUPYTER_LAUNCH_OUTPUT_DIR/made.txt"]},
        queue="k8s", root=folder)
    missing = launch.submit(spec={"kind": "command", "command": ["python", "-c", "1"], "image": bare_image},
                            queue="k8s", root=folder)
    recs = {r.id: r for r in run_agent(launch, [bare, shell, missing])}
    assert (recs[bare.id].state, recs[bare.id].exit_code) == ("succeeded", 0), (recs[bare.id], bare.logs())
    assert bare.logs() == "42\n"
    assert (recs[shell.id].state, shell.logs()) == ("succeeded", "read 42\n"), (recs[shell.id], shell.logs())
    assert [o.path for o in shell.outputs] == ["made.txt"] and launch.read_output(shell.id, "made.txt") == b"made\n"
    assert (recs[missing.id].state, recs[missing.id].exit_code) == ("failed", 127), recs[missing.id]
    assert "jupyter-launch: cannot start 'python': not found in the job's image (PATH=/usr/bin)" in missing.logs()
    for job in (bare, shell, missing):
        assert not any(wait_gone(k8s, job.id).values())


def test_a_helper_image_that_cannot_be_pulled_is_named(launch, kubeconfig, k8s):
    launch.create_queue(QueueConfig(queue_name="nohelper", provider={
        "type": "kubernetes", "kubeconfig": kubeconfig, "namespace": NAMESPACE, "image": "busybox:local",
        "helper_image": "jupyter-launch-no-such-helper:404", "image_pull_policy": "Never"}))
    job = enqueue(launch, "nohelper", command=["true"])
    rec, = run_agent(launch, [job], timeout=60)
    assert (rec.state, rec.reason) == ("failed", "image_pull_failed"), rec
    assert "jupyter-launch-no-such-helper:404" in rec.message, rec.message
    assert not any(wait_gone(k8s, job.id).values())


def test_gpu_job_waits_as_unschedulable_with_the_schedulers_message(launch, k8s):
    job = enqueue(launch, command=["nvidia-smi"], resources={"gpu": 1})

    async def watch_then_cancel(agent):
        # The 30 s bound is a sanity check; how fast the reason shows is measured by bench/bench_k8s.py.
        reason, message, _ = await asyncio.to_thread(wait_for_reason, job, ("unschedulable",), 30)
        assert "nvidia.com/gpu" in message, message
        await asyncio.to_thread(launch.cancel, job.id)

    # The agent counts GPUs it can hand out; on Kubernetes the cluster has them, so give it one slot.
    rec, = run_agent(launch, [job], while_running=watch_then_cancel, gpus=[0])
    assert (rec.state, rec.reason) == ("cancelled", "cancelled")
    assert not any(wait_gone(k8s, job.id).values())


def test_cancel_deletes_the_job_and_its_pods(launch, k8s):
    job = enqueue(launch, command=["sh", "-c", "echo started; sleep 300"])

    async def cancel_when_running(agent):
        start = time.monotonic()
        while "started" not in job.logs():
            assert time.monotonic() - start < 60, job.refresh()
            await asyncio.sleep(0.1)
        assert k8s_objects(k8s, job.id)["pods"]
        await asyncio.to_thread(launch.cancel, job.id)

    rec, = run_agent(launch, [job], while_running=cancel_when_running)
    assert (rec.state, rec.reason) == ("cancelled", "cancelled")
    assert not any(wait_gone(k8s, job.id, timeout=20).values())


def test_a_folder_too_big_for_a_configmap_is_built_into_the_jobs_image(launch, tmp_path, k8s, kubeconfig):
    folder = tmp_path / "big"
    folder.mkdir()
    data = os.urandom(3 * 2**20 // 2)  # 1.5 MiB that gzip cannot shrink: past the ConfigMap's 900 KiB
    (folder / "weights.bin").write_bytes(data)
    code = "import hashlib; print('read', hashlib.sha256(open('weights.bin', 'rb').read()).hexdigest(), flush=True)"
    job = launch.submit(spec={"kind": "command", "command": ["python", "-c", code]}, queue="k8s", root=folder)
    reasons: list[str] = []
    recorder = ClusterRecorder(kubeconfig)
    try:
        rec, = run_agent(launch, [job], while_running=reasons_until_done(job, reasons))
        time.sleep(1)
    finally:
        recorder.close()
    logs = job.logs()
    assert (rec.state, rec.exit_code) == ("succeeded", 0), (rec, logs)
    assert f"read {hashlib.sha256(data).hexdigest()}" in logs
    assert "building it into an image" in logs and "[jupyter-launch] building image jupyter-launch-job:" in logs
    assert "building_image" in reasons, reasons
    # The folder went in the image (the queue's image plus one layer), which the node has without a pull.
    container = jobs_seen(recorder, "Job", job.id)[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("jupyter-launch-job:"), container["image"]
    assert container["imagePullPolicy"] == "Never"  # the queue's; a built image is never pulled from anywhere
    assert not jobs_seen(recorder, "ConfigMap", job.id)
    assert not any(wait_gone(k8s, job.id).values())


def test_a_queue_without_an_image_builds_one_from_the_jobs_environment(launch, tmp_path, k8s, kubeconfig):
    launch.create_queue(QueueConfig(queue_name="built", provider={
        "type": "kubernetes", "helper_image": HELPER_IMAGE, "kubeconfig": kubeconfig, "namespace": NAMESPACE,
        "build": {"base_image": os.environ.get("LAUNCH_PYTHON_IMAGE", "launch-python:bookworm")}}))
    folder = tmp_path / "env"
    folder.mkdir()
    path = notebook(folder, "where.ipynb", "import sys, nbclient\nprint('python at', sys.executable)")
    job = launch.submit(path, queue="built")
    recorder = ClusterRecorder(kubeconfig)
    try:
        rec, = run_agent(launch, [job], timeout=600)
        time.sleep(1)
    finally:
        recorder.close()
    logs = job.logs()
    assert (rec.state, rec.reason) == ("succeeded", "completed"), (rec, logs)
    assert "python at /opt/jupyter-launch-venv/bin/python" in logs, logs
    container = jobs_seen(recorder, "Job", job.id)[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("jupyter-launch-env:"), container["image"]
    assert container["imagePullPolicy"] == "IfNotPresent"  # no registry: the node uses the agent engine's copy
    assert jobs_seen(recorder, "ConfigMap", job.id)  # a small folder still travels in a ConfigMap
    assert not any(wait_gone(k8s, job.id).values())


def test_missing_image_fails_as_image_pull_failed(launch, k8s):
    job = enqueue(launch, command=["true"], image="jupyter-launch-no-such-image:404")
    rec, = run_agent(launch, [job], timeout=60)
    assert (rec.state, rec.reason) == ("failed", "image_pull_failed"), rec
    assert "jupyter-launch-no-such-image:404" in rec.message
    assert not any(wait_gone(k8s, job.id).values())


def test_image_pull_backoff_is_shown_then_fails(launch, kubeconfig, k8s):
    from traitlets.config import Config

    launch.create_queue(QueueConfig(queue_name="pull", provider={
        "type": "kubernetes", "helper_image": HELPER_IMAGE, "kubeconfig": kubeconfig, "image_pull_policy": "Always"}))
    job = enqueue(launch, "pull", command=["true"], image="registry.invalid/jupyter-launch/nothing:1")

    async def see_reason(agent):
        reason, message, _ = await asyncio.to_thread(wait_for_reason, job, ("pulling_image",), 30)
        assert "registry.invalid/jupyter-launch/nothing:1" in message

    config = Config({"KubernetesBackend": {"image_pull_grace": 4.0}})
    rec, = run_agent(launch, [job], timeout=90, while_running=see_reason, config=config)
    assert (rec.state, rec.reason) == ("failed", "image_pull_failed"), rec
    assert not any(wait_gone(k8s, job.id).values())


def test_quota_holds_a_job_as_pending_quota(launch, kubeconfig, k8s):
    batch, core = k8s
    namespace = "jl-quota-test"
    from kubernetes.client.exceptions import ApiException

    try:
        core.create_namespace({"metadata": {"name": namespace}})
    except ApiException as exc:
        assert exc.status == 409
    core.create_namespaced_resource_quota(namespace, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}) \
        if not core.list_namespaced_resource_quota(namespace).items else None
    launch.create_queue(QueueConfig(queue_name="quota", provider={
        "type": "kubernetes", "helper_image": HELPER_IMAGE, "kubeconfig": kubeconfig, "namespace": namespace, "image": "busybox:local",
        "image_pull_policy": "Never"}))
    job = enqueue(launch, "quota", command=["true"])

    async def see_quota(agent):
        reason, message, took = await asyncio.to_thread(wait_for_reason, job, ("pending_quota",), 30)
        assert "exceeded quota" in message, message
        await asyncio.to_thread(launch.cancel, job.id)

    rec, = run_agent(launch, [job], while_running=see_quota)
    assert rec.state == "cancelled"


AGENT_SCRIPT = """
import asyncio, sys
from jupyter_launch.agent import make_local_agent
from jupyter_launch.client import LaunchClient
client = LaunchClient(home=sys.argv[1])
async def main():
    agent = make_local_agent(client.store, ["k8s"], blobs=client.blobs, home=client.home, lease_seconds=3,
                             wake_socket=False)
    await agent.start()
    await agent.run()
asyncio.run(main())
"""


def kill_agent_once_job_printed_one(job: Any, home: Path, marker: str = "one") -> None:
    """Run a real agent process on ``home`` until the job has printed ``marker``, then kill -9 it: the agent dies,
    and its Job keeps running on the cluster."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-c", AGENT_SCRIPT, str(home)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while marker not in job.logs():
            assert time.monotonic() < deadline and first.poll() is None, job.refresh()
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()


def test_a_restarted_agent_reattaches_to_the_running_job(launch, tmp_path, k8s):
    job = enqueue(launch, command=["sh", "-c", "echo one; sleep 6; echo two"], retries=1)
    kill_agent_once_job_printed_one(job, tmp_path / "home")
    uid = k8s[0].read_namespaced_job(job_name(job.id), NAMESPACE).metadata.uid
    rec, = run_agent(launch, [job])
    assert (rec.state, rec.exit_code, rec.attempt) == ("succeeded", 0, 2), (rec, job.logs())
    logs = job.logs()
    assert "re-attached to Kubernetes Job" in logs and logs.rstrip().endswith("two"), logs
    events = k8s[1].list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={job_name(job.id)}")
    created = [e for e in events.items if e.reason == "SuccessfulCreate" and e.involved_object.uid == uid]
    assert len(created) == 1  # one pod, from the one Job: nothing was created again
    assert not any(wait_gone(k8s, job.id).values())


def test_the_next_agent_deletes_the_cluster_job_of_a_job_lost_with_its_agent(launch, tmp_path, k8s):
    job = enqueue(launch, command=["sh", "-c", "echo one; sleep 300"])  # retries 0: nobody re-attaches
    kill_agent_once_job_printed_one(job, tmp_path / "home")
    deadline = time.monotonic() + 30
    while job.refresh().reason != "lost":  # the lease (3 s) runs out and the store fails the job
        assert time.monotonic() < deadline, job.record
        launch.store.requeue_expired()
        time.sleep(0.2)
    assert k8s_objects(k8s, job.id)["pods"]  # the Job runs on with no agent following it

    async def start_and_stop_an_agent():
        agent = make_local_agent(launch.store, ["k8s"], blobs=launch.blobs, home=launch.home, lease_seconds=5)
        await agent.start()  # its start-up reconciliation deletes what the lost job left
        await agent.stop()

    asyncio.run(start_and_stop_an_agent())
    # The reaper itself deleted the pod (it is terminating, or gone), not the Job's garbage collection later on.
    pods = k8s[1].list_namespaced_pod(NAMESPACE, label_selector=f"{JOB_ID_LABEL}={job.id}").items
    assert all(p.metadata.deletion_timestamp for p in pods), [(p.metadata.name, p.status.phase) for p in pods]
    # How long the kubelet then takes to stop its container depends on the machine's load: give it time.
    assert not any(wait_gone(k8s, job.id, timeout=90).values()), k8s_objects(k8s, job.id)
    assert (job.refresh().state, job.record.reason) == ("failed", "lost")


def test_agents_and_a_remote_agent_leave_a_running_job_alone_and_delete_what_a_finished_one_left(
        launch, tmp_path, k8s, kubeconfig, image):
    """Agents of the same store, of another store, and a remote one (asking its server) start while a job runs on
    the cluster: its Job is left alone; the Job a finished job left is deleted."""
    from launch_server import LaunchServer

    from jupyter_launch.backends.base import JobContext
    from jupyter_launch.backends.kubernetes.config import KubernetesProvider
    from jupyter_launch.remote.agent import make_remote_agent, run_remote_agent
    from jupyter_launch.store import BlobStore, SQLStore

    queue = "k8s-shared"
    provider = {"type": "kubernetes", "helper_image": HELPER_IMAGE, "kubeconfig": kubeconfig, "namespace": NAMESPACE, "image": image,
                "image_pull_policy": "Never", "grace_period": 2}
    server = LaunchServer(tmp_path / "server", agent_queues=[]).start()
    store = SQLStore(f"sqlite:///{server.home / 'launch.db'}")
    try:
        status, _ = server.api("POST", "queues", {"queue_name": queue, "provider": provider})
        assert status == 201
        launch.create_queue(QueueConfig(queue_name=queue, provider=provider))  # another store, the same queue name
        job = store.enqueue(queue, JobSpec(kind="command", command=["sh", "-c", "echo one; sleep 300"]), artifact=None)
        ended = store.enqueue(queue, JobSpec(kind="command", command=["sh", "-c", "sleep 300"]), artifact=None)
        ctx = JobContext(job_id=ended.id, attempt=1, fence=1, queue=queue, spec=JobSpec.model_validate(ended.spec),
                         queue_config=KubernetesProvider.model_validate(provider), workdir=tmp_path,
                         output_dir=tmp_path / "out", env={}, secrets={}, artifact=None, agent_id="gone")
        k8s[0].create_namespaced_job(NAMESPACE, build_manifests(ctx, image, None)["job"])  # as a dead agent left it
        store.request_cancel(ended.id)
        token, _ = store.create_agent_token("box-k8s", [queue])

        async def main():
            def agent(on_store, home):
                return make_local_agent(on_store, [queue], blobs=BlobStore(home / "blobs"), home=home,
                                        lease_seconds=5, wake_socket=False, poll_interval=0.1)

            runner = agent(store, tmp_path / "runner-home")
            await runner.start()
            running = asyncio.create_task(runner.run())
            try:
                deadline = time.monotonic() + 90
                while "one" not in "".join(c.data.decode() for c in store.read_log(job.id)[0]):
                    assert time.monotonic() < deadline and not store.get_job(job.id).done, store.get_job(job.id)
                    await asyncio.sleep(0.2)
                uid = k8s[0].read_namespaced_job(job_name(job.id), NAMESPACE).metadata.uid
                for on_store, home in ((store, tmp_path / "second-home"), (launch.store, tmp_path / "other-home")):
                    other = agent(on_store, home)
                    await other.start()  # its start-up sweep
                    await other.stop()
                stop = asyncio.Event()
                remote = make_remote_agent(server.url, token, [queue], cache_dir=tmp_path / "cache", claim_wait=1,
                                           work_root=str(tmp_path / "remote-work"))
                remote_run = asyncio.create_task(run_remote_agent(remote, stop))
                left = await asyncio.to_thread(wait_gone, k8s, ended.id, 60)
                stop.set()
                await asyncio.wait_for(remote_run, 30)
                assert not any(left.values()), left
                assert k8s[0].read_namespaced_job(job_name(job.id), NAMESPACE).metadata.uid == uid
                assert store.get_job(job.id).state in ("starting", "running")  # a pod's reasons show as starting
                store.request_cancel(job.id)
                while not store.get_job(job.id).done:
                    assert time.monotonic() < deadline + 60
                    await asyncio.sleep(0.2)
            finally:
                await runner.stop()
                running.cancel()

        asyncio.run(main())
        assert store.get_job(job.id).state == "cancelled"
        assert not any(wait_gone(k8s, job.id).values())
    finally:
        store.close()
        server.stop()


# ---------------------------------------------------------------- distributed jobs: one pod per rank

DISTRIBUTED = Path(__file__).resolve().parent / "distributed"


def test_a_two_rank_job_runs_a_pod_per_rank_which_all_reduce_over_tcp(launch, k8s, kubeconfig):
    recorder = ClusterRecorder(kubeconfig)
    try:
        job = launch.submit(spec={"kind": "command", "command": ["python", "allreduce.py"],
                                  "resources": {"nodes": 2}}, queue="k8s", root=DISTRIBUTED)
        rec, = run_agent(launch, [job])
    finally:
        recorder.close()
    logs = job.logs()
    assert (rec.state, rec.exit_code) == ("succeeded", 0), (rec, logs)
    hosts = set()
    for rank in range(2):
        line = next(x for x in logs.splitlines() if x.startswith(f"[rank {rank}] rank {rank} of 2 (local rank 0, host "))
        hosts.add(line.split("host ")[1].split(")")[0])
    assert len(hosts) == 2, logs  # two pods, each its own host
    assert logs.count("sum [3, 30, 300]") == 2, logs  # each rank got 1+2, 10+20, 100+200 over the pods' network
    assert [m["data"] for m in job.metrics] == [{"rank": 0, "sum0": 3}]  # metrics from rank 0 only
    assert [o.path for o in job.outputs] == ["rank-0.json"]  # outputs from rank 0 only
    jobs = {obj["metadata"]["name"]: obj for obj in jobs_seen(recorder, "Job", job.id)}
    assert sorted(jobs) == [job_name(job.id), job_name(job.id) + "-r1"], sorted(jobs)
    env = {name: {e["name"]: e for e in obj["spec"]["template"]["spec"]["containers"][0]["env"]}
           for name, obj in jobs.items()}
    assert env[job_name(job.id)]["MASTER_ADDR"]["valueFrom"] == {"fieldRef": {"apiVersion": "v1",
                                                                              "fieldPath": "status.podIP"}}
    assert {e["RANK"]["value"] for e in env.values()} == {"0", "1"}
    assert all(e["WORLD_SIZE"]["value"] == "2" and e["MASTER_PORT"]["value"] == "29500" for e in env.values())
    assert not any(wait_gone(k8s, job.id).values())


def test_one_rank_failing_fails_the_kubernetes_job_and_stops_the_other(launch, k8s):
    job = launch.submit(spec={"kind": "command", "command": ["python", "rank1_fails.py"], "resources": {"nodes": 2}},
                        queue="k8s", root=DISTRIBUTED)
    rec, = run_agent(launch, [job], timeout=120)  # rank 0 did not sleep its 600 s
    logs = job.logs()
    assert (rec.state, rec.exit_code, rec.reason) == ("failed", 3, "exit_code"), (rec, logs)
    assert sorted(line for line in logs.splitlines() if line.endswith("] up")) == ["[rank 0] up", "[rank 1] up"]
    assert f"[jupyter-launch] rank 1 (pod {job_name(job.id)}-r1-" in logs and \
        ") exited with code 3; stopping the other ranks" in logs, logs
    assert not any(wait_gone(k8s, job.id).values())


def test_a_restarted_agent_reattaches_to_every_ranks_job(launch, tmp_path, k8s):
    job = launch.submit(spec={"kind": "command", "command": ["sh", "-c", "echo one; sleep 6; echo two"],
                              "resources": {"nodes": 2}, "retries": 1}, queue="k8s", root=DISTRIBUTED)
    kill_agent_once_job_printed_one(job, tmp_path / "home", marker="[rank 1] one")
    uids = {name: k8s[0].read_namespaced_job(name, NAMESPACE).metadata.uid
            for name in (job_name(job.id), job_name(job.id) + "-r1")}
    rec, = run_agent(launch, [job])
    logs = job.logs()
    assert (rec.state, rec.exit_code, rec.attempt) == ("succeeded", 0, 2), (rec, logs)
    assert "re-attached to Kubernetes Job" in logs, logs
    assert "[rank 0] two" in logs and "[rank 1] two" in logs, logs
    for name, uid in uids.items():  # one pod from each rank's one Job: nothing was created again
        events = k8s[1].list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name}")
        assert len([e for e in events.items if e.reason == "SuccessfulCreate" and e.involved_object.uid == uid]) == 1
    assert not any(wait_gone(k8s, job.id).values())


def test_command_jobs_on_an_image_with_python_skip_the_init_container_once_it_was_probed(launch, k8s, kubeconfig,
                                                                                          image):
    """The first command job on an image takes the init container (it works on any image) while a probe pod asks
    the image for a shell and a Python; later jobs on an image that has them start without it. busybox (a shell, no
    Python) keeps the init container, and its jobs still run."""
    recorder = ClusterRecorder(kubeconfig)
    ran: dict[str, list[bool]] = {image: [], "busybox:local": []}

    def has_init(job) -> bool:
        specs = [obj["spec"]["template"]["spec"] for obj in jobs_seen(recorder, "Job", job.id)]
        return "initContainers" in specs[0]

    def probes() -> list[str]:
        return [p.metadata.name for p in k8s[1].list_namespaced_pod(
            NAMESPACE, label_selector="jupyter-launch/probe").items]

    async def wait_for_done(job):
        while not (await asyncio.to_thread(job.refresh)).done:
            await asyncio.sleep(0.05)

    async def record(name, job):
        await wait_for_done(job)
        assert (job.record.state, job.logs()) == ("succeeded", "hi\n"), (job.record, job.logs())
        ran[name].append(has_init(job))
        while await asyncio.to_thread(probes):  # the image's probe has ended: the next job knows
            await asyncio.sleep(0.1)

    async def one_job_at_a_time(agent):
        await record(image, first)
        for name, command, tries in ((image, ["python", "-c", "print('hi')"], 5), ("busybox:local", ["echo", "hi"], 3)):
            for _ in range(tries):
                await record(name, await asyncio.to_thread(enqueue, launch, image=name, command=command))
                if name == image and not ran[name][-1]:
                    break

    first = enqueue(launch, command=["python", "-c", "print('hi')"])  # the first job on the queue's image
    try:
        run_agent(launch, [first], while_running=one_job_at_a_time, timeout=300)
    finally:
        recorder.close()
    assert ran[image][0] and ran[image][-1] is False, ran  # the init container, then none once probed
    assert ran["busybox:local"] == [True, True, True], ran  # no Python: always the init container
    probed = {json.loads(p)["spec"]["containers"][0]["image"] for p in recorder.seen["Pod"]
              if "jupyter-launch/probe" in (json.loads(p)["metadata"].get("labels") or {})}
    assert probed == {image, "busybox:local"}, probed  # each image asked once
    assert not probes()


def test_a_pod_writing_faster_than_its_store_is_held_back_not_buffered(launch, k8s, monkeypatch):
    """As on the local backend (tests/test_local_jobs.py): past ``LOG_HIGH_WATER`` held, the pod's log stream is not
    read until the store has taken some (the kubelet keeps the log meanwhile); the log arrives whole and in order.
    The stream ends seconds after the pod: still delivering, it is not cut at ``stream_drain_timeout``."""
    from processes import PeakGrowth
    from test_local_jobs import blocks_job, check_blocks_log, slow_store
    from traitlets.config import Config

    from jupyter_launch.agent import LOG_HIGH_WATER

    job = enqueue(launch, command=["python", "-c", blocks_job(128)])
    slow_store(launch.store, monkeypatch, delay=0.5)
    with PeakGrowth() as grew:
        rec, = run_agent(launch, [job], config=Config({"KubernetesBackend": {"stream_drain_timeout": 1.0}}))
    assert (rec.state, rec.exit_code) == ("succeeded", 0), job.logs()[-2000:]
    assert grew.mib < 8 * LOG_HIGH_WATER / 2**20, f"the agent grew by {grew.mib:.0f} MiB for a 128 MiB log"
    check_blocks_log(launch, job, 128)

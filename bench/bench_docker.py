"""Docker backend figures on a real engine, each beside the raw SDK doing the same in the same run.

    .venv/bin/python bench/bench_docker.py [--image launch-python:bookworm] [--repeat 5] [--lines 200000]

1. submit → first log line of a trivial container job, vs the SDK's ``containers.run(detach=True)`` → first line
   (goal ≤ 1.2×); and the same job started by exec in a warm container (``min_instances: 1``).
2. log throughput of 200,000 lines, vs the SDK's attach before start (goal ≥ 0.8×): both from the container's start
   to the last line (read by the SDK; stored by jupyter-launch), the same producer writing one line at a time.
3. the image step of a job on a fresh environment (a build), then of the unchanged environment submitted again
   (goal: 0 s, a cache hit): each measured by the backend, from the start of its image step (base image, hash,
   cache look-up) to the image being ready.
Needs ci/docker.sh and ci/python-base.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jupyter_launch.agent import make_local_agent  # noqa: E402
from jupyter_launch.client import LaunchClient  # noqa: E402
from jupyter_launch.spec import QueueConfig  # noqa: E402

PRODUCER = "import sys\nfor i in range({n}):\n    print(i)\n"  # one write per line: python3 -u


def raw_first_line(sdk, image: str) -> float:
    t0 = time.perf_counter()
    container = sdk.containers.run(image, ["echo", "hi"], detach=True)
    for _ in container.logs(stream=True, follow=True):
        took = time.perf_counter() - t0
        break
    container.remove(force=True)
    return took


def raw_attach_throughput(api, image: str, n: int) -> float:
    cid = api.create_container(image, ["python3", "-u", "-c", PRODUCER.format(n=n)])["Id"]
    stream = api.attach(cid, stream=True, logs=True)
    t_start = time.time()
    api.start(cid)
    lines = 0
    for chunk in stream:
        lines += chunk.count(b"\n")
    took = time.time() - t_start
    api.remove_container(cid, force=True)
    assert lines == n, f"raw attach lost lines: {lines} of {n}"
    return n / took


async def first_line(client: LaunchClient, queue: str, folder: Path, image: str | None) -> float:
    spec = {"kind": "command", "command": ["echo", "hi"]}
    if image:
        spec["image"] = image
    t0 = time.perf_counter()
    job = client.submit(spec=spec, root=folder, queue=queue)
    while True:
        chunks, _ = await asyncio.to_thread(client.read_log, job.id, 0)
        if any(b"hi" in c.data for c in chunks):
            took = time.perf_counter() - t0
            break
        await asyncio.sleep(0.002)
    while not job.refresh().done:
        await asyncio.sleep(0.01)
    assert job.record.state == "succeeded", job.record.message
    return took


async def launch_throughput(client: LaunchClient, queue: str, folder: Path, image: str, n: int) -> float:
    """Container started (the job's ``started_at``) → last line stored, seen by the store's own log events."""
    job = client.submit(spec={"kind": "command", "image": image,
                              "command": ["python3", "-u", "-c", PRODUCER.format(n=n)]}, root=folder, queue=queue)
    stamps: list[float] = []

    def on_log(job_id: str, *_) -> None:
        if job_id == job.id:
            stamps.append(time.time())

    unsubscribe = client.store.subscribe("log", on_log)
    try:
        while not job.refresh().done:
            await asyncio.sleep(0.05)
    finally:
        unsubscribe()
    lines = job.logs().count("\n")
    assert job.record.state == "succeeded" and lines == n, f"{lines} of {n} lines: {job.record.message}"
    return n / (stamps[-1] - job.record.started_at)


async def build_twice(client: LaunchClient, queue: str, root: Path, agent) -> tuple[float, float, bool]:
    """The image step's seconds for a fresh environment and for the same one again, and whether the second hit."""
    folder = root / "env"
    folder.mkdir()
    (folder / "requirements.txt").write_text(f"# bench {uuid.uuid4().hex}\nsix\n")
    backend = agent.backend("docker")
    results = []
    for _ in range(2):
        job = client.submit(spec={"kind": "command", "command": ["python", "-c", "import six"]}, root=folder,
                            queue=queue)
        while not job.refresh().done:
            await asyncio.sleep(0.05)
        assert job.record.state == "succeeded", (job.record.message, job.logs()[-2000:])
        results.append(backend.builds[-1])
    first, second = results
    await asyncio.to_thread(backend.api_for({}).remove_image, first["tag"], force=True)
    return first["seconds"], second["seconds"], second["cached"]


async def main(args: argparse.Namespace) -> None:
    import docker

    sdk = docker.from_env()
    api = sdk.api
    image = args.image
    api.inspect_image(image)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        client = LaunchClient(home=root / "home")
        folder = root / "src"
        folder.mkdir()
        client.create_queue(QueueConfig(queue_name="cold", provider={"type": "docker", "image": image,
                                                                     "build": {"base_image": image}}))
        client.create_queue(QueueConfig(queue_name="warm", provider={"type": "docker", "image": image,
                                                                     "min_instances": 1}))
        client.create_queue(QueueConfig(queue_name="build", provider={"type": "docker", "build": {"base_image": image}}))
        agent = make_local_agent(client.store, ["cold", "warm", "build"], blobs=client.blobs, lease_seconds=30)
        await agent.start()
        task = asyncio.create_task(agent.run())
        try:
            await first_line(client, "cold", folder, None)  # warm the agent's own paths once
            raw, cold, warm = [], [], []
            for _ in range(args.repeat):
                raw.append(await asyncio.to_thread(raw_first_line, sdk, image))
                cold.append(await first_line(client, "cold", folder, None))
                await asyncio.sleep(0.5)  # let the pool top up between warm runs
                warm.append(await first_line(client, "warm", folder, None))
            raw_tp = await asyncio.to_thread(raw_attach_throughput, api, image, args.lines)
            ours_tp = await launch_throughput(client, "cold", folder, image, args.lines)
            built, rebuilt, hit = await build_twice(client, "build", root, agent)
        finally:
            await agent.stop()
            task.cancel()
            client.close()
    med = statistics.median
    rows = [
        ("submit → first log line (median of %d)" % args.repeat, f"{med(cold):.3f} s", f"{med(raw):.3f} s",
         f"{med(cold) / med(raw):.2f}×", "≤ 1.2×"),
        ("  … started by exec in a warm container", f"{med(warm):.3f} s", f"{med(raw):.3f} s",
         f"{med(warm) / med(raw):.2f}×", f"gain {med(cold) - med(warm):+.3f} s vs cold"),
        (f"log throughput, {args.lines:,} lines", f"{ours_tp:,.0f} lines/s", f"{raw_tp:,.0f} lines/s",
         f"{ours_tp / raw_tp:.2f}×", "≥ 0.8×"),
        ("image step, first submit of an environment", f"{built:.2f} s", "", "built", ""),
        ("image step, second submit, unchanged", f"{rebuilt:.3f} s", "", "cache hit" if hit else "REBUILT",
         "0 s (cache hit)"),
    ]
    widths = [max(len(r[i]) for r in rows + [("figure", "jupyter-launch", "raw SDK", "ratio", "goal")])
              for i in range(5)]
    header = ("figure", "jupyter-launch", "raw SDK", "ratio", "goal")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="launch-python:bookworm")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--lines", type=int, default=200_000)
    asyncio.run(main(parser.parse_args()))

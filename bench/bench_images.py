"""Building a job's image from its environment lock (``images.ImageBuilder``), beside a plain ``docker build`` of the
same lock measured in the same run.

    python bench/bench_images.py [--base launch-python:bookworm]

A 30-package lock (a pandas + matplotlib + ipykernel kernel's, pinned), on a fresh pip cache volume each run:
(a) cold: no image of this family and an empty pip cache (downloads everything), vs ``docker build`` of
    ``FROM base; RUN venv && pip install -r lock.txt`` with no build cache;
(b) the same lock again: the image is found by its hash, no build (vs the raw build repeated, its layer cache on);
(c) one package changed: the deps stage starts from the image of the closest lock and installs one package,
    goal <= 10 s on 2 cores (vs the raw build of the changed lock, which reinstalls everything);
(d) the same lock with other pip arguments (a new family, nothing to start from) but the pip cache warm: every
    package installed from cached wheels, nothing downloaded.
Images and the volume made here are removed at the end.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import time
import uuid
from pathlib import Path

from bench_core import print_table  # bench/ is on the path when a bench script runs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOCK = ["asttokens==3.0.2", "comm==0.2.3", "contourpy==1.3.3", "cycler==0.12.1", "debugpy==1.8.22",
        "executing==2.3.0", "fonttools==4.68.0", "ipykernel==7.4.0", "ipython==9.18.1",
        "ipython_pygments_lexers==1.1.1", "jedi==0.20.1", "jupyter_client==8.10.0", "jupyter_core==5.9.1",
        "kiwisolver==1.5.1", "matplotlib==3.11.2", "matplotlib-inline==0.2.2", "numpy==2.4.6", "packaging==26.4",
        "pandas==3.1.1", "parso==0.8.7", "pexpect==4.9.0", "pillow==13.0.0", "platformdirs==4.14.9",
        "prompt_toolkit==3.0.53", "ptyprocess==0.7.0", "Pygments==2.21.0", "pyparsing==3.3.3",
        "python-dateutil==4.0.0", "pyzmq==27.3.0", "tornado==6.6.1"]
CHANGED = [p if not p.startswith("pyparsing==") else "pyparsing==3.3.2" for p in LOCK]


def raw_build(api, base: str, lock: list[str], tag: str, nocache: bool) -> float:
    """``docker build`` of the lock as a user would write it (CA bundle copied in, as the build needs here)."""
    dockerfile = (f"FROM {base}\nCOPY ca.crt /etc/ssl/certs/build-ca.crt\nENV PIP_CERT=/etc/ssl/certs/build-ca.crt\n"
                  "COPY lock.txt /tmp/lock.txt\n"
                  "RUN python3 -m venv /v && /v/bin/pip install -q --no-cache-dir -r /tmp/lock.txt\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile.encode()), ("lock.txt", "\n".join(lock).encode()),
                           ("ca.crt", Path("/etc/ssl/certs/ca-certificates.crt").read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    t0 = time.perf_counter()
    for event in api.build(fileobj=io.BytesIO(buf.getvalue()), custom_context=True, tag=tag, rm=True,
                           nocache=nocache, decode=True):
        if "error" in event:
            raise RuntimeError(event["error"])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="launch-python:bookworm")
    args = parser.parse_args()
    import docker

    from jupyter_launch.images import BuildSettings, ImageBuilder, plan_build

    api = docker.APIClient(version="auto", timeout=900)
    builder = ImageBuilder(api)
    base_id = builder.image_id(args.base)
    if base_id is None:
        sys.exit(f"no image {args.base}: make it with ci/python-base.sh")
    volume = f"jupyter-launch-bench-pip-{uuid.uuid4().hex[:8]}"
    made: list[str] = []

    def ours(lock: list[str], pip_args: list[str]) -> tuple[float, bool]:
        settings = BuildSettings(base_image=args.base, pip_args=pip_args, pip_cache=volume)
        plan = plan_build(settings, base_id, {"packages": lock, "python": "3.11", "kernel": "python3"}, None)
        t0 = time.perf_counter()
        cached = builder.cached(plan)
        if not cached:
            builder.build(plan, lambda text: None)
            made.extend([plan.tag, plan.deps_tag])
        return time.perf_counter() - t0, cached

    # A family of its own for this run (the bench's pip arguments), so images of earlier runs are not reused.
    family = ["--no-compile", f"--log=/tmp/bench-{uuid.uuid4().hex[:6]}.log"]
    rows = []
    try:
        cold, _ = ours(LOCK, family)
        raw_cold = raw_build(api, args.base, LOCK, "jupyter-launch-bench-raw:a", nocache=True)
        rows.append(["(a) 30-package lock, cold (empty pip cache)", f"{cold:.1f} s", f"{raw_cold:.1f} s",
                     f"{cold / raw_cold:.2f}x", "raw: docker build, no cache"])
        again, hit = ours(LOCK, family)
        raw_again = raw_build(api, args.base, LOCK, "jupyter-launch-bench-raw:a", nocache=False)
        rows.append(["(b) the same lock again", f"{again:.2f} s" + ("" if hit else " (rebuilt!)"),
                     f"{raw_again:.2f} s", f"{again / raw_again:.2f}x", "image found by its hash"])
        one, _ = ours(CHANGED, family)
        raw_one = raw_build(api, args.base, CHANGED, "jupyter-launch-bench-raw:b", nocache=False)
        rows.append(["(c) one package changed", f"{one:.1f} s", f"{raw_one:.1f} s", f"{one / raw_one:.2f}x",
                     "goal <= 10 s on 2 cores"])
        warm, _ = ours(LOCK, family + ["--no-warn-script-location"])
        rows.append(["(d) same lock, new family, pip cache warm", f"{warm:.1f} s", f"{raw_cold:.1f} s",
                     f"{warm / raw_cold:.2f}x", "every wheel from the cache"])
    finally:
        for tag in made + ["jupyter-launch-bench-raw:a", "jupyter-launch-bench-raw:b"]:
            try:
                api.remove_image(tag, force=True)
            except Exception:
                pass
        try:
            api.remove_volume(volume, force=True)
        except Exception:
            pass
    print_table(rows)


if __name__ == "__main__":
    main()

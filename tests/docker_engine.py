"""The Docker engine as the tests meet it: a low-level client that is known to reach the engine and to find the
local base image, or a test failure naming the part that is missing; closed on every path, so no test leaves a unix
socket for the garbage collector to report in a later test.

Imported by its module name (``from docker_engine import ...``): tests/ is on ``sys.path`` under pytest's default
import mode, as for ``launch_server``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

BASE_IMAGE = "launch-python:bookworm"  # built by ci/python-base.sh; no image can be pulled here


@contextlib.contextmanager
def engine_client(image: str = BASE_IMAGE) -> Iterator[Any]:
    """A ``docker.APIClient`` that has pinged the engine and found ``image``; fails the test, naming what is missing
    and the script that provides it, when it cannot."""
    import docker

    api = docker.APIClient(version="auto", timeout=30)
    try:
        try:
            api.ping()
        except Exception as exc:
            pytest.fail(f"the Docker engine is not reachable ({exc}): run ci/docker.sh", pytrace=False)
        try:
            api.inspect_image(image)
        except Exception:
            pytest.fail(f"missing base image {image}: run ci/python-base.sh", pytrace=False)
        yield api
    finally:
        api.close()

"""A Docker queue's settings: the ``provider:`` block of a queue YAML with ``type: docker``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...images import BuildConfig
from ...spec import ProviderConfig


class DockerProvider(ProviderConfig):
    type: Literal["docker"]
    min_instances: int = Field(default=0, ge=0, le=64)
    base_url: str | None = None
    network: str | None = None
    runtime: str | None = None
    image: str | None = None  # default image for jobs that name none
    build: BuildConfig = Field(default_factory=BuildConfig)
    registry_auth: str | None = None  # name of a secret holding "user:password" or a docker config JSON
    keep_on_failure: bool = False
    # How the job's folder reaches the container: bind-mounted read-only, or copied in (remote engines); None picks
    # mount for a local engine and copy for a remote one.
    transfer: Literal["mount", "copy"] | None = None
    gpus: int | list[int] | None = None

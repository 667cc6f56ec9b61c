"""A Job's pods as the Kubernetes backend follows them: the handle of one attempt, its container's state in a pod,
and the pod's log read from its first byte to its container's end, across reconnects and restarts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..base import JobContext, ThreadLog
from .bootstrap import OutputsSplitter
from .manifests import CONTAINER

READ_SIZE = 64 * 1024


@dataclass
class KubernetesHandle:
    name: str
    namespace: str
    api: Any
    ctx: JobContext
    loop: asyncio.AbstractEventLoop
    uid: str = ""
    image: str = ""
    unpushed: bool = False  # the image was built on the agent's engine and pushed nowhere
    backoff_limit: int = 0
    adopted: bool = False
    pods: list[Any] = field(default_factory=list)  # the Job's pods, oldest first, from the last poll
    exit_code: int | None = None
    final_pod: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)  # wait() has its exit code
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # new pod list, or a stream ended
    closed: threading.Event = field(default_factory=threading.Event)  # cleanup ran: stop every stream
    splitters: dict[str, OutputsSplitter] = field(default_factory=dict)  # per pod
    settled: bool = False  # the Job ended or was stopped by us: cleanup may delete it
    last_reason: tuple[str, str] | None = None
    owning: asyncio.Task[None] | None = None
    stream_ended: bool = False
    # A job of several ranks: this handle is rank 0's Job; ``peers`` the other ranks' (which share its events).
    rank: int = 0
    peers: list[KubernetesHandle] = field(default_factory=list)
    peers_started: asyncio.Event = field(default_factory=asyncio.Event)  # every rank's Job exists
    prepared: Any = None  # rank 0's PreparedImage, for the other ranks' Jobs

    def ranks(self) -> Iterator[KubernetesHandle]:
        """Rank 0's handle, then the other ranks' in rank order."""
        yield self
        yield from sorted(self.peers, key=lambda h: h.rank)

    def peer(self, rank: int, name: str, uid: str) -> KubernetesHandle:
        """A handle for another rank's Job, sharing this one's client, events and log context."""
        handle = KubernetesHandle(name, self.namespace, self.api, self.ctx, self.loop, uid=uid, image=self.image,
                                  unpushed=self.unpushed, rank=rank, done=self.done, changed=self.changed,
                                  closed=self.closed)
        self.peers.append(handle)
        return handle



class PodLogs:
    """Reads the logs of one Job's pods into the job's log, taking the outputs' marker lines out on the way."""

    def __init__(self, call: Callable[..., Awaitable[Any]], core: Any, log: logging.Logger | logging.LoggerAdapter,
                 starting: set[str] | None = None, retry_rate: float = 40.0):
        self.call, self.core, self.log = call, core, log  # call: a blocking client call on the backend's threads
        # Pods whose container's log was refused as not started yet, across the backend's follows: they share
        # ``retry_rate`` log requests per second (see retry_interval).
        self.starting = starting if starting is not None else set()
        self.retry_rate = retry_rate

    def retry_interval(self) -> float:
        """Seconds between asks for the log of a container not started yet: the pods waiting to start share
        ``retry_rate`` requests per second, each asking at most every 0.05 s (one or two jobs see their first line
        as soon as a client polling the log by itself would) and at least every 0.25 s (many starting at once cost
        the API server no more than before)."""
        return min(0.25, max(0.05, len(self.starting) / self.retry_rate))

    async def follow(self, handle: KubernetesHandle, log: Callable[[str, bytes], None], pod: str) -> None:
        """Follow one pod's log from its first byte to its container's end, across reconnects and restarts."""
        try:
            await self._follow(handle, log, pod)
        finally:
            self.starting.discard(pod)

    async def _follow(self, handle: KubernetesHandle, log: Callable[[str, bytes], None], pod: str) -> None:
        from kubernetes.client.exceptions import ApiException

        core = self.core
        splitter = handle.splitters.setdefault(pod, OutputsSplitter())
        container_seen = -1  # restartCount of the container whose log we read
        skip = 0  # bytes of this container's log already passed on (a reconnect reads it from the start)
        while not handle.closed.is_set():
            try:
                resp = await self.call(core.read_namespaced_pod_log, pod, handle.namespace, container=CONTAINER,
                                        follow=True, _preload_content=False)
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status != 400:
                    raise
                # 400 "ContainerCreating"/"PodInitializing": not started yet. Give up once the pod ended unstarted.
                info = await self.state(core, handle, pod)
                if info is None or (info[0] in ("Failed", "Succeeded") and info[1] is None):
                    return
                self.starting.add(pod)
                await self.until_started(handle, pod, self.retry_interval())
                continue
            self.starting.discard(pod)
            restarts = await self.call(self._restart_count, core, handle, pod)
            if restarts != container_seen:
                container_seen, skip = restarts, 0
                splitter.reset()
            got = await self.call(self._pump, resp, handle, log, splitter, skip)
            fresh, skip = got > skip, max(skip, got)
            info = await self.state(core, handle, pod)
            if info is None:
                break
            if info[1] is not None and info[2] == container_seen:  # this container ended and its stream with it
                if not fresh:
                    # A stream opened as the container was only being started can end, empty, before the container
                    # runs; a job that takes milliseconds is over by now. Its whole log, once more, from where we are.
                    with contextlib.suppress(ApiException):
                        resp = await self.call(core.read_namespaced_pod_log, pod, handle.namespace,
                                                container=CONTAINER, _preload_content=False)
                        skip = max(skip, await self.call(self._pump, resp, handle, log, splitter, skip))
                break
            if not fresh:
                await asyncio.sleep(0.1)  # the container's status lags its end: look again shortly
        rest = splitter.flush()
        if rest:
            log("stdout", rest)

    @staticmethod
    async def until_started(handle: KubernetesHandle, pod: str, longest: float = 0.25) -> None:
        """Wait until the backend's status polls (``handle.pods``, renewed at each ``handle.changed``) see the job's
        container in ``pod`` started or ended, for at most ``longest`` seconds: the log is asked for again as soon
        as the API server shows it started, and at least every ``longest`` seconds (the kubelet serves the log
        before the API server has the new status: up to its 1 s status relist). A backoff here cost up to 0.5 s of
        every job's first line."""
        deadline = asyncio.get_running_loop().time() + longest
        while True:
            seen = next((p for p in handle.pods if p.metadata.name == pod), None)
            status = next((s for s in (seen.status.container_statuses or []) if s.name == CONTAINER), None) \
                if seen is not None else None
            if status is not None and status.state and (status.state.running or status.state.terminated):
                return
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            handle.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(handle.changed.wait(), left)

    def _pump(self, resp: Any, handle: KubernetesHandle, log: Callable[[str, bytes], None],
              splitter: OutputsSplitter, skip: int) -> int:
        """Blocking: read one log stream to its end; returns the bytes read (including the ``skip`` ones)."""
        thread_log = ThreadLog(handle.loop, log, handle.ctx.log_room, handle.closed.is_set)
        seen = 0
        try:
            while not handle.closed.is_set():
                chunk = resp.read1(READ_SIZE) if hasattr(resp, "read1") else resp.read(READ_SIZE)
                if not chunk:
                    break
                if seen + len(chunk) <= skip:
                    seen += len(chunk)
                    continue
                fresh = chunk[max(0, skip - seen):]
                seen += len(chunk)
                plain = splitter.feed(fresh)
                if plain:
                    thread_log.write("stdout", plain)
        except Exception as exc:  # a dropped connection: the caller reconnects and skips what it has
            self.log.debug("log stream of %s ended: %s", handle.name, exc)
        finally:
            resp.release_conn()
        return seen

    def _restart_count(self, core: Any, handle: KubernetesHandle, pod: str) -> int:
        from kubernetes.client.exceptions import ApiException

        try:
            p = core.read_namespaced_pod(pod, handle.namespace)
        except ApiException:
            return 0
        status = next((s for s in p.status.container_statuses or [] if s.name == CONTAINER), None)
        return status.restart_count if status else 0

    async def state(self, core: Any, handle: KubernetesHandle, pod: str) -> tuple[str, Any, int] | None:
        """(phase, the container's terminated state or None, restartCount); None when the pod is gone."""
        from kubernetes.client.exceptions import ApiException

        try:
            p = await self.call(core.read_namespaced_pod, pod, handle.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        status = next((s for s in p.status.container_statuses or [] if s.name == CONTAINER), None)
        terminated = status.state.terminated if status and status.state else None
        return p.status.phase, terminated, status.restart_count if status else 0


def exit_code(pod: Any) -> int | None:
    status = next((s for s in pod.status.container_statuses or [] if s.name == CONTAINER), None)
    if status and status.state and status.state.terminated:
        return status.state.terminated.exit_code
    return None


def never_started(pod: Any) -> bool:
    if pod.status.phase in ("Succeeded", "Failed"):
        return False
    status = next((s for s in pod.status.container_statuses or [] if s.name == CONTAINER), None)
    return not (status and status.state and (status.state.running or status.state.terminated))


def waiting_container(pod: Any) -> tuple[Any, str | None]:
    """Why the pod's containers wait, and the image of the one that waits: its init container's reason while that one
    waits (an image pull), else the job container's (``PodInitializing`` while the init container runs says
    nothing); ``(None, None)`` when none waits."""
    for status in [*(pod.status.init_container_statuses or []),
                   *(s for s in pod.status.container_statuses or [] if s.name == CONTAINER)]:
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason != "PodInitializing":
            return waiting, status.image
    return None, None


def init_failure(pod: Any) -> str | None:
    """A sentence when the pod's init container (the folder's unpacking) failed, else None."""
    for status in pod.status.init_container_statuses or []:
        done = status.state.terminated if status.state else None
        if done is not None and done.exit_code != 0:
            detail = "; ".join(filter(None, [done.reason, (done.message or "").strip()]))
            return (f"the pod's init container ({status.image}) could not unpack the job: exit code {done.exit_code}"
                    + (f" ({detail})" if detail else ""))
    return None

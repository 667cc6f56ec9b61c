"""REST handlers under ``/launch/api/``: queues, jobs, logs, metrics, outputs, artifacts, agent tokens, and the agent
endpoints.

User endpoints take a Jupyter identity (the server's token, cookie or hub login) and are authorized by the server's
authorizer on three resources, the action being jupyter_server's for the HTTP verb (GET read, others write):
``launch_jobs`` to submit, to read queues and agents, and to read, follow, cancel and rerun one's own jobs;
``launch_queues`` to create, change and delete queues and to list, create and revoke agent tokens; ``launch_admin``
to reach every user's jobs (read: see them, write: cancel and rerun them). A job of another owner is 404, as an
unknown one, unless the caller is an admin (``LaunchService.get_job``). The owner a request acts as is
``identity.submitter``'s: the server's own token acts as ``LaunchApp.server_user``. Agent endpoints take only an agent
token (``Authorization: Bearer jla_...``), scoped to queues, and are authorized on ``launch_agent`` for the identity
``agent:<token name>``. Every error is JSON with a message a person can act on.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import mimetypes
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jupyter_server.auth.decorator import authorized
from jupyter_server.auth.identity import User
from jupyter_server.auth.utils import HTTP_METHOD_TO_AUTH_ACTION
from jupyter_server.base.handlers import APIHandler
from jupyter_server.base.call_context import CallContext
from jupyter_server.utils import ensure_async
from tornado import web
from tornado.iostream import StreamClosedError
import yaml

from ..remote.http import STALE_CLAIM, RemoteError
from ..service import Caller
from ..spec import JobSpec, QueueConfig, SpecError, parse_job_spec, parse_queue_config, validate
from ..store import (
    ACTIVE, ARCHIVED_CHOICES, DEFAULT_JOB_SORT, FINAL, AgentIdTaken, NotFound, OutputRecord, StaleClaim, StoreError,
    StoreUnusable, check_number, check_output_path, is_disk_full, is_unreachable,
)
from ..store import base as store_base
from ..store.base import MAX_COUNT, MAX_EXIT_CODE, MAX_LEASE_SECONDS, MIN_EXIT_CODE, MIN_LEASE_SECONDS
from ..store.blobs import _check as check_digest
from .identity import submitter

JOBS_RESOURCE = "launch_jobs"  # submit; read queues and agents; read, follow, cancel, rerun one's own jobs
QUEUES_RESOURCE = "launch_queues"  # create, change, delete queues; list, create, revoke agent tokens
ADMIN_RESOURCE = "launch_admin"  # every user's jobs: read to see them, write to cancel and rerun them
USER_RESOURCES = (JOBS_RESOURCE, QUEUES_RESOURCE, ADMIN_RESOURCE)
AGENT_AUTH_RESOURCE = "launch_agent"
API = "/launch/api"
JOB_ID = r"(?P<job_id>[0-9a-zA-Z]{6,32})"
SCHEDULE_ID = r"(?P<schedule_id>[0-9a-zA-Z]{6,32})"
SWEEP_ID = r"(?P<sweep_id>[0-9a-zA-Z]{6,32})"
QUEUE = r"(?P<queue>[A-Za-z0-9._-]{1,63})"
TOKEN_ID = r"(?P<token_id>[0-9A-Za-z]{1,64})"
DIGEST = r"(?P<digest>sha256(?::|%3[Aa])[0-9a-f]{64})"  # jp_fetch and browsers may escape the colon
MAX_PAGE = 500
MAX_JOB_STATUS_IDS = 500  # job ids one status request may ask about
LOG_READ_LIMIT = 1024 * 1024
DISK_FULL = ("the server's store is out of disk space; nothing was changed by this request. Free space where the "
             "store lives, then retry")
MAX_REASON, MAX_MESSAGE = 64, 64 * 1024  # the reason column; a state message a person reads
MAX_OWNER = 255  # the jobs.owner column
STATE_ARGUMENTS = ("self", "job_id", "fence", "state", "reason", "message")  # names a state's facts cannot take


class LaunchHandler(APIHandler):
    """Base of every launch handler: the app, the in-flight limit, store calls off the loop, errors as JSON."""

    auth_resource = JOBS_RESOURCE
    # Long-lived requests (streams, long polls) are limited on their own and not counted as in flight.
    counts_as_inflight = True
    _counted = False

    @property
    def launch(self) -> Any:
        return self.settings["launch"]

    def admit(self) -> None:
        """Answer 429 with Retry-After past ``max_inflight_requests``; accepted requests always finish."""
        if not self.counts_as_inflight:
            return
        app = self.launch
        if app.inflight >= app.max_inflight_requests:
            self.set_header("Retry-After", str(app.retry_after_seconds))
            raise web.HTTPError(429, f"the server is handling {app.inflight} launch requests; retry in "
                                     f"{app.retry_after_seconds}s (nothing was done for this request)")
        app.inflight += 1
        self._counted = True

    async def prepare(self) -> None:
        self.admit()
        await super().prepare()

    def on_finish(self) -> None:
        if self._counted:
            self.launch.inflight -= 1
            self._counted = False
        super().on_finish()

    def on_connection_close(self) -> None:
        if self._counted:
            self.launch.inflight -= 1
            self._counted = False
        super().on_connection_close()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 429 and not self._headers.get("Retry-After"):
            self.set_header("Retry-After", str(self.launch.retry_after_seconds))
        super().write_error(status_code, **kwargs)

    async def store_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A store call on the API's threads, with store and spec errors turned into JSON errors."""
        try:
            return await self.launch.run_store(fn, *args, **kwargs)
        except NotFound as exc:
            raise web.HTTPError(404, _escape(str(exc))) from None
        except StoreUnusable as exc:  # a damaged database, or its disk full: not the request's fault
            if is_disk_full(exc):
                raise web.HTTPError(507, DISK_FULL) from None
            self.log.error("%s", exc)  # the file and the fix, for whoever runs the server
            raise web.HTTPError(503, "the server's store is damaged; the server's log names the file and the "
                                     "fix") from None
        except StaleClaim as exc:
            raise web.HTTPError(409, _escape(str(exc)), reason=STALE_CLAIM) from None
        except AgentIdTaken as exc:
            raise web.HTTPError(403, _escape(str(exc))) from None
        except SpecError as exc:
            raise web.HTTPError(422, _escape(str(exc))) from None
        except RemoteError as exc:  # the service's answer, for a server that is its client (LaunchApp.service_url)
            raise web.HTTPError(exc.status or 502, _escape(str(exc))) from None
        except (StoreError, ValueError) as exc:
            raise web.HTTPError(409 if isinstance(exc, StoreError) else 400, _escape(str(exc))) from None
        except Exception as exc:
            if is_disk_full(exc):
                raise web.HTTPError(507, DISK_FULL) from None
            if is_unreachable(exc):  # the database restarting, say: the call is worth repeating (agents do)
                raise web.HTTPError(503, "the server's store cannot be reached now; try again") from None
            raise

    def body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except ValueError as exc:
            raise web.HTTPError(400, _escape(f"the request body is not JSON: {exc}")) from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the request body must be a JSON object")
        return data

    def int_arg(self, name: str, default: int | None, *, minimum: int = 0, maximum: int = MAX_COUNT) -> int | None:
        raw = self.get_argument(name, None)
        if raw is None or raw == "":
            return default
        value = bounded_int(raw, minimum, maximum)
        if value is None:
            raise web.HTTPError(400, _escape(f"{name} must be an integer from {minimum} to {maximum}, "
                                             f"not {raw[:40]!r}"))
        return value

    def float_arg(self, name: str) -> float | None:
        """A query argument that is a number (epoch seconds, say), or None when not given; 400 naming it if not."""
        raw = self.get_argument(name, None)
        if raw is None or raw == "":
            return None
        try:
            return float(raw)
        except ValueError:
            raise web.HTTPError(400, _escape(f"{name} must be a number (seconds since the epoch), "
                                             f"not {raw[:40]!r}")) from None

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))

    def owner(self) -> str | None:
        """The owner this request acts as (``identity.submitter``): what ownership checks compare."""
        who = submitter(self, self.launch.server_user)
        return who.name if who else None

    def submitter(self) -> dict[str, str | None]:
        """Who submits: ``owner`` (what ownership checks compare) and ``owner_name``, the name people know them by."""
        who = submitter(self, self.launch.server_user)
        if who is None:
            return {"owner": None, "owner_name": None}
        return {"owner": who.name, "owner_name": who.display_name}

    async def job(self, job_id: str) -> Any:
        """The job this request is about, if its caller may reach it (else 404, as for an unknown job)."""
        return await self.store_call(self.launch.service.get_job, job_id, caller=await job_caller(self))


async def job_caller(handler: Any, action: str | None = None) -> Caller:
    """The request's identity for job ownership: an admin when the authorizer allows ``action`` (the HTTP verb's, by
    default) on ``launch_admin``; the route's own resource was authorized already."""
    user = handler.current_user
    action = action or HTTP_METHOD_TO_AUTH_ACTION[handler.request.method.upper()]
    admin = await ensure_async(handler.authorizer.is_authorized(handler, user, action, ADMIN_RESOURCE))
    return Caller(submitter(handler, handler.settings["launch"].server_user).name, bool(admin))


def _escape(message: str) -> str:
    # HTTPError formats log_message with %; messages carrying user input must not be read as a format.
    return message.replace("%", "%%")


def _job_url(base_url: str, job_id: str) -> str:
    return f"{base_url.rstrip('/')}{API}/jobs/{job_id}"


# ------------------------------------------------------------------ queues

def _queue_config(data: dict[str, Any], name: str | None = None) -> QueueConfig:
    if "yaml" in data:
        if not isinstance(data["yaml"], str):
            raise web.HTTPError(400, "'yaml' must be the queue file's text")
        try:
            config = parse_queue_config(data["yaml"], "<request yaml>")
        except SpecError as exc:
            raise web.HTTPError(422, _escape(str(exc))) from None
    else:
        config_data = data.get("config", data)
        if name is not None:
            config_data = {"queue_name": name, **config_data}
        try:
            config = validate(QueueConfig, config_data, "<request>")
        except SpecError as exc:
            raise web.HTTPError(422, _escape(str(exc))) from None
    if name is not None and config.queue_name != name:
        raise web.HTTPError(400, f"the body names queue {config.queue_name!r} but the URL names {name!r}")
    return config


class QueuesHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        queues = await self.store_call(self.launch.store.list_queues)
        self.reply({"queues": [q.to_dict() for q in queues]})

    @web.authenticated
    @authorized(resource=QUEUES_RESOURCE)
    async def post(self) -> None:
        config = _queue_config(self.body())
        queue = await self.store_call(self.launch.service.create_queue, config)
        self.set_header("Location", f"{self.base_url.rstrip('/')}{API}/queues/{quote(queue.name)}")
        self.reply(queue.to_dict(), 201)


class QueueHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def get(self, queue: str) -> None:
        record = await self.store_call(self.launch.store.get_queue, queue)
        self.reply(record.to_dict())

    @web.authenticated
    @authorized(resource=QUEUES_RESOURCE)
    async def put(self, queue: str) -> None:
        config = _queue_config(self.body(), queue)
        await self.store_call(self.launch.store.get_queue, queue)
        record = await self.store_call(self.launch.service.create_queue, config, replace=True)
        self.reply(record.to_dict())

    @web.authenticated
    @authorized(resource=QUEUES_RESOURCE)
    async def delete(self, queue: str) -> None:
        force = self.get_argument("force", "false").lower() in ("1", "true", "yes")
        await self.store_call(self.launch.store.delete_queue, queue, force=force)
        self.set_status(204)
        self.finish()


# ------------------------------------------------------------------ jobs

class JobsHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        limit = self.int_arg("limit", 50, minimum=1, maximum=MAX_PAGE)
        before = self.int_arg("before", None, minimum=1)
        offset = self.int_arg("offset", 0)
        archived_arg = self.get_argument("archived", "false") or "false"
        if archived_arg not in ARCHIVED_CHOICES:
            raise web.HTTPError(400, _escape(f"archived must be one of {', '.join(ARCHIVED_CHOICES)}, "
                                             f"not {archived_arg[:40]!r}"))
        filters = {name: self.get_argument(name, None) or None
                   for name in ("queue", "state", "owner", "job_type", "q")}
        filters["schedule_id"] = self.get_argument("schedule", None) or None
        filters["parent_id"] = self.get_argument("parent", None) or None
        filters["sort"] = self.get_argument("sort", None) or DEFAULT_JOB_SORT
        for name in ("submitted_after", "submitted_before"):
            filters[name] = self.float_arg(name)
        jobs = await self.store_call(self.launch.service.list_jobs, caller=await job_caller(self), limit=limit,
                                     before=before, offset=offset, archived=ARCHIVED_CHOICES[archived_arg],
                                     **filters)
        full = len(jobs) == limit
        self.reply({"jobs": [j.to_dict() for j in jobs],
                    "next_before": jobs[-1].seq if full and filters["sort"] == DEFAULT_JOB_SORT else None,
                    "next_offset": offset + limit if full else None})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        data = self.body()
        queue = data.get("queue") or "default"
        if not isinstance(queue, str):
            raise web.HTTPError(400, "'queue' must be a queue name")
        who = self.submitter()
        if "notebook" in data:
            job = await self._submit_notebook(data, queue, who)
            self.set_header("Location", _job_url(self.base_url, job.id))
            self.reply(job.to_dict(), 201)
            return
        spec = job_spec_arg(data)
        artifact = self.artifact_arg(data)
        job = await self.store_call(self.launch.service.enqueue, spec, queue=queue, artifact=artifact, **who)
        if artifact is not None:  # the queue's agents may read it from now on (claims grant it too)
            await self.store_call(grant_artifact, self.launch, artifact, job.queue)
        self.set_header("Location", _job_url(self.base_url, job.id))
        self.reply(job.to_dict(), 201)


    def artifact_arg(self, data: dict[str, Any]) -> str | None:
        """The body's ``artifact`` digest, checked and on the server (else 400 or 409)."""
        artifact = data.get("artifact")
        if artifact is not None:
            try:
                check_digest(artifact)
            except ValueError as exc:
                raise web.HTTPError(400, _escape(f"artifact: {exc}")) from None
            if not self.launch.blobs.has(artifact):
                raise web.HTTPError(409, f"artifact {artifact} is not on the server; upload its blobs first "
                                         f"(POST {API}/artifacts/missing, then PUT {API}/artifacts/blobs/DIGEST)")
        return artifact

    async def _submit_notebook(self, data: dict[str, Any], queue: str, who: dict[str, str | None]) -> Any:
        """A notebook under the server's root, packaged here as the CLI packages it (its folder, ignore files, the
        size limit, its environment): what the panel submits, so the job is the one any other face would make."""
        prepared = await self.prepare_notebook(data)

        def submit() -> Any:
            job, artifact = self.launch.service.submit(prepared, queue=queue, **who)
            grant_artifact(self.launch, artifact.digest, job.queue)  # the queue's agents may read it
            return job

        return await self.from_root(submit)

    async def prepare_notebook(self, data: dict[str, Any]) -> Any:
        """The body's ``notebook`` (a path under the server's root) and ``options`` as a prepared job; 400, 403,
        404 or 422 naming what is wrong."""
        notebook = data["notebook"]
        options = data.get("options") or {}
        if not isinstance(notebook, str) or not notebook.strip():
            raise web.HTTPError(400, "'notebook' must be the notebook's path under the Jupyter root")
        if not isinstance(options, dict):
            raise web.HTTPError(400, "'options' must be an object of job fields")
        unknown = sorted(set(options) - NOTEBOOK_OPTIONS)
        if unknown:
            raise web.HTTPError(400, _escape(f"options: {', '.join(map(repr, unknown))} cannot be set here "
                                             f"(allowed: {', '.join(sorted(NOTEBOOK_OPTIONS))})"))
        # The server reads the folder from its own files on the caller's behalf: only for one who may read them.
        if not await ensure_async(self.authorizer.is_authorized(self, self.current_user, "read", "contents")):
            raise web.HTTPError(403, "User is not authorized to read on resource: contents (a notebook submitted by "
                                     "its path is packaged from the server's files)")
        root = self._root()
        path = self._root_path(root, notebook)
        interpreter = await self._live_kernel_interpreter(root, path)
        from ..options import JobOptions, prepare_job

        def prepare() -> Any:
            prepared = prepare_job(JobOptions(notebook=path, extra=dict(options)))
            prepared.interpreter = interpreter
            return prepared

        return await self.from_root(prepare)

    async def from_root(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A store call that reads the server's files (preparing, packaging): its file errors are 422, naming the
        file as the user knows it, by its path under the root, not the server's."""
        from ..errors import LocatedError

        root = self._root()

        def call() -> Any:
            try:
                return fn(*args, **kwargs)
            except LocatedError as exc:
                if exc.source and os.path.commonpath([root, os.path.abspath(exc.source)]) == root:
                    exc.source = os.path.relpath(exc.source, root)
                raise

        try:
            return await self.store_call(call)
        except LocatedError as exc:  # a folder past the size limit, a file that cannot be read
            raise web.HTTPError(422, _escape(str(exc))) from None

    async def _live_kernel_interpreter(self, root: str, path: str) -> str | None:
        """The Python of the kernel this notebook runs in now (its session's kernel: the one the user may have
        switched to since the file was saved); None when it has no live kernel here."""
        sessions = self.settings.get("session_manager")
        if sessions is None:
            return None
        try:
            live = await sessions.list_sessions()
        except Exception:  # a session store that fails is no reason to refuse the job: the kernelspec decides
            return None
        for session in live:
            kernel = session.get("kernel") or {}
            name = kernel.get("name")
            if name and isinstance(session.get("path"), str) \
                    and os.path.realpath(os.path.join(root, session["path"])) == os.path.realpath(path):
                from ..environment import kernel_interpreter

                return await asyncio.to_thread(kernel_interpreter, name)
        return None

    def _root(self) -> str:
        return os.path.realpath(self.settings.get("server_root_dir") or os.getcwd())

    def _root_path(self, root: str, notebook: str) -> str:
        """The notebook's real path, refused unless it is a notebook file inside the server's root."""
        if os.path.isabs(notebook) or "\0" in notebook or ".." in notebook.replace("\\", "/").split("/"):
            raise web.HTTPError(400, _escape(f"notebook: {notebook!r} must be a path under the Jupyter root, "
                                             "without '..'"))
        path = os.path.realpath(os.path.join(root, notebook))
        if os.path.commonpath([root, path]) != root:
            raise web.HTTPError(400, _escape(f"notebook: {notebook!r} leads outside the Jupyter root"))
        if not path.endswith(".ipynb") or not os.path.isfile(path):
            raise web.HTTPError(404, _escape(f"notebook: no notebook at {notebook!r} under the Jupyter root"))
        return path


# Job fields a notebook submitted by path may set; the rest (kind, notebook, code) follow from the notebook.
NOTEBOOK_OPTIONS = frozenset({"name", "job_type", "image", "kernel", "timeout", "retries", "resources", "parameters",
                              "env", "secrets", "priority"})


def job_spec_arg(data: dict[str, Any]) -> JobSpec:
    """The body's job, as ``spec`` (an object) or ``yaml`` (a job file's text); 400 or 422 naming what is wrong."""
    try:
        if isinstance(data.get("yaml"), str):
            return parse_job_spec(data["yaml"], "<request yaml>")
        if isinstance(data.get("spec"), dict):
            return validate(JobSpec, data["spec"], "<request spec>")
    except SpecError as exc:
        raise web.HTTPError(422, _escape(str(exc))) from None
    raise web.HTTPError(400, "give the job as 'spec' (an object) or 'yaml' (the job file's text)")


class JobHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.job(job_id)
        self.reply(job.to_dict())

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        """Delete an ended job with its log, metrics and outputs; its output blobs nothing else uses are released."""
        released = await self.store_call(self.launch.service.delete_job, job_id, caller=await job_caller(self))
        self.reply({"job_id": job_id, "released": released})


class JobArchiveHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str, action: str) -> None:
        job = await self.store_call(self.launch.service.archive_job, job_id, action == "archive",
                                    caller=await job_caller(self))
        self.reply(job.to_dict())


class JobCancelHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        job = await self.store_call(self.launch.service.cancel, job_id, caller=await job_caller(self))
        self.reply(job.to_dict(), 202)


class JobRerunHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        job = await self.store_call(self.launch.service.rerun, job_id, caller=await job_caller(self),
                                    **self.submitter())
        self.set_header("Location", _job_url(self.base_url, job.id))
        self.reply(job.to_dict(), 201)


class JobMoveHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        data = self.body()
        if data.get("front") is not True:
            raise web.HTTPError(400, "front: must be true (the one move there is: to the front of its queue)")
        job = await self.store_call(self.launch.service.move_to_front, job_id, caller=await job_caller(self))
        self.reply(job.to_dict())


# ------------------------------------------------------------------ sweeps

class SweepsHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        from ..sweep import SweepConfig

        data = self.body()
        queue = data.get("queue") or "default"
        if not isinstance(queue, str):
            raise web.HTTPError(400, "queue: must be a queue name")
        owner = self.owner()
        if "runs" in data:  # a client expanded the sweep itself (HttpStore.create_sweep)
            runs, config = data["runs"], data.get("config") or {}
            if not isinstance(runs, list) or not isinstance(config, dict):
                raise web.HTTPError(400, "runs: must be a list of parameter objects, with 'config' an object")
            max_parallel, fail_fast, name = data.get("max_parallel"), data.get("fail_fast", False), data.get("name")
            if not isinstance(fail_fast, bool):
                raise web.HTTPError(400, "fail_fast: must be true or false")
            if name is not None and not isinstance(name, str):
                raise web.HTTPError(400, "name: must be a string")
            if max_parallel is not None:
                try:
                    check_number("max_parallel", max_parallel, 1, MAX_COUNT, integer=True)
                except ValueError as exc:
                    raise web.HTTPError(400, _escape(str(exc))) from None
        elif isinstance(data.get("sweep"), dict):
            try:
                sweep = validate(SweepConfig, data["sweep"], "<request sweep>")
            except SpecError as exc:
                raise web.HTTPError(400, _escape(str(exc))) from None
            runs, config = sweep.runs(), sweep.model_dump(mode="json", exclude_none=True)
            max_parallel, fail_fast, name = sweep.max_parallel, sweep.fail_fast, sweep.name
        else:
            raise web.HTTPError(400, "sweep: give the sweep as 'sweep' (method, parameters, metric) or as 'runs'")
        if "notebook" in data:
            prepared = await self.prepare_notebook(data)

            def create() -> Any:
                self.launch.store.get_queue(queue)
                artifact = self.launch.service.package(prepared)
                record = self.launch.store.create_sweep(queue, prepared.spec, artifact=artifact.digest, runs=runs,
                                                        config=config, max_parallel=max_parallel,
                                                        fail_fast=fail_fast, name=name, owner=owner)
                grant_artifact(self.launch, artifact.digest, queue)
                return record

            record = await self.from_root(create)
        else:
            spec, artifact = job_spec_arg(data), self.artifact_arg(data)
            record = await self.store_call(self.launch.store.create_sweep, queue, spec, artifact=artifact, runs=runs,
                                           config=config, max_parallel=max_parallel, fail_fast=fail_fast, name=name,
                                           owner=owner)
            if artifact is not None:
                await self.store_call(grant_artifact, self.launch, artifact, queue)
        self.launch.service.wake()
        self.set_header("Location", f"{self.base_url.rstrip('/')}{API}/sweeps/{record.id}")
        self.reply(record.to_dict(), 201)

    artifact_arg = JobsHandler.artifact_arg
    prepare_notebook = JobsHandler.prepare_notebook
    from_root = JobsHandler.from_root
    _live_kernel_interpreter = JobsHandler._live_kernel_interpreter
    _root = JobsHandler._root
    _root_path = JobsHandler._root_path


class SweepHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def get(self, sweep_id: str) -> None:
        """The sweep; its children are ``GET jobs?parent=ID``."""
        sweep = await self.store_call(self.launch.service.get_sweep, sweep_id, caller=await job_caller(self))
        self.reply(sweep.to_dict())


class SweepCancelHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def post(self, sweep_id: str) -> None:
        jobs = await self.store_call(self.launch.service.cancel_sweep, sweep_id, caller=await job_caller(self))
        self.reply({"jobs": [j.to_dict() for j in jobs]}, 202)


# ------------------------------------------------------------------ schedules

MAX_SCHEDULE_TEXT = 255  # the cron and name columns
NEXT_RUNS = 5  # the next times a schedule's record lists


def schedule_dict(schedule: Any) -> dict[str, Any]:
    """A schedule as the API answers it: its record and its next few times."""
    from ..cron import Cron

    d = schedule.to_dict()
    d["next_runs"] = [] if schedule.paused else Cron(schedule.cron).next_times(
        (schedule.next_run_at or time.time()) - 1, NEXT_RUNS, schedule.tz)
    return d


class SchedulesHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        schedules = await self.store_call(self.launch.service.list_schedules, caller=await job_caller(self))
        self.reply({"schedules": [schedule_dict(s) for s in schedules]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        data = self.body()
        queue = data.get("queue") or "default"
        if not isinstance(queue, str):
            raise web.HTTPError(400, "queue: must be a queue name")
        cron = data.get("cron")
        if not isinstance(cron, str) or not cron.strip() or len(cron) > MAX_SCHEDULE_TEXT:
            raise web.HTTPError(400, "cron: give five cron fields as a string, e.g. '0 6 * * *'")
        tz = data.get("tz") or "UTC"
        name = data.get("name")
        for field, value in (("tz", tz), ("name", name)):
            if value is not None and (not isinstance(value, str) or len(value) > MAX_SCHEDULE_TEXT):
                raise web.HTTPError(400, f"{field}: must be a string of at most {MAX_SCHEDULE_TEXT} characters")
        owner = self.owner()
        service = self.launch.service
        if "notebook" in data:
            prepared = await self.prepare_notebook(data)

            def create() -> Any:
                schedule, artifact = service.create_schedule(prepared, queue=queue, cron=cron, tz=tz, name=name,
                                                             owner=owner)
                grant_artifact(self.launch, artifact.digest, queue)
                return schedule

            schedule = await self.from_root(create)
        else:
            spec, artifact = job_spec_arg(data), self.artifact_arg(data)
            schedule = await self.store_call(self.launch.store.create_schedule, queue, spec, cron=cron, tz=tz,
                                             artifact=artifact, name=name, owner=owner)
            if artifact is not None:
                await self.store_call(grant_artifact, self.launch, artifact, queue)
        self.set_header("Location", f"{self.base_url.rstrip('/')}{API}/schedules/{schedule.id}")
        self.reply(schedule_dict(schedule), 201)

    artifact_arg = JobsHandler.artifact_arg
    prepare_notebook = JobsHandler.prepare_notebook
    from_root = JobsHandler.from_root
    _live_kernel_interpreter = JobsHandler._live_kernel_interpreter
    _root = JobsHandler._root
    _root_path = JobsHandler._root_path


class ScheduleHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def get(self, schedule_id: str) -> None:
        schedule = await self.store_call(self.launch.service.get_schedule, schedule_id,
                                         caller=await job_caller(self))
        self.reply(schedule_dict(schedule))

    @web.authenticated
    @authorized
    async def delete(self, schedule_id: str) -> None:
        await self.store_call(self.launch.service.delete_schedule, schedule_id, caller=await job_caller(self))
        self.set_status(204)
        self.finish()


class SchedulePauseHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def post(self, schedule_id: str, action: str) -> None:
        schedule = await self.store_call(self.launch.service.pause_schedule, schedule_id, action == "pause",
                                         caller=await job_caller(self))
        self.reply(schedule_dict(schedule))


def log_page(chunks: list[Any], nxt: int, job: Any, offset: int, encoding: str) -> dict[str, Any]:
    def encode(data: bytes) -> str:
        return base64.b64encode(data).decode() if encoding == "base64" else data.decode("utf-8", "replace")

    return {"job_id": job.id, "offset": offset, "next_offset": nxt, "log_size": job.log_size, "state": job.state,
            "done": job.state in FINAL and nxt >= job.log_size, "encoding": encoding,
            "chunks": [{"offset": c.offset, "stream": c.stream, "attempt": c.attempt, "data": encode(c.data)}
                       for c in chunks]}


class JobLogsHandler(LaunchHandler):
    """The log from a byte offset; page on with ``next_offset``. ``encoding=base64`` keeps bytes exact."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        offset = self.int_arg("offset", 0)
        limit = self.int_arg("limit", LOG_READ_LIMIT, minimum=1, maximum=16 * 1024 * 1024)
        encoding = self.get_argument("encoding", "text")
        if encoding not in ("text", "base64"):
            raise web.HTTPError(400, "encoding must be 'text' or 'base64'")
        job = await self.job(job_id)
        chunks, nxt = await self.store_call(self.launch.store.read_log, job_id, offset, limit=limit)
        self.reply(log_page(chunks, nxt, job, offset, encoding))


class JobMetricsHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        after = self.int_arg("after", 0)
        await self.job(job_id)
        metrics = await self.store_call(self.launch.store.read_metrics, job_id, after)
        self.reply({"job_id": job_id, "metrics": metrics})


class JobOutputsHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        await self.job(job_id)
        outputs = await self.store_call(self.launch.store.list_outputs, job_id)
        base = f"{self.base_url.rstrip('/')}{API}/jobs/{job_id}/outputs/"
        self.reply({"job_id": job_id, "outputs": [
            {"path": o.path, "digest": o.digest, "size": o.size, "url": base + quote(o.path)} for o in outputs]})


class JobOutputHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str, path: str) -> None:
        await self.job(job_id)
        outputs = await self.store_call(self.launch.store.list_outputs, job_id)
        match = next((o for o in outputs if o.path == path), None)
        if match is None:
            raise web.HTTPError(404, _escape(f"job {job_id} has no output {path!r}; list them at "
                                             f"{API}/jobs/{job_id}/outputs"))
        await send_blob(self, match.digest, filename=os.path.basename(path))


async def send_blob(handler: LaunchHandler, digest: str, *, filename: str | None = None) -> None:
    path = await handler.store_call(handler.launch.blobs.path, digest)  # a service's client downloads it first
    if not path.exists():
        raise web.HTTPError(404, f"blob {digest} is not on the server")
    ctype = (mimetypes.guess_type(filename)[0] if filename else None) or "application/octet-stream"
    handler.set_header("Content-Type", ctype)
    handler.set_header("Content-Length", str(path.stat().st_size))
    if filename:
        handler.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{quote(filename)}")
    with open(path, "rb") as f:
        while block := f.read(256 * 1024):
            handler.write(block)
            await handler.flush()
    handler.finish()


class OpenAPIHandler(LaunchHandler):
    """The API's own OpenAPI document (``openapi.yaml`` beside this module) as JSON, its server being this one's base
    URL: the contract of the version a client talks to. Read like the other read routes (``launch_jobs``)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({**openapi_document(), "servers": [{"url": self.base_url.rstrip("/") or "/"}]})


@functools.cache
def openapi_document() -> dict[str, Any]:
    """``openapi.yaml``, parsed once."""
    return yaml.safe_load((Path(__file__).parent / "openapi.yaml").read_text(encoding="utf-8"))


class AgentsHandler(LaunchHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        agents = await self.store_call(self.launch.store.list_agents)
        self.reply({"agents": agents})


# ------------------------------------------------------------------ agent tokens (administration, like queues)

class TokensHandler(LaunchHandler):
    """Agent tokens: list them (never their secrets), or create one (its secret is in this answer only)."""

    auth_resource = QUEUES_RESOURCE

    @web.authenticated
    @authorized
    async def get(self) -> None:
        include_revoked = self.get_argument("include_revoked", "false").lower() in ("1", "true", "yes")
        tokens = await self.store_call(self.launch.store.list_agent_tokens, include_revoked=include_revoked)
        self.reply({"tokens": [r.to_dict() for r in tokens]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        data = self.body()
        name, queues = data.get("name") or "remote-agent", data.get("queues")
        if not isinstance(name, str) or not isinstance(queues, list) or not all(isinstance(q, str) for q in queues):
            raise web.HTTPError(400, "give 'queues' (a list of queue names, or ['*']) and optionally a 'name'")
        created_by = self.owner()
        token, record = await self.store_call(self.launch.store.create_agent_token, name, queues,
                                              created_by=created_by)
        self.set_header("Location", f"{self.base_url.rstrip('/')}{API}/tokens/{record.id}")
        self.reply({"token": token, **record.to_dict()}, 201)


class TokenHandler(LaunchHandler):
    auth_resource = QUEUES_RESOURCE

    @web.authenticated
    @authorized
    async def delete(self, token_id: str) -> None:
        record = await self.store_call(self.launch.store.revoke_agent_token, token_id)
        self.reply(record.to_dict())


# ------------------------------------------------------------------ artifacts (blobs by digest)

class BlobsMissingMixin:
    async def missing(self: Any) -> None:
        digests = self.body().get("digests")
        if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
            raise web.HTTPError(400, "'digests' must be a list of sha256:... strings")
        try:
            for d in digests:
                check_digest(d)
        except ValueError as exc:
            raise web.HTTPError(400, _escape(str(exc))) from None
        missing = await self.launch.run_store(self.launch.blobs.missing, digests)
        visible = await self.visible([d for d in digests if d not in missing])
        self.reply({"missing": [d for d in dict.fromkeys(digests) if d in missing or d not in visible]})

    async def visible(self: Any, digests: list[str]) -> Any:
        """Which of these stored blobs the caller may read (a user: all of them)."""
        return set(digests)


class BlobUploadMixin:
    """Streams a PUT body to a temporary file, checks its digest, then moves it into the blob store."""

    _tmp: Any = None
    _hash: Any = None
    _size = 0
    _write_error: OSError | None = None  # the disk refused the body (full): the rest is read and dropped

    async def authorize_upload(self: Any) -> None:
        """Refuse in ``prepare``: the body streams to disk as it arrives, before put()'s own @authorized check runs,
        so an identity the authorizer denies could otherwise write up to ``max_blob_size`` to the server's disk."""
        if not await ensure_async(self.authorizer.is_authorized(self, self.current_user, "write", self.auth_resource)):
            raise web.HTTPError(403, f"User is not authorized to write on resource: {self.auth_resource}.")
        self.start_upload()

    def start_upload(self: Any) -> None:
        self.request.connection.set_max_body_size(self.launch.max_blob_size)
        tmp_dir = self.launch.blobs.root / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        self._tmp = tempfile.NamedTemporaryFile(dir=tmp_dir, delete=False)
        self._hash = hashlib.sha256()

    def data_received(self: Any, chunk: bytes) -> None:
        if self._tmp is None:
            return
        self._size += len(chunk)
        self._hash.update(chunk)
        try:
            self._tmp.write(chunk)
        except OSError as exc:
            self._write_error = exc
            self.discard_upload()  # a half-written upload must not keep the disk full

    def on_finish(self: Any) -> None:
        self.discard_upload()
        super().on_finish()  # type: ignore[misc]

    def on_connection_close(self: Any) -> None:
        self.discard_upload()  # an upload abandoned mid-body never reaches on_finish
        super().on_connection_close()  # type: ignore[misc]

    def discard_upload(self: Any) -> None:
        if self._tmp is not None:
            self._tmp.close()
            if os.path.exists(self._tmp.name):
                os.unlink(self._tmp.name)
            self._tmp = None

    async def finish_upload(self: Any, digest: str) -> None:
        if self._write_error is not None:
            if is_disk_full(self._write_error):
                raise web.HTTPError(507, DISK_FULL)
            raise web.HTTPError(500, _escape(f"the server could not store the upload: {self._write_error}"))
        if self._tmp is None:
            raise web.HTTPError(400, "no upload body")
        try:
            self._tmp.close()
        except OSError as exc:  # the last buffered write
            self.discard_upload()
            if is_disk_full(exc):
                raise web.HTTPError(507, DISK_FULL) from None
            raise
        got = "sha256:" + self._hash.hexdigest()
        if got != digest:
            raise web.HTTPError(400, f"the uploaded content's digest is {got}, not {digest}; upload it again")
        dest = self.launch.blobs.path(digest)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(self._tmp.name, 0o444)
            os.replace(self._tmp.name, dest)
        await self.stored(digest)  # before the answer: a caller that has it may use the blob at once
        self.reply({"digest": digest, "size": self._size}, 201)

    async def stored(self: Any, digest: str) -> None:
        """What the caller may do with a blob it uploaded, recorded before the upload is answered."""


class ArtifactsMissingHandler(BlobsMissingMixin, LaunchHandler):
    """Which of these blob digests the server lacks: a client uploads only those."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        await self.missing()


@web.stream_request_body
class ArtifactBlobHandler(BlobUploadMixin, LaunchHandler):
    async def prepare(self) -> None:
        await super().prepare()
        if self.request.method == "PUT" and self.current_user:
            await self.authorize_upload()

    @web.authenticated
    @authorized
    async def put(self, digest: str) -> None:
        await self.finish_upload(digest)

    @web.authenticated
    @authorized
    async def get(self, digest: str) -> None:
        await send_blob(self, digest)


# ------------------------------------------------------------------ agent endpoints

class AgentHandler(LaunchHandler):
    """Agent endpoints: only an agent token is accepted; its scope (queues) is checked on every call."""

    auth_resource = AGENT_AUTH_RESOURCE
    agent_token: Any = None

    async def prepare(self) -> None:  # type: ignore[override]
        CallContext.set(CallContext.JUPYTER_HANDLER, self)
        if not self.check_host():
            raise web.HTTPError(403, "this host name is not allowed")
        self.admit()
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not token.strip():
            raise web.HTTPError(401, "agent endpoints need an agent token: Authorization: Bearer jla_... "
                                     "(create one with `jupyter launch token create`)")
        record = await self.launch.run_store(self.launch.store.verify_agent_token, token.strip())
        if record is None:
            raise web.HTTPError(403, "this agent token is unknown or revoked; ask an admin for a new one "
                                     "(`jupyter launch token create --queue Q`)")
        self.agent_token, self.agent_secret = record, token.strip()
        # A bearer header is never attached by a browser on its own, so there is no cross-site request to guard.
        self.current_user = self._jupyter_current_user = User(username=f"agent:{record.name}",
                                                              name=f"agent:{record.name}")
        self.set_cors_headers()

    def check_xsrf_cookie(self) -> None:
        return

    def require_queues(self, queues: list[str]) -> None:
        denied = [q for q in queues if not self.agent_token.allows(q)]
        if denied:
            raise web.HTTPError(403, _escape(f"agent token {self.agent_token.id} ({self.agent_token.name}) may not "
                                             f"serve queue(s) {', '.join(denied)}; it is scoped to "
                                             f"{', '.join(self.agent_token.queues)}"))

    def token_grantees(self) -> list[str] | None:
        """The blob grantees this token reads as: its queues (``None``: every queue, for a ``*`` token)."""
        queues = self.agent_token.queues
        return None if "*" in queues else [f"queue:{q}" for q in queues]

    async def require_job(self, job_id: str) -> Any:
        job = await self.store_call(self.launch.store.get_job, job_id)
        self.require_queues([job.queue])
        return job


class AgentRegisterHandler(AgentHandler):
    """An agent's registration, bound to the agent token that made it: no other token (and no token at all for the
    server's own agent) may replace, refresh or remove it."""

    @web.authenticated
    @authorized
    async def post(self, action: str) -> None:
        data = self.body()
        agent_id = data.get("agent_id")
        if not isinstance(agent_id, str) or not agent_id or len(agent_id) > 64:
            raise web.HTTPError(400, "'agent_id' (a string of at most 64 characters) is required")
        store = self.launch.store
        if action == "register":
            queues, job_types = string_list(data, "queues"), string_list(data, "job_types")
            info = data.get("info") or {}
            if not isinstance(info, dict):
                raise web.HTTPError(400, "'info' must be an object")
            self.require_queues(queues)
            await self.store_call(store.register_agent, agent_id, queues, job_types,
                                  host=str(data.get("host") or self.request.remote_ip)[:255], info=info,
                                  token_id=self.agent_token.id)
            await self.store_call(store.touch_agent_token, self.agent_token.id)
        elif action == "seen":
            await self.store_call(store.agent_seen, agent_id, token_id=self.agent_token.id)
        else:
            await self.store_call(store.unregister_agent, agent_id, token_id=self.agent_token.id)
        self.reply({"ok": True})


def string_list(data: dict[str, Any], name: str) -> list[str]:
    """``data[name]`` as a list of strings (absent or null: empty); else 400 naming the field."""
    value = data.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise web.HTTPError(400, f"'{name}' must be a list of strings")
    return value


def bounded_int(raw: str, minimum: int, maximum: int) -> int | None:
    """The integer ``raw`` spells when it lies within the bounds; None otherwise (not one, or out of range). Long
    strings are not parsed at all: a 4,300-digit one costs int() real time."""
    try:
        value = int(raw) if len(raw) <= 20 else None
    except ValueError:
        return None
    return value if value is not None and minimum <= value <= maximum else None


def number(data: dict[str, Any], name: str, default: Any, minimum: float, maximum: float, *,
           integer: bool = False) -> Any:
    """``data[name]`` when it is a finite number within the bounds (``default`` when absent or null); else 400
    naming the field. JSON bodies may carry NaN, Infinity and integers of any size: none of them reaches the store."""
    value = data.get(name)
    if value is None:
        return default
    try:
        return check_number(name, value, minimum, maximum, integer=integer)
    except ValueError as exc:
        raise web.HTTPError(400, _escape(str(exc))) from None


def optional_text(data: dict[str, Any], name: str, limit: int) -> str | None:
    value = data.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > limit):
        raise web.HTTPError(400, f"'{name}' must be a string of at most {limit} characters")
    return value


class AgentTokenHandler(AgentHandler):
    """The record of the agent token the call carries (its name and queues): how a client verifies a token."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(self.agent_token.to_dict())


class AgentQueueHandler(AgentHandler):
    @web.authenticated
    @authorized
    async def get(self, queue: str) -> None:
        self.require_queues([queue])
        record = await self.store_call(self.launch.store.get_queue, queue)
        self.reply(record.to_dict())


class AgentQueueJobsHandler(AgentHandler):
    """For an agent reaping a queue: the state and fence of the given jobs of that queue (others are left out)."""

    @web.authenticated
    @authorized
    async def post(self, queue: str) -> None:
        self.require_queues([queue])
        job_ids = self.body().get("job_ids")
        if not isinstance(job_ids, list) or not all(isinstance(i, str) for i in job_ids):
            raise web.HTTPError(400, "'job_ids' (a list of job ids) is required")
        if len(job_ids) > MAX_JOB_STATUS_IDS:
            raise web.HTTPError(400, f"at most {MAX_JOB_STATUS_IDS} job ids per request, got {len(job_ids)}")
        statuses = await self.store_call(self.launch.store.job_statuses, queue, job_ids)
        self.reply({"jobs": {job_id: {"state": st.state, "fence": st.fence} for job_id, st in statuses.items()}})


class AgentQueueAgentsHandler(AgentHandler):
    """For an agent reaping a queue: the ids of the agents serving it now."""

    @web.authenticated
    @authorized
    async def get(self, queue: str) -> None:
        self.require_queues([queue])
        self.reply({"agents": await self.store_call(self.launch.store.live_agent_ids, queue)})


class AgentClaimHandler(AgentHandler):
    """Claim the oldest eligible job; with ``wait`` seconds, hold the request until one arrives (long poll).

    A claim is taken only while the agent's connection is open, and a claim whose answer cannot be written is handed
    back (queued again as the same attempt, its fence bumped): otherwise a job arriving as an agent goes away would
    be claimed for nobody and fail as ``lost`` once its lease ran out."""

    counts_as_inflight = False
    _gone: asyncio.Event | None = None

    def on_connection_close(self) -> None:
        if self._gone is not None:
            self._gone.set()
        super().on_connection_close()

    def connection_gone(self) -> bool:
        return self.request.connection.stream.closed() or (self._gone is not None and self._gone.is_set())

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self._gone = asyncio.Event()
        data = self.body()
        agent_id, queues = data.get("agent_id"), data.get("queues")
        if not isinstance(agent_id, str) or not agent_id or not isinstance(queues, list) or not queues \
                or not all(isinstance(q, str) for q in queues):
            raise web.HTTPError(400, "'agent_id' and a non-empty 'queues' list are required")
        app, store = self.launch, self.launch.store
        wait = min(number(data, "wait", 0.0, 0, 24 * 3600), app.max_claim_wait)
        kwargs = dict(lease_seconds=number(data, "lease_seconds", 30.0, MIN_LEASE_SECONDS, MAX_LEASE_SECONDS),
                      free_gpus=number(data, "free_gpus", None, 0, MAX_COUNT, integer=True))
        owner = data.get("owner")
        if owner is not None and not (isinstance(owner, str) and 0 < len(owner) <= MAX_OWNER):
            raise web.HTTPError(400, f"'owner' must be the user the agent serves as (1 to {MAX_OWNER} characters), "
                                     f"or null for every user")
        kwargs["owner"] = owner
        job_types = string_list(data, "job_types") or None
        self.require_queues(queues)
        await self.store_call(store.check_agent_id, agent_id, self.agent_token.id)
        seen = time.monotonic()  # the agent was last marked seen (registering, its housekeeping) before this
        deadline = seen + wait
        first = True
        while not self.connection_gone():
            wake = app.service.events.claim_waiter()
            try:
                if not first and await self.store_call(store.verify_agent_token, self.agent_secret) is None:
                    raise web.HTTPError(403, "this agent token was revoked; the agent gets no more work")
                first = False
                if time.monotonic() - seen >= store_base.AGENT_TTL / 3:  # a poll longer than the TTL: still here
                    await self.store_call(store.agent_seen, agent_id, token_id=self.agent_token.id)
                    seen = time.monotonic()
                if self.connection_gone():
                    break
                claim = await self.store_call(store.claim_next_job, agent_id, queues, job_types,
                                              token_id=self.agent_token.id, **kwargs)
                if claim is not None:
                    await self.deliver(claim)
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # Woken by a submit on this server, or by the agent going away; the second bound covers submits on
                # other servers (PostgreSQL).
                waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(self._gone.wait())]
                try:
                    await asyncio.wait(waits, timeout=min(left, 1.0), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for pending in waits:
                        pending.cancel()
            finally:
                app.service.events.release_claim_waiter(wake)
        self.set_status(204)
        self.finish()

    async def deliver(self, claim: Any) -> None:
        """Let the token read the job's artifact, then answer; hand the claim back when the answer cannot be sent."""
        job = claim.job
        try:
            if job.artifact:
                await self.launch.run_store(grant_artifact, self.launch, job.artifact, job.queue)
            if self.connection_gone():
                raise StreamClosedError()
            self.set_header("Content-Type", "application/json")
            await self.finish(json.dumps({"job": job.to_dict(), "fence": claim.fence}, default=str))
        except Exception as exc:
            handed = await self.launch.run_store(self.launch.store.hand_back, job.id, claim.fence)
            self.log.warning("claim of job %s by agent %s not delivered (%s); %s", job.id, claim.job.agent_id,
                             type(exc).__name__, "handed back" if handed else "its agent already reported on it")
            if not isinstance(exc, StreamClosedError):
                raise


def grant_artifact(app: Any, digest: str, queue: str) -> None:
    """The artifact's manifest and every file it lists become readable by the agents of ``queue`` (on the API's
    threads: it reads the manifest)."""
    from ..artifact import ArtifactError, load_manifest

    if app.service_url:
        return  # the service grants its queue's agents the artifacts of the jobs it takes
    digests = [digest]
    try:
        digests += [entry["digest"] for entry in load_manifest(digest, app.blobs)["files"].values()]
    except ArtifactError:
        pass  # the agent will fail the job as artifact_error when it reads the same manifest
    app.store.grant_blobs(digests, f"queue:{queue}")


class AgentJobHandler(AgentHandler):
    """Reports on one claimed job. Every call carries the claim's fence: a report for a claim that is no longer
    current (the job ended, or another attempt holds it) is ignored (``ok`` false) or, for logs, metrics and outputs,
    refused with 409 ``stale_claim``, and the agent stops reporting on that job."""

    @web.authenticated
    @authorized
    async def post(self, job_id: str, action: str) -> None:
        data = self.body()
        store = self.launch.store
        job = await self.require_job(job_id)
        fence = data.get("fence")
        if fence is None:
            raise web.HTTPError(400, "'fence' (the claim's fencing token) is required")
        fence = number(data, "fence", None, 0, MAX_COUNT, integer=True)
        # The current claim answers only to the token that made it (a fence is no secret: job_statuses and the user
        # routes show it). A stale fence takes the usual path (ok false, or 409), so an agent that lost its claim
        # learns it as before. A claim made before claims recorded their token (NULL) is left to its fence.
        if fence == job.fence and job.state in ACTIVE and job.claim_token not in (None, self.agent_token.id):
            raise web.HTTPError(403, f"job {job_id} is claimed by another agent; this agent token may not report "
                                     "on it")
        if action == "heartbeat":
            beat = await self.store_call(store.heartbeat, job_id, fence, lease_seconds=number(
                data, "lease_seconds", 30.0, MIN_LEASE_SECONDS, MAX_LEASE_SECONDS))
            self.reply({"ok": beat.ok, "cancel_requested": beat.cancel_requested})
        elif action == "state":
            state = data.get("state")
            if state not in ACTIVE:
                raise web.HTTPError(400, f"state must be one of {', '.join(ACTIVE)}")
            facts = data.get("facts") or {}
            if not isinstance(facts, dict) or len(facts) > 32 or any(
                    not k.isidentifier() or k in STATE_ARGUMENTS or not isinstance(v, (str, int, float, type(None)))
                    for k, v in facts.items()):
                raise web.HTTPError(400, "'facts' must be an object of at most 32 names with plain values (the "
                                         "values that fill in the reason's sentence)")
            ok = await self.store_call(store.set_state, job_id, fence, state, optional_text(data, "reason", MAX_REASON),
                                       optional_text(data, "message", MAX_MESSAGE), **facts)
            self.reply({"ok": ok})
        elif action == "progress":
            progress = data.get("progress")
            if not isinstance(progress, dict):
                raise web.HTTPError(400, "'progress' must be an object (value, total, description)")
            self.reply({"ok": await self.store_call(store.set_progress, job_id, fence, progress)})
        elif action == "finish":
            state = data.get("state")
            if state not in FINAL:
                raise web.HTTPError(400, f"state must be one of {', '.join(FINAL)}")
            ok = await self.store_call(store.finish, job_id, fence, state,
                                       exit_code=number(data, "exit_code", None, MIN_EXIT_CODE, MAX_EXIT_CODE,
                                                        integer=True),
                                       reason=optional_text(data, "reason", MAX_REASON),
                                       message=optional_text(data, "message", MAX_MESSAGE))
            self.reply({"ok": ok})
        elif action == "hand_back":
            self.reply({"ok": await self.store_call(store.hand_back, job_id, fence)})
        elif action == "logs":
            try:
                pieces = [(s, base64.b64decode(d, validate=True)) for s, d in data.get("pieces") or []]
                if not all(s in ("stdout", "stderr") for s, _ in pieces):
                    raise ValueError
            except (ValueError, TypeError):
                raise web.HTTPError(400, "'pieces' must be [stream, base64 data] pairs, stream stdout or stderr") \
                    from None
            at = number(data, "at", None, 0, MAX_COUNT, integer=True)
            size = await self.store_call(store.append_logs, job_id, fence, pieces, at)
            self.reply({"log_size": size})
        elif action == "metrics":
            records = data.get("records")
            if not isinstance(records, list):
                raise web.HTTPError(400, "'records' must be a list of metric records")
            await self.store_call(store.add_metrics, job_id, fence, records)
            self.reply({"ok": True})
        else:
            outputs = await self.store_call(self.check_outputs, data.get("outputs") or [])
            await self.store_call(store.add_outputs, job_id, fence, outputs)
            self.reply({"ok": True})

    def check_outputs(self, raw: Any) -> list[OutputRecord]:
        """The outputs as records, each naming a blob this agent token may read (one it uploaded, or one its queues
        own: the same rule as ``agent/blobs/missing``, so a blob that call calls present needs no upload), with that
        blob's real size (on the API's threads: it stats the blobs)."""
        try:
            outputs = [OutputRecord(o["path"], o["digest"], o["size"]) for o in raw]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"'outputs' must be a list of {{path, digest, size}} records: {exc!r}") from None
        for o in outputs:
            check_output_path(o.path)
            check_digest(o.digest)
            check_number("size", o.size, 0, MAX_COUNT, integer=True)
        digests = {o.digest for o in outputs}
        granted = self.launch.store.granted_blobs(digests, self.token_grantees(), self.agent_token.id)
        absent = sorted(d for d in digests if d not in granted or not self.launch.blobs.has(d))
        if absent:
            raise web.HTTPError(409, f"upload these output blobs first (PUT {API}/agent/blobs/DIGEST): "
                                     f"{', '.join(absent)}")
        for o in outputs:
            real = self.launch.blobs.path(o.digest).stat().st_size
            if o.size != real:
                raise ValueError(f"output {o.path!r}: 'size' is {o.size} but its blob holds {real} bytes")
        return outputs


class AgentBlobsMissingHandler(BlobsMissingMixin, AgentHandler):
    """Which of these blobs the agent must upload: those not on the server, and those it may not read (so the answer
    says nothing of other queues' content; uploading proves the agent holds it)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        await self.missing()

    async def visible(self, digests: list[str]) -> set[str]:
        return await self.launch.run_store(self.launch.store.granted_blobs, digests, self.token_grantees(),
                                           self.agent_token.id)


@web.stream_request_body
class AgentBlobHandler(BlobUploadMixin, AgentHandler):
    """Blobs through the agent routes: read only what the token's queues own or what it uploaded; an upload (its
    digest checked) lets the token read that blob from then on."""

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if self.request.method == "PUT":
            await self.authorize_upload()

    @web.authenticated
    @authorized
    async def get(self, digest: str) -> None:
        granted = await self.launch.run_store(self.launch.store.granted_blobs, [digest], self.token_grantees(),
                                              self.agent_token.id)
        if digest not in granted:
            raise web.HTTPError(404, f"blob {digest} is not on the server")  # the same answer as for absent content
        await send_blob(self, digest)

    @web.authenticated
    @authorized
    async def put(self, digest: str) -> None:
        await self.finish_upload(digest)

    async def stored(self, digest: str) -> None:
        """The token may read what it uploaded (and name it as an output) from the moment the upload is answered."""
        await self.launch.run_store(self.launch.store.grant_blobs, [digest], f"token:{self.agent_token.id}")


class ServiceOnlyHandler(LaunchHandler):
    """In a server that is a client of the team's service (``LaunchApp.service_url``), the routes only the service
    serves: agent tokens, artifact uploads, and the agents' own."""

    async def prepare(self) -> None:
        # Before authentication, so an agent (whose token this server cannot check) learns why too; the message
        # names the setting, not the service's address.
        raise web.HTTPError(501, "this server serves jupyter-launch's API from the team's service "
                                 "(c.LaunchApp.service_url); agent tokens, artifact uploads and agents go to the "
                                 "service itself")


def service_only_routes(handlers: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``handlers`` with the routes a service's client does not serve answered by ``ServiceOnlyHandler``."""
    only_there = (TokensHandler, TokenHandler, ArtifactsMissingHandler, ArtifactBlobHandler)
    return [(pattern, ServiceOnlyHandler if cls in only_there or issubclass(cls, AgentHandler) else cls)
            for pattern, cls in handlers]


default_handlers = [
    (rf"{API}/queues", QueuesHandler),
    (rf"{API}/queues/{QUEUE}", QueueHandler),
    (rf"{API}/jobs", JobsHandler),
    (rf"{API}/jobs/{JOB_ID}", JobHandler),
    (rf"{API}/jobs/{JOB_ID}/cancel", JobCancelHandler),
    (rf"{API}/jobs/{JOB_ID}/rerun", JobRerunHandler),
    (rf"{API}/jobs/{JOB_ID}/(?P<action>archive|unarchive)", JobArchiveHandler),
    (rf"{API}/jobs/{JOB_ID}/move", JobMoveHandler),
    (rf"{API}/sweeps", SweepsHandler),
    (rf"{API}/sweeps/{SWEEP_ID}", SweepHandler),
    (rf"{API}/sweeps/{SWEEP_ID}/cancel", SweepCancelHandler),
    (rf"{API}/schedules", SchedulesHandler),
    (rf"{API}/schedules/{SCHEDULE_ID}", ScheduleHandler),
    (rf"{API}/schedules/{SCHEDULE_ID}/(?P<action>pause|resume)", SchedulePauseHandler),
    (rf"{API}/jobs/{JOB_ID}/logs", JobLogsHandler),
    (rf"{API}/jobs/{JOB_ID}/metrics", JobMetricsHandler),
    (rf"{API}/jobs/{JOB_ID}/outputs", JobOutputsHandler),
    (rf"{API}/jobs/{JOB_ID}/outputs/(?P<path>.+)", JobOutputHandler),
    (rf"{API}/agents", AgentsHandler),
    (rf"{API}/openapi.json", OpenAPIHandler),
    (rf"{API}/tokens", TokensHandler),
    (rf"{API}/tokens/{TOKEN_ID}", TokenHandler),
    (rf"{API}/artifacts/missing", ArtifactsMissingHandler),
    (rf"{API}/artifacts/blobs/{DIGEST}", ArtifactBlobHandler),
    (rf"{API}/agent/(?P<action>register|seen|unregister)", AgentRegisterHandler),
    (rf"{API}/agent/claim", AgentClaimHandler),
    (rf"{API}/agent/token", AgentTokenHandler),
    (rf"{API}/agent/queues/{QUEUE}", AgentQueueHandler),
    (rf"{API}/agent/queues/{QUEUE}/jobs", AgentQueueJobsHandler),
    (rf"{API}/agent/queues/{QUEUE}/agents", AgentQueueAgentsHandler),
    (rf"{API}/agent/jobs/{JOB_ID}/(?P<action>heartbeat|state|progress|finish|hand_back|logs|metrics|outputs)",
     AgentJobHandler),
    (rf"{API}/agent/blobs/missing", AgentBlobsMissingHandler),
    (rf"{API}/agent/blobs/{DIGEST}", AgentBlobHandler),
]

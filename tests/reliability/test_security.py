"""Security promises, end to end on a real `jupyter server` process: every launch handler refuses a request without
credentials, a user the authorizer denies, and the wrong kind of token; the XSRF check guards cookie sessions; and a
secret's value, given with ``--secret``, shows up in no file, table, log, API response, container or manifest.

The in-process versions live in ``tests/server/test_auth.py`` (pytest-jupyter, one authorizer denying everyone),
``tests/server/test_remote_agent.py::test_token_scope_and_kinds_are_enforced`` (two token mix-ups),
``tests/test_docker_backend.py::test_secrets_reach_the_job_but_appear_nowhere_in_inspect_logs_or_the_store`` and
``tests/test_kubernetes_backend.py::test_manifests_are_accepted_by_the_api_server_and_valid_for_newer_clusters``
(which needs a cluster). Here one server holds two users and three agent tokens (one denied, one revoked) at once, so
each refusal is shown to be about who asks, next to an identity that the same endpoint lets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import base64
import gzip
import hashlib
import http.client
import importlib
import inspect
import io
import json
import pkgutil
import re
import secrets
import sqlite3
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from tornado import web

import jupyter_launch.server
from jupyter_launch.server.app import LaunchApp
from jupyter_launch.server.handlers import AGENT_AUTH_RESOURCE, USER_RESOURCES
from jupyter_launch.store import SQLStore

from docker_engine import BASE_IMAGE as DOCKER_IMAGE
from launch_server import LaunchServer

from .conftest import record_figure

VERBS = ("get", "post", "put", "delete", "patch")
SAMPLES = {"job_id": "0123456789abcd", "queue": "no-such-queue", "digest": "sha256:" + "0" * 64, "path": "out.txt",
           "token_id": "0123456789ab", "schedule_id": "0123456789abcdef01", "sweep_id": "0123456789abcdef01"}
GROUP = re.compile(r"\(\?P<(\w+)>((?:[^()]|\([^()]*\))+)\)")  # a named group, one level of nested groups inside
DENIED_TOKEN = "denied-" + secrets.token_hex(8)
DOCKER_QUEUE = "sec-docker"
SECRET_NAME = "MYSECRET"

# Appended to the server's config: the server's token is an allowed user; DENIED_TOKEN is "mallory", whom the
# authorizer refuses on the launch resources (as it refuses the agent token named "mallory").
AUTH_CONFIG = f"""
from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import PasswordIdentityProvider, User


class TwoUsers(PasswordIdentityProvider):
    async def get_user_token(self, handler):
        if self.get_token(handler) == {DENIED_TOKEN!r}:
            return User(username="mallory", name="mallory")
        return await super().get_user_token(handler)


class DenyMalloryLaunch(Authorizer):
    def is_authorized(self, handler, user, action, resource):
        denied = user.username in ("mallory", "agent:mallory") and resource in {(*USER_RESOURCES, AGENT_AUTH_RESOURCE)!r}
        if denied:
            self.log.info("DenyMalloryLaunch: refused %s %s on %s (%s)", user.username, action, resource,
                          type(handler).__name__)
        return not denied


c.ServerApp.identity_provider_class = TwoUsers
c.ServerApp.authorizer_class = DenyMalloryLaunch
c.ServerApp.log_level = "DEBUG"
c.Agent.keep_workdirs = True
"""


# ---------------------------------------------------------------- the server and plain HTTP


@dataclass
class Secured:
    """The server under test, the canary it holds as MYSECRET, and agent tokens by name (``revoked`` is)."""

    server: LaunchServer
    canary: str
    agent_tokens: dict[str, str]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    canary = "canary-" + secrets.token_hex(16)
    base = tmp_path_factory.mktemp("security")
    server = LaunchServer(base, agent_queues=["default", DOCKER_QUEUE], extra_config=AUTH_CONFIG,
                    env={SECRET_NAME: canary})
    try:
        server.start()
        store = SQLStore(f"sqlite:///{server.home / 'launch.db'}", migrate=False)
        try:
            agent_tokens = {name: store.create_agent_token(name, ["*"])[0] for name in ("box", "mallory", "revoked")}
            store.revoke_agent_token(agent_tokens["revoked"])
        finally:
            store.close()
        yield Secured(server, canary, agent_tokens)
    finally:
        server.stop()


def request(server: LaunchServer, method: str, path: str, *, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One HTTP request with exactly the headers given (no cookie jar, no redirects followed)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.msg, response.read()
    finally:
        conn.close()


async def open_log_socket(server: LaunchServer, path: str, headers: dict[str, str]) -> tuple[int, list[bytes]]:
    """(101, frames until the server closes) when the handshake is accepted, else (its status, [])."""
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    try:
        conn = await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{server.port}{path}", headers=headers,
                                                   request_timeout=60))
    except HTTPClientError as exc:
        return exc.code, []
    frames = []
    try:
        while (message := await asyncio.wait_for(conn.read_message(), 60)) is not None:
            frames.append(message if isinstance(message, bytes) else message.encode())
    finally:
        conn.close()
    return 101, frames


# ---------------------------------------------------------------- enumerating the handlers


def registered_handlers() -> list[tuple[str, type]]:
    """What the extension adds to the server: its own ``initialize_handlers``, not a list copied here."""
    app = LaunchApp()
    app.handlers = []
    app.initialize_handlers()
    return list(app.handlers)


def verbs_of(cls: type) -> list[str]:
    """HTTP verbs a launch handler implements (tornado's 405 defaults do not count)."""
    return [v for v in VERBS if any(v in k.__dict__ for k in cls.__mro__ if k.__module__.startswith("jupyter_launch"))]


def concrete_paths(pattern: str) -> list[str]:
    """The route with each named group filled in: every alternative of ``action``, a sample value otherwise."""
    paths = [pattern]
    while any(GROUP.search(p) for p in paths):
        filled = []
        for p in paths:
            m = GROUP.search(p)
            if m is None:
                filled.append(p)
                continue
            name, body = m.groups()
            values = body.split("|") if name == "action" else [SAMPLES[name]]  # KeyError: a new group to fill
            filled += [p[:m.start()] + v + p[m.end():] for v in values]
        paths = filled
    for p in paths:
        assert re.fullmatch(pattern, p), f"{p} does not match its own route {pattern}"
    return paths


def endpoints() -> list[tuple[str, str, type]]:
    out = []
    for pattern, cls in registered_handlers():
        for path in concrete_paths(pattern):
            out += [(verb.upper(), path, cls) for verb in verbs_of(cls)]
    return out


def is_agent(path: str) -> bool:
    return path.startswith("/launch/api/agent/")


def is_socket(cls: type) -> bool:
    from tornado.websocket import WebSocketHandler

    return issubclass(cls, WebSocketHandler)


def test_every_handler_in_the_package_is_registered_and_enumerated():
    registered = {cls for _, cls in registered_handlers()}
    defined = set()
    for info in pkgutil.iter_modules(jupyter_launch.server.__path__, "jupyter_launch.server."):
        module = importlib.import_module(info.name)
        defined |= {cls for _, cls in inspect.getmembers(module, inspect.isclass)
                    if issubclass(cls, web.RequestHandler) and cls.__module__ == module.__name__ and verbs_of(cls)}
    assert defined - registered == set(), "handlers defined but not served (so not checked here)"
    assert {cls for _, _, cls in endpoints()} == registered
    assert all(verbs_of(cls) for cls in registered), "a registered handler answers no verb"


def test_every_endpoint_refuses_missing_denied_and_wrong_kind_credentials(secured: Secured):
    server, agent = secured.server, secured.agent_tokens
    identities = {
        "no credentials": {},
        "denied user": {"Authorization": f"token {DENIED_TOKEN}"},
        "user token": {"Authorization": f"token {server.token}"},
        "agent token": {"Authorization": f"Bearer {agent['box']}"},
        "denied agent token": {"Authorization": f"Bearer {agent['mallory']}"},
        "revoked agent token": {"Authorization": f"Bearer {agent['revoked']}"},
    }
    # Who each kind of endpoint lets through, and whom the authorizer (not the token check) turns away there.
    allowed = {"user": "user token", "agent": "agent token"}
    authorizer_denies = {"user": "denied user", "agent": "denied agent token"}
    failures, requests, refused = [], 0, 0
    for method, path, cls in endpoints():
        kind = "agent" if is_agent(path) else "user"
        for who, headers in identities.items():
            if is_socket(cls):
                code, _ = asyncio.run(open_log_socket(server, path, headers))
                body = b""
            else:
                data = b"{}" if method in ("POST", "PUT", "PATCH") else None
                code, _, body = request(server, method, path, headers={**headers, "Content-Type": "application/json"},
                                        body=data)
            requests += 1
            seen = f"{method} {path} ({cls.__name__}) as {who}: {code} {body[:200]!r}"
            if who == allowed[kind]:
                # The sample ids name nothing: a 4xx from the handler itself, never an auth refusal or a crash.
                if code in (401, 403) or code >= 500:
                    failures.append(seen)
            elif code not in (401, 403):
                failures.append(f"not refused: {seen}")
            else:
                refused += 1
                if who == authorizer_denies[kind] and body and b"not authorized" not in body:
                    failures.append(f"refused, but not by the authorizer: {seen}")
    assert not failures, "\n".join(failures)
    # The authorizer was asked and said no, on both resources (not just a 403 from somewhere else).
    log = server.log.read_text(errors="replace")
    for _, cls in registered_handlers():
        who = "agent:mallory" if cls.auth_resource == AGENT_AUTH_RESOURCE else "mallory"
        assert re.search(rf"refused {who} \w+ on {cls.auth_resource} \({cls.__name__}\)", log), cls
    record_figure("handler auth matrix", endpoints=len(endpoints()), identities=len(identities), requests=requests,
                  refused=refused, failures=0)


def file_sizes(folder: Path) -> dict[Path, int]:
    sizes = {}
    for path in folder.glob("*"):
        with contextlib.suppress(FileNotFoundError):  # an upload the server is discarding right now
            sizes[path] = path.stat().st_size
    return sizes


def upload_lands_on_disk(server: LaunchServer, path: str, headers: dict[str, str]) -> int:
    """Start a large PUT, send its first MiB, and return the bytes the server has put in the blob store's tmp
    folder by then; the upload is then abandoned."""
    tmp = server.home / "blobs" / "tmp"
    before = file_sizes(tmp)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("PUT", path)
        for key, value in {**headers, "Content-Length": str(64 * 2**20)}.items():
            conn.putheader(key, value)
        conn.endheaders()
        try:
            conn.send(b"x" * 2**20)
        except OSError:
            return 0  # refused before the body: the server closed the connection
        landed, deadline = 0, time.monotonic() + 1.5
        while time.monotonic() < deadline and not landed:
            time.sleep(0.05)
            landed = sum(max(0, size - before.get(p, 0)) for p, size in file_sizes(tmp).items())
        return landed
    finally:
        conn.close()


def test_a_refused_identity_cannot_stream_an_upload_to_disk(secured: Secured):
    """Blob uploads stream to a temporary file as they arrive, before the handler method (and its authorizer
    check) runs; the identities the authorizer refuses must not get that far."""
    server, agent = secured.server, secured.agent_tokens
    user_path, agent_path = (f"/launch/api/{p}/sha256:{'1' * 64}" for p in ("artifacts/blobs", "agent/blobs"))
    assert upload_lands_on_disk(server, user_path, {"Authorization": f"token {server.token}"}) > 0  # the probe works
    assert upload_lands_on_disk(server, agent_path, {"Authorization": f"Bearer {agent['box']}"}) > 0
    assert upload_lands_on_disk(server, user_path, {"Authorization": f"token {DENIED_TOKEN}"}) == 0
    assert upload_lands_on_disk(server, agent_path, {"Authorization": f"Bearer {agent['mallory']}"}) == 0
    assert upload_lands_on_disk(server, user_path, {}) == 0
    # An abandoned upload leaves nothing behind.
    tmp = server.home / "blobs" / "tmp"
    deadline = time.monotonic() + 5
    while any(tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(tmp.iterdir()), sorted(tmp.iterdir())


def test_verbs_a_handler_lacks_are_never_answered(secured: Secured):
    server = secured.server
    failures = []
    for pattern, cls in registered_handlers():
        path = concrete_paths(pattern)[0]
        for verb in set(VERBS) - set(verbs_of(cls)):
            code, _, body = request(server, verb.upper(), path, body=b"{}" if verb != "get" else None)
            if code not in (401, 403, 405):
                failures.append(f"{verb.upper()} {path} ({cls.__name__}) without credentials: {code} {body[:200]!r}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- XSRF


class Browser:
    """Cookies in, cookies out, and nothing a browser would not send on its own (no Authorization header)."""

    def __init__(self, server: LaunchServer):
        self.server = server
        self.cookies: dict[str, str] = {}

    def send(self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
             ) -> tuple[int, bytes]:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        code, msg, data = request(self.server, method, path, headers=sent, body=body)
        for header in msg.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        return code, data


def test_cookie_sessions_need_the_xsrf_token(secured: Secured):
    server = secured.server
    browser = Browser(server)
    code, _ = browser.send("GET", "/login")
    assert code == 200 and "_xsrf" in browser.cookies
    xsrf = browser.cookies["_xsrf"]
    form = urlencode({"password": server.token, "_xsrf": xsrf}).encode()
    code, _ = browser.send("POST", "/login", body=form,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 302 and len(browser.cookies) > 1, (code, browser.cookies)  # logged in: a session cookie

    code, body = browser.send("GET", "/launch/api/queues")
    assert code == 200 and b"queues" in body  # the cookie alone authenticates a read

    json_headers = {"Content-Type": "application/json"}
    code, body = browser.send("POST", "/launch/api/artifacts/missing", body=b'{"digests": []}', headers=json_headers)
    assert code == 403 and b"xsrf" in body.lower(), body
    code, body = browser.send("POST", "/launch/api/artifacts/missing", body=b'{"digests": []}',
                              headers={**json_headers, "X-XSRFToken": "2|00000000|" + "0" * 32 + "|1700000000"})
    assert code == 403 and b"xsrf" in body.lower(), body
    code, body = browser.send("POST", "/launch/api/artifacts/missing", body=b'{"digests": []}',
                              headers={**json_headers, "X-XSRFToken": xsrf})
    assert code == 200 and json.loads(body) == {"missing": []}, body

    # Every state-changing user endpoint refuses the cookie without the token; agent endpoints ignore the cookie.
    failures, checked = [], 0
    for method, path, cls in endpoints():
        if is_socket(cls) or (method == "GET" and not is_agent(path)):
            continue
        code, body = browser.send(method, path, body=b"{}" if method != "GET" else None, headers=json_headers)
        checked += 1
        if code != (401 if is_agent(path) else 403):
            failures.append(f"{method} {path} ({cls.__name__}) with a session cookie and no _xsrf: {code} "
                            f"{body[:200]!r}")
    assert not failures, "\n".join(failures)
    record_figure("xsrf", cookie_requests_without_token=checked, refused=checked)


# ---------------------------------------------------------------- the secret canary


LOCAL_JOB = """\
import hashlib, os, sys
import jupyter_launch
value = os.environ["MYSECRET"]
digest = hashlib.sha256(value.encode()).hexdigest()
print("secret length", len(value), "sha256", digest, flush=True)
print("a line on stderr", file=sys.stderr, flush=True)
jupyter_launch.log({"secret_length": len(value)}, step=1)
jupyter_launch.progress(1, 1, "checked the secret")
(jupyter_launch.output_dir() / "result.txt").write_text(digest)
"""

DOCKER_JOB = """\
import hashlib, os, pathlib, sys
value = os.environ["MYSECRET"]
digest = hashlib.sha256(value.encode()).hexdigest()
print("secret length", len(value), "sha256", digest, flush=True)
(pathlib.Path(os.environ["JUPYTER_LAUNCH_OUTPUT_DIR"]) / "result.txt").write_text(digest)
sys.exit(3)  # fail, so keep_on_failure leaves the container to inspect
"""


class Scan:
    """Counts the places searched for the canary and where it was found."""

    def __init__(self, canary: str):
        # The random part alone: a leak that mangled the prefix, quoting or case of the rest still shows.
        self.needle = canary.removeprefix("canary-")
        self.places: list[str] = []
        self.hits: list[str] = []

    def text(self, place: str, data: bytes | str) -> None:
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        self.places.append(place)
        at = raw.lower().find(self.needle.encode())
        if at >= 0:
            self.hits.append(f"{place}: ...{raw[max(0, at - 80):at + 80]!r}...")
            return
        if raw[:2] == b"\x1f\x8b":
            self.text(f"{place} (gunzipped)", gzip.decompress(raw))

    def tar_members(self, place: str, data: bytes) -> None:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    self.text(f"{place}:{member.name}", tar.extractfile(member).read())

    def files(self, root: Path) -> None:
        for path in sorted(root.rglob("*")):
            if stat.S_ISREG(path.lstat().st_mode):
                self.text(f"file {path.relative_to(root)}", path.read_bytes())

    def sqlite(self, db: Path) -> None:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            assert "jobs" in tables, tables
            for table in tables:
                cells = []
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    cells += [v if isinstance(v, bytes) else str(v).encode() for v in row]
                self.text(f"table {table}", b"\0".join(cells))
        conn.close()


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jupyter_launch.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def wait_done(server: LaunchServer, job_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, job = server.api("GET", f"jobs/{job_id}")
        assert code == 200, job
        if job["done"]:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}:\n{server.log_tail()}"
        time.sleep(0.1)


def submit(secured: Secured, tmp_path: Path, name: str, code: str, queue: str, *extra: str) -> tuple[str, str]:
    """``jupyter launch submit --secret MYSECRET --follow`` from a shell that has the secret too; (job id, output)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "job.yaml").write_text(yaml.safe_dump({"kind": "command", "name": name,
                                                     "command": ["python", "-c", code]}))
    proc = cli(secured.server.env, "submit", "--config", str(folder / "job.yaml"), "--queue", queue,
               "--secret", SECRET_NAME, "--follow", *extra)
    job_id = re.search(r"submitted job (\w+)", proc.stderr)
    assert job_id, f"submit exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return job_id.group(1), proc.stdout + proc.stderr


def test_a_secret_canary_appears_nowhere(secured: Secured, tmp_path: Path, docker_api: Any):
    from jupyter_launch.backends.base import JobContext
    from jupyter_launch.backends.docker.container import JOB_ID_LABEL
    from jupyter_launch.backends.kubernetes.bootstrap import pack_workdir
    from jupyter_launch.backends.kubernetes.config import KubernetesProvider
    from jupyter_launch.backends.kubernetes.manifests import build_manifests
    from jupyter_launch.spec import JobSpec

    server, canary = secured.server, secured.canary
    digest = hashlib.sha256(canary.encode()).hexdigest()
    api = docker_api
    code, queue = server.api("POST", "queues", {"queue_name": DOCKER_QUEUE, "provider": {
        "type": "docker", "build": {"base_image": DOCKER_IMAGE}, "keep_on_failure": True}})
    assert code == 201, queue

    local_id, local_out = submit(secured, tmp_path, "local-secret", LOCAL_JOB, "default")
    docker_id, docker_out = submit(secured, tmp_path, "docker-secret", DOCKER_JOB, DOCKER_QUEUE,
                                   "--image", DOCKER_IMAGE)
    local, docker_job = wait_done(server, local_id), wait_done(server, docker_id)
    assert (local["state"], local["exit_code"]) == ("succeeded", 0), (local, local_out)
    assert (docker_job["state"], docker_job["exit_code"]) == ("failed", 3), (docker_job, docker_out)
    # The secret reached both jobs: each printed its length and hash.
    for job_id in (local_id, docker_id):
        _, page = server.api("GET", f"jobs/{job_id}/logs")
        text = "".join(c["data"] for c in page["chunks"])
        assert f"secret length {len(canary)} sha256 {digest}" in text, text

    scan = Scan(canary)
    scan.text("cli submit (local job)", local_out)
    scan.text("cli submit (docker job)", docker_out)

    # Docker: the kept container's config, its image, its own log and its listing (labels).
    containers = api.containers(all=True, filters={"label": f"{JOB_ID_LABEL}={docker_id}"})
    assert len(containers) == 1, containers
    try:
        container = api.inspect_container(containers[0]["Id"])
        assert container["Config"]["Env"] and container["Config"]["Labels"][JOB_ID_LABEL] == docker_id
        scan.text("docker inspect container", json.dumps(container))
        scan.text("docker inspect image", json.dumps(api.inspect_image(container["Image"])))
        scan.text("docker logs", api.logs(containers[0]["Id"], stdout=True, stderr=True))
        scan.text("docker ps (labels)", json.dumps(containers))
    finally:
        api.remove_container(containers[0]["Id"], force=True)

    # Every API read of the jobs, as a user and as an agent.
    user = {"Authorization": f"token {server.token}"}
    agent = {"Authorization": f"Bearer {secured.agent_tokens['box']}"}
    reads = ["/launch/api/queues", "/launch/api/queues/default", f"/launch/api/queues/{DOCKER_QUEUE}",
             "/launch/api/jobs", "/launch/api/jobs?state=succeeded", "/launch/api/agents"]
    agent_reads = ["/launch/api/agent/queues/default", f"/launch/api/agent/queues/{DOCKER_QUEUE}"]
    refused_reads = []  # blobs of jobs no agent token claimed: an agent token reads only its claims' artifacts
    for job_id in (local_id, docker_id):
        base = f"/launch/api/jobs/{job_id}"
        reads += [base, f"{base}/logs", f"{base}/metrics", f"{base}/outputs", f"{base}/logs/events"]
        _, job = server.api("GET", f"jobs/{job_id}")
        reads.append(f"/launch/api/artifacts/blobs/{job['artifact']}")
        refused_reads.append(f"/launch/api/agent/blobs/{job['artifact']}")
        _, outputs = server.api("GET", f"jobs/{job_id}/outputs")
        assert [o["path"] for o in outputs["outputs"]] == ["result.txt"], outputs
        reads += [f"{base}/outputs/result.txt"]
        code, _, body = request(server, "GET", f"{base}/logs?encoding=base64", headers=user)
        assert code == 200
        scan.text(f"GET {base}/logs?encoding=base64 (decoded)",
                  b"".join(base64.b64decode(c["data"]) for c in json.loads(body)["chunks"]))
        code, frames = asyncio.run(open_log_socket(server, f"{base}/logs/ws", user))
        assert code == 101 and frames
        scan.text(f"WebSocket {base}/logs/ws", b"\n".join(frames))
    _, metrics = server.api("GET", f"jobs/{local_id}/metrics")
    assert metrics["metrics"][0]["data"] == {"secret_length": len(canary)}
    for path, headers, want in ([(p, user, 200) for p in reads] + [(p, agent, 200) for p in agent_reads]
                                + [(p, agent, 404) for p in refused_reads]):
        code, msg, body = request(server, "GET", path, headers=headers)
        assert code == want, (path, code, body[:300])
        scan.text(f"GET {path}", str(msg).encode() + body)

    # The CLI's own views of the same jobs.
    for args in (["jobs", "--json"], ["show", "--json", local_id], ["show", "--json", docker_id],
                 ["logs", local_id], ["logs", docker_id], ["metrics", local_id], ["outputs", local_id]):
        proc = cli(server.env, *args)
        assert proc.returncode == 0, (args, proc.stderr)
        scan.text(f"cli {' '.join(args[:2])}", proc.stdout + proc.stderr)

    # Kubernetes: the manifests for this job's kept folder, with the secret (no cluster needed).
    workdir = server.home / "work" / f"{local_id}-1"
    assert (workdir / ".jupyter-launch" / "job.json").exists(), sorted(server.home.rglob("*"))
    ctx = JobContext(job_id=local_id, attempt=1, fence=1, queue="k8s", spec=JobSpec.model_validate(local["spec"]),
                     queue_config=KubernetesProvider(type="kubernetes", namespace="default"), workdir=workdir, output_dir=workdir / "out",
                     env={"JUPYTER_LAUNCH_JOB_ID": local_id}, secrets={SECRET_NAME: canary},
                     artifact=local["artifact"], agent_id="agent-1")
    manifests = build_manifests(ctx, DOCKER_IMAGE, pack_workdir(workdir))
    assert set(manifests) == {"job", "configmap", "secret"}
    assert manifests["secret"]["stringData"] == {SECRET_NAME: canary}  # the one place it belongs
    scan.text("k8s Secret (without stringData)",
              json.dumps({k: v for k, v in manifests["secret"].items() if k != "stringData"}))
    scan.text("k8s Job", json.dumps(manifests["job"]))
    scan.text("k8s ConfigMap", json.dumps(manifests["configmap"]))
    (packed,) = manifests["configmap"]["binaryData"].values()
    scan.tar_members("k8s ConfigMap artifact", base64.b64decode(packed))

    # At rest: every table of the store, and every file the server, agent and CLI wrote (blobs, the database and
    # its WAL, the kept job folders, the server's debug log).
    scan.sqlite(server.home / "launch.db")
    scan.files(server.base)
    scanned_files = [p for p in scan.places if p.startswith("file ")]
    for must in ("file server.log", "file launch-home/launch.db", f"file launch-home/work/{local_id}-1/"
                 ".jupyter-launch/job.json"):
        assert any(p.startswith(must) for p in scanned_files), (must, scanned_files)
    assert any(p.startswith("file launch-home/blobs/") for p in scanned_files)

    assert scan.hits == [], "the secret leaked:\n" + "\n".join(scan.hits)
    record_figure("secret canary", places_scanned=len(scan.places), hits=len(scan.hits), files=len(scanned_files),
                  tables=sum(p.startswith("table ") for p in scan.places),
                  api_responses=sum(p.startswith(("GET ", "WebSocket ")) for p in scan.places))

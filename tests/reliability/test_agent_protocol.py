"""The agent protocol under attack, end to end on a real `jupyter server` process: what an agent token may say, and
about which jobs, blobs and agents.

Each test sends the requests an outside probe sent (raw JSON with NaN, Infinity and 2**70; writes after a claim
ended; output paths with `..`; another queue's digests; another token's agent id; a long poll whose client went
away) and checks both the answer and that nothing changed on the server. Two queues, ``qa`` and ``qb``, have no
agent: only the tests claim their jobs, with agent tokens scoped to one queue each. ``default`` is served by the
server's own in-process agent.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from launch_server import LaunchServer

from jupyter_launch.artifact import build_artifact
from jupyter_launch.store import BlobStore

from .conftest import record_figure

QUEUES = ("qa", "qb", "qc")
COMMAND = {"kind": "command", "command": ["true"]}


@dataclass
class Probe:
    """The server, and agent tokens by the queue they are scoped to."""

    server: LaunchServer
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probe]:
    server = LaunchServer(tmp_path_factory.mktemp("protocol"), agent_queues=["default"])
    server.start()
    try:
        tokens = {}
        for queue in QUEUES:
            code, body = server.api("POST", "queues", {"queue_name": queue, "provider": {"type": "local"}})
            assert code == 201, body
            code, body = server.api("POST", "tokens", {"name": f"box-{queue}", "queues": [queue]})
            assert code == 201, body
            tokens[queue] = body["token"]
        yield Probe(server, tokens)
    finally:
        server.stop()


def call(server: LaunchServer, token: str, method: str, path: str, body: Any = None, *,
         raw: bytes | None = None) -> tuple[int, Any]:
    """``(status, JSON or bytes)`` of an agent route, the body sent as Python's json writes it (NaN and Infinity
    included, as a probe would send them)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Authorization": f"Bearer {token}"}
    if raw is None and body is not None:
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, f"/launch/api/{path}", body=data, headers=headers)
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(payload) if payload else None
    except ValueError:
        return response.status, payload


def submit(server: LaunchServer, queue: str, **spec: Any) -> str:
    code, job = server.api("POST", "jobs", {"queue": queue, "spec": {**COMMAND, **spec}})
    assert code == 201, job
    return job["id"]


def claim(probe: Probe, queue: str, agent_id: str | None = None, **extra: Any) -> tuple[str, int]:
    """Claim the next job of ``queue`` with its token: (job id, fence)."""
    code, body = call(probe.server, probe.tokens[queue], "POST", "agent/claim",
                      {"agent_id": agent_id or f"probe-{secrets.token_hex(3)}", "queues": [queue], **extra})
    assert code == 200, body
    return body["job"]["id"], body["fence"]


def job_of(server: LaunchServer, job_id: str) -> dict[str, Any]:
    code, job = server.api("GET", f"jobs/{job_id}")
    assert code == 200, job
    return job


def upload(probe: Probe, queue: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    code, body = call(probe.server, probe.tokens[queue], "PUT", f"agent/blobs/{digest}", raw=data)
    assert code == 201, body
    return digest


def submit_artifact(probe: Probe, tmp_path: Path, queue: str, files: dict[str, bytes]) -> tuple[str, str, list[str]]:
    """A job with an artifact of ``files``, uploaded and submitted as a user does: (job id, manifest, file digests)."""
    folder = tmp_path / f"art-{secrets.token_hex(3)}"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    blobs = BlobStore(tmp_path / "client-blobs")
    artifact = build_artifact(folder, blobs)
    digests = [entry["digest"] for entry in artifact.manifest["files"].values()]
    server = probe.server
    for digest in [artifact.digest, *digests]:
        req = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        req.request("PUT", f"/launch/api/artifacts/blobs/{digest}", body=blobs.read_bytes(digest),
                    headers={"Authorization": f"token {server.token}"})
        assert req.getresponse().status == 201
        req.close()
    code, job = server.api("POST", "jobs", {"queue": queue, "spec": COMMAND, "artifact": artifact.digest})
    assert code == 201, job
    return job["id"], artifact.digest, digests


# ---------------------------------------------------------------- numbers


BAD_NUMBERS = [float("nan"), float("inf"), float("-inf"), 2**70, -(2**70), "30", True, [1]]


def test_agent_numbers_must_be_finite_and_bounded(probe: Probe):
    """Every number an agent sends is refused with 400 naming its field when it is NaN, infinite, past 2**53, of
    the wrong type or out of range, and nothing changes: a NaN lease used to store a NULL lease (the job stayed
    claimed for good), a NaN wait held a long poll past max_claim_wait, an attempt of 2**70 answered 500."""
    server = probe.server
    queued = submit(server, "qa")
    tried = refused = 0

    def refuses(path: str, body: dict[str, Any], field: str) -> None:
        nonlocal tried, refused
        tried += 1
        code, answer = call(server, probe.tokens["qa"], "POST", path, body)
        assert code == 400 and f"'{field}'" in answer["message"], (path, body, code, answer)
        refused += 1

    for bad in BAD_NUMBERS + [-1, 0.0]:
        refuses("agent/claim", {"agent_id": "p", "queues": ["qa"], "lease_seconds": bad}, "lease_seconds")
    for bad in BAD_NUMBERS + [-1]:
        refuses("agent/claim", {"agent_id": "p", "queues": ["qa"], "wait": bad}, "wait")
        refuses("agent/claim", {"agent_id": "p", "queues": ["qa"], "free_gpus": bad}, "free_gpus")
    assert job_of(server, queued)["state"] == "queued"  # no claim was taken by a refused call

    job_id, fence = claim(probe, "qa")
    assert job_id == queued
    lease = job_of(server, job_id)["lease_expires"]
    for bad in BAD_NUMBERS + [-1, 0.0]:
        refuses(f"agent/jobs/{job_id}/heartbeat", {"fence": fence, "lease_seconds": bad}, "lease_seconds")
    for bad in BAD_NUMBERS + [-1, 1.5]:
        for action in ("heartbeat", "state", "progress", "finish", "logs", "metrics", "outputs"):
            refuses(f"agent/jobs/{job_id}/{action}", {"fence": bad, "state": "running", "progress": {},
                                                      "pieces": [], "records": [], "outputs": []}, "fence")
    for bad in BAD_NUMBERS + [2**32, 1.5]:
        refuses(f"agent/jobs/{job_id}/finish", {"fence": fence, "state": "failed", "exit_code": bad}, "exit_code")
    for field, bad in [("step", 2**70), ("step", float("nan")), ("step", "1"), ("time", float("inf")),
                       ("time", -1), ("time", 2**70)]:
        refuses(f"agent/jobs/{job_id}/metrics", {"fence": fence, "records": [{field: bad, "data": {}}]}, field)
    # Not numbers, but the same route's other fields: a fact named like an argument answered 500.
    for field, body in [("facts", {"facts": {"state": "x"}}), ("facts", {"facts": {"n": [1]}}),
                        ("reason", {"reason": "r" * 65}), ("message", {"message": 7})]:
        refuses(f"agent/jobs/{job_id}/state", {"fence": fence, "state": "running", **body}, field)
    blob = upload(probe, "qa", b"four")
    for bad in BAD_NUMBERS + [-1, 5]:
        refuses(f"agent/jobs/{job_id}/outputs", {"fence": fence, "outputs": [
            {"path": "out.txt", "digest": blob, "size": bad}]}, "size")
    job = job_of(server, job_id)
    assert (job["state"], job["lease_expires"], job["exit_code"]) == ("claimed", lease, None)
    assert server.api("GET", f"jobs/{job_id}/metrics")[1]["metrics"] == []
    assert server.api("GET", f"jobs/{job_id}/outputs")[1]["outputs"] == []

    # The user routes' query numbers: 400 naming the parameter, never 500 from the database's integers.
    for path, name in [(f"jobs?before={2**70}", "before"), (f"jobs?before={10**400}", "before"),
                       ("jobs?limit=nan", "limit"), (f"jobs/{job_id}/logs?offset={2**63}", "offset"),
                       (f"jobs/{job_id}/logs?limit=-1", "limit"), (f"jobs/{job_id}/metrics?after={2**64}", "after")]:
        tried += 1
        code, answer = server.api("GET", path)
        assert code == 400 and answer["message"].startswith(name), (path, code, answer)
        refused += 1
    record_figure("agent_numbers", tried=tried, refused_400_naming_the_field=refused)


def test_a_nan_wait_is_held_no_longer_than_max_claim_wait(probe: Probe):
    """A long poll lasts at most ``wait`` (bounded by ``max_claim_wait``): a NaN wait is refused at once."""
    started = time.monotonic()
    code, answer = call(probe.server, probe.tokens["qc"], "POST", "agent/claim",
                        {"agent_id": "p", "queues": ["qc"], "wait": float("nan")})
    assert code == 400 and "'wait'" in answer["message"]
    code, _ = call(probe.server, probe.tokens["qc"], "POST", "agent/claim",
                   {"agent_id": "p", "queues": ["qc"], "wait": 0.5})
    assert code == 204
    record_figure("nan_wait", refused_after_s=round(time.monotonic() - started, 2))


def test_progress_must_be_an_object_and_show_survives_one_that_is_not(probe: Probe, tmp_path: Path):
    server = probe.server
    submit(server, "qa")
    job_id, fence = claim(probe, "qa")
    for bad in ([1, 2], "half", 7, None):
        code, answer = call(server, probe.tokens["qa"], "POST", f"agent/jobs/{job_id}/progress",
                            {"fence": fence, "progress": bad})
        assert code == 400 and "'progress'" in answer["message"], (bad, code, answer)
    assert job_of(server, job_id)["progress"] is None
    # A store written before the check may hold any JSON there: `show` prints the job all the same.
    db = sqlite3.connect(server.home / "launch.db")
    with db:
        db.execute("UPDATE jobs SET progress = ? WHERE id = ?", ('["not", "an", "object"]', job_id))
    db.close()
    proc = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", "show", job_id], env=server.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and f"job        {job_id}" in proc.stdout, proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- fenced writes


def test_logs_metrics_and_outputs_after_finish_or_a_lost_lease_are_refused(probe: Probe):
    """Every write of a claimed job carries the claim's fence; once the job has finished, or its lease lapsed and
    the job was requeued, the old claim's logs, metrics and outputs are refused (409 stale_claim) and nothing is
    stored. They used to carry no fence at all and were stored after `finish`."""
    server, token = probe.server, probe.tokens["qa"]
    blob = upload(probe, "qa", b"late output")
    finished = submit(server, "qa")
    job_id, fence = claim(probe, "qa")
    assert job_id == finished
    code, _ = call(server, token, "POST", f"agent/jobs/{job_id}/logs",
                   {"fence": fence, "pieces": [["stdout", base64.b64encode(b"in time\n").decode()]]})
    assert code == 200
    code, body = call(server, token, "POST", f"agent/jobs/{job_id}/finish",
                      {"fence": fence, "state": "succeeded", "exit_code": 0})
    assert code == 200 and body["ok"]

    lapsed = submit(server, "qa", retries=1)
    lost_id, lost_fence = claim(probe, "qa", lease_seconds=0.3)
    assert lost_id == lapsed
    deadline = time.monotonic() + 30
    while job_of(server, lost_id)["state"] != "queued":  # the server reaps the lapsed lease
        assert time.monotonic() < deadline
        time.sleep(0.1)

    refusals = 0
    for target, stale in ((job_id, fence), (lost_id, lost_fence)):
        writes = {
            "logs": {"pieces": [["stdout", base64.b64encode(b"too late\n").decode()]]},
            "metrics": {"records": [{"step": 1, "data": {"loss": 0.1}}]},
            "outputs": {"outputs": [{"path": "late.txt", "digest": blob, "size": 11}]},
        }
        for action, body in writes.items():
            code, answer = call(server, token, "POST", f"agent/jobs/{target}/{action}", {"fence": stale, **body})
            assert code == 409 and answer["reason"] == "stale_claim", (target, action, code, answer)
            assert "no longer current" in answer["message"]
            refusals += 1
        for action, body in writes.items():  # without a fence at all
            code, answer = call(server, token, "POST", f"agent/jobs/{target}/{action}", body)
            assert code == 400 and "'fence'" in answer["message"], (action, code, answer)
    assert job_of(server, job_id)["log_size"] == len(b"in time\n")
    assert job_of(server, lost_id)["log_size"] == 0
    for target in (job_id, lost_id):
        assert server.api("GET", f"jobs/{target}/metrics")[1]["metrics"] == []
        assert server.api("GET", f"jobs/{target}/outputs")[1]["outputs"] == []
    record_figure("stale_writes", refused_409=refusals)


def test_a_claim_answers_only_to_the_token_that_made_it(probe: Probe):
    """The fence is no secret (the queue's job statuses and the user routes show it): another token of the same
    queue, or a token for every queue against the server's own agent, presenting the current fence may not report on
    a claim it did not make (403), and the claim is untouched; its own token still reports."""
    server = probe.server
    code, other = server.api("POST", "tokens", {"name": "second-box-qa", "queues": ["qa"]})
    assert code == 201, other
    code, every = server.api("POST", "tokens", {"name": "every-queue", "queues": ["*"]})
    assert code == 201, every
    submit(server, "qa")
    job_id, fence = claim(probe, "qa")
    code, local = server.api("POST", "jobs", {"queue": "default", "spec": {
        "kind": "command", "command": ["python", "-c", "import time; time.sleep(60)"]}})
    assert code == 201, local
    deadline = time.monotonic() + 60
    while (job := job_of(server, local["id"]))["state"] != "running":  # the server's own agent runs it
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    refused = 0
    for target, token, queue in ((job_id, other["token"], "qa"), (local["id"], every["token"], "default")):
        code, statuses = call(server, token, "POST", f"agent/queues/{queue}/jobs", {"job_ids": [target]})
        current = statuses["jobs"][target]["fence"]
        for action, body in (("finish", {"state": "failed", "exit_code": 1}), ("heartbeat", {}),
                             ("state", {"state": "running", "reason": "hijacked"}), ("progress", {"progress": {}}),
                             ("logs", {"pieces": [["stdout", base64.b64encode(b"forged\n").decode()]]})):
            code, answer = call(server, token, "POST", f"agent/jobs/{target}/{action}", {"fence": current, **body})
            assert code == 403 and "claimed by another agent" in answer["message"], (target, action, code, answer)
            refused += 1
    assert (job_of(server, job_id)["state"], job_of(server, job_id)["log_size"]) == ("claimed", 0)
    assert job_of(server, local["id"])["state"] == "running" and job_of(server, local["id"])["reason"] == "running"
    server.api("POST", f"jobs/{local['id']}/cancel")
    code, body = call(server, probe.tokens["qa"], "POST", f"agent/jobs/{job_id}/finish",
                      {"fence": fence, "state": "succeeded", "exit_code": 0})
    assert code == 200 and body["ok"]
    record_figure("claim_token", refused_403=refused)


# ---------------------------------------------------------------- outputs


def test_output_paths_sizes_and_digests_are_checked(probe: Probe, tmp_path: Path):
    """Output paths follow the artifact's rules (no `..`, absolute, control characters, overlong); a size must be
    the blob's own; a digest must be one this token uploaded or its queue owns, not another queue's content."""
    server, token = probe.server, probe.tokens["qa"]
    _, b_manifest, b_files = submit_artifact(probe, tmp_path, "qb", {"secret-b.txt": b"queue b's data"})
    submit(server, "qa")
    job_id, fence = claim(probe, "qa")
    mine = upload(probe, "qa", b"twelve bytes")
    tried = 0
    for path in ["../escape.txt", "/etc/passwd", "a/../../b", "line\nbreak.txt", "nul\x00.txt", "tab\there",
                 "\x1b]0;title\x07.txt", "x" * 1025, "", "a//b"]:
        code, answer = call(server, token, "POST", f"agent/jobs/{job_id}/outputs",
                            {"fence": fence, "outputs": [{"path": path, "digest": mine, "size": 12}]})
        assert code == 400 and "output path" in answer["message"], (path, code, answer)
        tried += 1
    code, answer = call(server, token, "POST", f"agent/jobs/{job_id}/outputs",
                        {"fence": fence, "outputs": [{"path": "model.bin", "digest": mine, "size": 10**12}]})
    assert code == 400 and "its blob holds 12 bytes" in answer["message"], answer
    for digest in (b_manifest, *b_files, "sha256:" + "0" * 64):
        code, answer = call(server, token, "POST", f"agent/jobs/{job_id}/outputs",
                            {"fence": fence, "outputs": [{"path": "stolen.txt", "digest": digest, "size": 1}]})
        assert code == 409 and "upload these output blobs first" in answer["message"], (digest, code, answer)
        tried += 1
    assert server.api("GET", f"jobs/{job_id}/outputs")[1]["outputs"] == []
    code, _ = call(server, token, "POST", f"agent/jobs/{job_id}/outputs",
                   {"fence": fence, "outputs": [{"path": "dir/model.bin", "digest": mine, "size": 12}]})
    assert code == 200
    assert server.api("GET", f"jobs/{job_id}/outputs")[1]["outputs"][0]["path"] == "dir/model.bin"
    record_figure("output_checks", refused=tried + 1)


# ---------------------------------------------------------------- blobs


def test_blob_reads_are_scoped_to_the_tokens_queues(probe: Probe, tmp_path: Path):
    """A token for queue qa cannot read queue qb's artifact manifest or files by digest, and `missing` calls them
    missing (as it does content that is not there at all); qb's token reads them; an upload proves possession."""
    server = probe.server
    b_data = {"weights-b.bin": secrets.token_bytes(64), "notes-b.txt": b"queue b only"}
    _, b_manifest, b_files = submit_artifact(probe, tmp_path, "qb", b_data)
    _, a_manifest, a_files = submit_artifact(probe, tmp_path, "qa", {"a.txt": b"queue a"})
    a_token, b_token = probe.tokens["qa"], probe.tokens["qb"]
    for digest in (b_manifest, *b_files):
        code, body = call(server, a_token, "GET", f"agent/blobs/{digest}")
        assert code == 404 and "is not on the server" in body["message"], (digest, code, body)
        code, body = call(server, b_token, "GET", f"agent/blobs/{digest}")
        assert code == 200, (digest, code, body)
    for digest in (a_manifest, *a_files):
        assert call(server, a_token, "GET", f"agent/blobs/{digest}")[0] == 200
    absent = "sha256:" + "e" * 64
    code, body = call(server, a_token, "POST", "agent/blobs/missing", {"digests": [b_manifest, *b_files, absent,
                                                                                  a_manifest]})
    assert code == 200 and body["missing"] == [b_manifest, *b_files, absent]
    code, body = call(server, b_token, "POST", "agent/blobs/missing", {"digests": [b_manifest, *b_files, absent]})
    assert code == 200 and body["missing"] == [absent]
    # Holding the content is proof enough: qa's token uploads one of the files and may read it from then on.
    uploaded = upload(probe, "qa", b_data["notes-b.txt"])
    assert uploaded in b_files and call(server, a_token, "GET", f"agent/blobs/{uploaded}") == (200, b"queue b only")
    record_figure("blob_scope", digests_refused=1 + len(b_files), missing_answers=len(b_files) + 1)


# ---------------------------------------------------------------- agent ids


def test_agent_ids_are_bound_to_the_token_that_registered_them(probe: Probe):
    """Another token cannot replace, refresh, remove or claim as an agent id it did not register, nor the server's
    own agent's (which an agent token could unregister, so that the CLI said no agent served `default`)."""
    server, a_token, b_token = probe.server, probe.tokens["qa"], probe.tokens["qb"]
    code, agents = server.api("GET", "agents")
    own = next(a["id"] for a in agents["agents"] if "default" in a["queues"])
    code, _ = call(server, a_token, "POST", "agent/register", {"agent_id": "agent-of-a", "queues": ["qa"]})
    assert code == 200
    refusals = 0
    for agent_id, queue, token in (("agent-of-a", "qb", b_token), (own, "qa", a_token)):
        for action, body in (("register", {"queues": [queue]}), ("seen", {}), ("unregister", {})):
            code, answer = call(server, token, "POST", f"agent/{action}", {"agent_id": agent_id, **body})
            assert code == 403 and "is registered by" in answer["message"], (agent_id, action, code, answer)
            refusals += 1
        code, answer = call(server, token, "POST", "agent/claim", {"agent_id": agent_id, "queues": [queue]})
        assert code == 403 and "is registered by" in answer["message"], (agent_id, code, answer)
        refusals += 1
    agents = {a["id"]: a for a in server.api("GET", "agents")[1]["agents"]}
    assert agents["agent-of-a"]["queues"] == ["qa"] and agents[own]["queues"] == ["default"]
    assert server.api("GET", "queues/default")[1]["agents"] == [own]
    # Its own token refreshes and removes it.
    assert call(server, a_token, "POST", "agent/seen", {"agent_id": "agent-of-a"})[0] == 200
    assert call(server, a_token, "POST", "agent/unregister", {"agent_id": "agent-of-a"})[0] == 200
    record_figure("agent_ids", refused_403=refusals)


# ---------------------------------------------------------------- claims for a live connection


def test_a_claim_is_not_taken_for_a_connection_that_went_away(probe: Probe):
    """An agent's long poll whose connection closed takes no job: a job submitted just after the close stays
    queued as attempt 1 for a live agent (it used to be claimed for nobody and end `failed lost`)."""
    server, token = probe.server, probe.tokens["qc"]
    body = json.dumps({"agent_id": "gone", "queues": ["qc"], "wait": 20}).encode()
    rounds = 5
    kept = 0
    for _ in range(rounds):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"POST /launch/api/agent/claim HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     + f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.5)  # the long poll is waiting
        sock.close()
        time.sleep(0.3)  # the server has seen the connection close
        job_id = submit(server, "qc")
        time.sleep(2.5)  # past the poll's next wake-up
        job = job_of(server, job_id)
        assert (job["state"], job["agent_id"], job["attempt"]) == ("queued", None, 1), job
        kept += 1
        taken, _ = claim(probe, "qc")  # a live agent gets it at once
        assert taken == job_id
    record_figure("claim_for_gone_connection", rounds=rounds, stayed_queued=kept)


# ---------------------------------------------------------------- a real remote agent whose claim is taken away


def test_a_remote_agent_whose_claim_is_taken_stops_writing_at_once_and_quietly(probe: Probe, tmp_path: Path):
    """A remote agent (`jupyter launch agent --server`) streaming a job's log: once the claim's fence moves on (as
    when the server hands the job to another attempt), not one more log byte is stored, the agent stops that job
    without a traceback, reports nothing for it, and keeps serving its queue. Without fenced log writes the old
    claim's lines kept landing until its next heartbeat (a quarter of the lease)."""
    server = probe.server
    queue = "qs"
    code, body = server.api("POST", "queues", {"queue_name": queue, "provider": {"type": "local"}})
    assert code == 201, body
    code, body = server.api("POST", "tokens", {"name": "box-qs", "queues": [queue]})
    assert code == 201, body
    env = dict(server.env, JUPYTER_LAUNCH_TOKEN=body["token"], JUPYTER_LAUNCH_HOME=str(tmp_path / "agent-home"))
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen([sys.executable, "-m", "jupyter_launch.cli", "agent", "--server", server.url,
                                  "--queue", queue], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        code, job = server.api("POST", "jobs", {"queue": queue, "spec": {"kind": "command", "command": [
            "python", "-c", "import time\nfor i in range(2000):\n    print('line', i, flush=True)\n    time.sleep(0.02)"]}})
        assert code == 201, job
        deadline = time.monotonic() + 60
        while (now := job_of(server, job["id"]))["log_size"] < 200:
            assert time.monotonic() < deadline and not now["done"], (now, log.read_text())
            time.sleep(0.1)
        db = sqlite3.connect(server.home / "launch.db", timeout=30)
        with db:  # another attempt takes the job over
            db.execute("UPDATE jobs SET fence = fence + 1 WHERE id = ?", (job["id"],))
        db.close()
        at_takeover = job_of(server, job["id"])["log_size"]
        time.sleep(3)
        after = job_of(server, job["id"])
        assert after["log_size"] == at_takeover, (at_takeover, after["log_size"])
        assert not after["done"]  # the old claim reported no end for a job that is no longer its own
        code, quick = server.api("POST", "jobs", {"queue": queue, "spec": {"kind": "command",
                                                                           "command": ["python", "-c", "print(1)"]}})
        deadline = time.monotonic() + 60
        while not (done := job_of(server, quick["id"]))["done"]:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert done["state"] == "succeeded", done
        assert agent.poll() is None
        text = log.read_text()
        assert "Traceback" not in text and "ERROR" not in text, text
        record_figure("remote_agent_stale_claim", log_bytes_before_takeover=at_takeover, log_bytes_after=0)
    finally:
        agent.terminate()
        agent.wait(timeout=30)


def test_an_uploaded_blob_can_be_named_as_an_output_the_moment_its_upload_is_answered(probe: Probe):
    """The upload's grant is recorded before the 201, so an agent naming its output right after uploading it is
    never told to upload it first (it was: the grant came after the answer, a race a remote agent lost in CI)."""
    queue = QUEUES[0]
    headers = {"Authorization": f"Bearer {probe.tokens[queue]}"}
    submit(probe.server, queue)
    job_id, fence = claim(probe, queue)
    refused = []
    for i in range(40):
        data = f"output {i} {secrets.token_hex(8)}".encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        put, post = (http.client.HTTPConnection("127.0.0.1", probe.server.port, timeout=60) for _ in range(2))
        try:
            post.connect()  # ready before the upload is answered, so the report follows it at once
            put.request("PUT", f"/launch/api/agent/blobs/{digest}", body=data, headers=headers)
            assert put.getresponse().status == 201
            body = json.dumps({"fence": fence, "outputs": [{"path": f"out-{i}.txt", "digest": digest,
                                                            "size": len(data)}]}).encode()
            post.request("POST", f"/launch/api/agent/jobs/{job_id}/outputs", body=body,
                         headers={**headers, "Content-Type": "application/json"})
            response = post.getresponse()
            if response.status != 200:
                refused.append((i, response.status, response.read()[:200]))
        finally:
            put.close()
            post.close()
    assert refused == [], refused

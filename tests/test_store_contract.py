"""The ``Store`` contract: the same tests against ``SQLStore`` (SQLite in tmp) and ``HttpStore`` (a real `jupyter
server` with the extension, shared by the module, with a user token and an agent token).

Every test works in queues of its own, so the shared server's other rows never matter.
"""

from __future__ import annotations

import hashlib
import inspect
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from launch_server import LaunchServer

from jupyter_launch.remote.http import RemoteAuthError
from jupyter_launch.remote.store import HttpBlobs, HttpStore
from jupyter_launch.spec import JobSpec, QueueConfig
from jupyter_launch.store import (
    CANCELLED, CLAIMED, QUEUED, RUNNING, SUCCEEDED, BlobStore, NotFound, OutputRecord, SQLStore, StaleClaim,
    StoreError,
)
from jupyter_launch.store.protocol import Store


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchServer]:
    """One server for the module, with no in-process agent: only the tests claim jobs."""
    launch = LaunchServer(tmp_path_factory.mktemp("contract"), agent_queues=[])
    launch.start()
    try:
        yield launch
    finally:
        launch.stop()


@pytest.fixture(params=["sql", "http"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sql":
        s: Any = SQLStore(f"sqlite:///{tmp_path / 'launch.db'}")
        s.ensure_default_queue()
    else:
        server = request.getfixturevalue("server")
        admin = HttpStore(server.url, user_token=server.token)
        agent_token, _ = admin.create_agent_token("contract", ["*"])
        admin.close()
        s = HttpStore(server.url, user_token=server.token, agent_token=agent_token, claim_wait=0)
    yield s
    s.close()


@pytest.fixture
def output_blob(store: Any, tmp_path: Path) -> Any:
    """Stores a blob where the store's outputs may name it (a server refuses outputs whose blobs it lacks)."""
    def put(data: bytes) -> str:
        if isinstance(store, HttpStore):
            return HttpBlobs(store.agent_http, BlobStore(tmp_path / "agent-cache")).put_bytes(data)
        return "sha256:" + hashlib.sha256(data).hexdigest()

    return put


def spec(**kw: Any) -> JobSpec:
    return JobSpec(kind="command", command=["true"], **kw)


def new_queue(store: Any, **provider: Any) -> str:
    name = f"c-{secrets.token_hex(4)}"
    store.create_queue(QueueConfig(queue_name=name, provider={"type": "local", **provider}))
    return name


def agent_id() -> str:
    return f"agent-{secrets.token_hex(4)}"


def wait_for(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


def test_both_stores_implement_every_operation_of_the_protocol():
    operations = [name for name in dir(Store) if not name.startswith("_")]
    assert len(operations) >= 30  # the walk found the protocol's operations
    for cls in (SQLStore, HttpStore):
        for name in operations:
            assert hasattr(cls, name), f"{cls.__name__} lacks {name}"
            want = inspect.signature(getattr(Store, name)).parameters
            have = inspect.signature(getattr(cls, name)).parameters
            assert list(have)[:len(want)] == list(want), f"{cls.__name__}.{name}{tuple(have)} != {tuple(want)}"
            for p in want.values():
                assert (have[p.name].kind, have[p.name].default) == (p.kind, p.default), f"{cls.__name__}.{name}"
            extra = [p for n, p in have.items() if n not in want and p.kind is not p.VAR_KEYWORD]
            assert all(p.default is not p.empty for p in extra), f"{cls.__name__}.{name} needs more than the protocol"


# ------------------------------------------------------------------ queues

def test_queues_create_get_list_replace_delete(store):
    store.ensure_default_queue()
    assert store.get_queue("default").name == "default"
    name = new_queue(store, max_instances=2)
    record = store.get_queue(name)
    assert (record.name, record.provider, record.max_instances, record.counts) == (name, "local", 2, {})
    assert name in [q.name for q in store.list_queues()]
    with pytest.raises(StoreError, match="already exists"):
        store.create_queue(QueueConfig(queue_name=name))
    store.create_queue(QueueConfig(queue_name=name, provider={"type": "local", "max_instances": 5}), replace=True)
    assert store.get_queue(name).max_instances == 5
    store.delete_queue(name)
    with pytest.raises(NotFound, match=f"unknown queue '{name}'"):
        store.get_queue(name)
    with pytest.raises(NotFound):
        store.delete_queue(name)


def test_a_busy_queue_is_deleted_only_with_force_and_its_jobs_are_cancelled(store):
    name = new_queue(store)
    job = store.enqueue(name, spec(), artifact=None)
    with pytest.raises(StoreError, match="--force"):
        store.delete_queue(name)
    store.delete_queue(name, force=True)
    assert store.get_job(job.id).state == CANCELLED


# ------------------------------------------------------------------ jobs

def test_enqueue_get_and_list_newest_first_with_paging(store):
    name = new_queue(store)
    ids = [store.enqueue(name, spec(name=f"j{i}"), artifact=None).id for i in range(3)]
    job = store.get_job(ids[0])
    assert (job.state, job.queue, job.kind, job.name, job.attempt, job.fence) == (QUEUED, name, "command", "j0", 1, 0)
    assert job.reason == "no_agent_for_queue" and f"--queue {name}" in job.message
    listed = store.list_jobs(queue=name)
    assert [j.id for j in listed] == ids[::-1]
    page = store.list_jobs(queue=name, limit=2)
    assert [j.id for j in page] == ids[:0:-1]
    assert [j.id for j in store.list_jobs(queue=name, before=page[-1].seq)] == ids[:1]
    assert store.list_jobs(queue=name, state="running,succeeded") == []
    with pytest.raises(NotFound, match="unknown job"):
        store.get_job("0000000000000000")


def test_list_jobs_filters_by_owner_in_the_query(store):
    # Through a server the owner is the identity that submits, as its identity provider names it (jupyter_server's
    # token login names a new anonymous user per request), so the test reads the owners back.
    name = new_queue(store)
    ids = [store.enqueue(name, spec(), artifact=None, owner="someone").id for _ in range(3)]
    owners = {job_id: store.get_job(job_id).owner for job_id in ids}
    assert all(owners.values())
    for owner in set(owners.values()):
        theirs = [job_id for job_id in ids[::-1] if owners[job_id] == owner]
        assert [j.id for j in store.list_jobs(queue=name, owner=owner, limit=2)] == theirs[:2]
        assert store.list_jobs(queue=name, owner=owner + "-else") == []


def test_list_jobs_filters_by_state_type_name_and_time_and_sorts_in_the_query(store):
    name = new_queue(store)
    jobs = []
    for job_name, job_type in (("Train ResNet", "gpu"), ("eval", "cpu"), ("train_small", "gpu"), ("50% done", None)):
        jobs.append(store.enqueue(name, spec(name=job_name, job_type=job_type), artifact=None))
        time.sleep(0.01)  # distinct submission times
    resnet, evaluation, small, half = jobs
    store.request_cancel(evaluation.id)

    def ids(**filters: Any) -> list[str]:
        return [j.id for j in store.list_jobs(queue=name, **filters)]

    assert ids(state="cancelled") == [evaluation.id]
    assert ids(state="queued", job_type="gpu") == [small.id, resnet.id]
    assert ids(q="TRAIN") == [small.id, resnet.id]  # any case
    assert ids(q="_") == [small.id] and ids(q="%") == [half.id]  # LIKE's wildcards are plain text
    # The start of an id: all but its last digit (ids made in one second share their first 8, and 10 of the four
    # here matched two in about one run of a hundred).
    assert ids(q=resnet.id[:-1]) == [resnet.id]
    assert ids(submitted_after=evaluation.submitted_at, submitted_before=half.submitted_at) == [small.id, evaluation.id]
    assert ids(sort="name") == [half.id, resnet.id, evaluation.id, small.id]  # "50% done" < "Train" < "eval"
    assert ids(sort="-name", limit=2, offset=1) == [evaluation.id, resnet.id]
    assert ids(sort="state")[0] == evaluation.id and ids(sort="submitted") == [j.id for j in jobs]
    assert ids(sort="-finished")[0] == evaluation.id  # the only one finished; the rest after it, newest first
    for field, bad in (("state", {"state": "done"}), ("sort", {"sort": "-colour"}), ("q", {"q": "x" * 201}),
                       ("submitted_after", {"submitted_after": float("nan")}), ("offset", {"offset": -1})):
        with pytest.raises(ValueError, match=field):
            store.list_jobs(queue=name, **bad)


def test_an_archived_job_is_listed_only_when_asked_for(store):
    name = new_queue(store)
    old, live = (store.enqueue(name, spec(), artifact=None) for _ in range(2))
    with pytest.raises(StoreError, match="cancel it first"):
        store.archive_job(live.id)
    store.request_cancel(old.id)
    archived = store.archive_job(old.id)
    assert archived.archived_at is not None and archived.state == CANCELLED
    assert [j.id for j in store.list_jobs(queue=name)] == [live.id]
    assert [j.id for j in store.list_jobs(queue=name, archived=True)] == [old.id]
    assert [j.id for j in store.list_jobs(queue=name, archived=None)] == [live.id, old.id]
    assert store.archive_job(old.id, False).archived_at is None
    assert [j.id for j in store.list_jobs(queue=name)] == [live.id, old.id]


def test_deleting_an_ended_job_removes_its_rows_and_names_the_output_blobs_no_one_else_holds(store, output_blob):
    job, fence = claimed(store)
    other, other_fence = claimed(store)
    mine, shared = output_blob(b"only mine " + secrets.token_bytes(8)), output_blob(b"shared " + secrets.token_bytes(8))
    store.append_logs(job.id, fence, [("stdout", b"hello\n")])
    store.add_metrics(job.id, fence, [{"step": 1, "time": 1.0, "data": {"loss": 1.0}}])
    store.add_outputs(job.id, fence, [OutputRecord("model.bin", mine, 18), OutputRecord("common.txt", shared, 15)])
    store.add_outputs(other.id, other_fence, [OutputRecord("common.txt", shared, 15)])
    with pytest.raises(StoreError, match="cancel it first"):
        store.delete_job(job.id)
    assert store.finish(job.id, fence, SUCCEEDED, exit_code=0)
    assert store.delete_job(job.id) == [mine]
    with pytest.raises(NotFound):
        store.get_job(job.id)
    assert store.list_jobs(queue=job.queue) == []
    if isinstance(store, SQLStore):  # the server answers 404 for the log and metrics of a job it does not have
        assert store.read_metrics(job.id) == [] and store.read_log(job.id)[0] == []
    assert store.list_outputs(other.id) == [OutputRecord("common.txt", shared, 15)]
    with pytest.raises(NotFound):
        store.delete_job(job.id)


def test_enqueue_refuses_an_unknown_queue_and_a_job_type_the_queue_does_not_take(store):
    with pytest.raises(NotFound, match="unknown queue"):
        store.enqueue(f"nope-{secrets.token_hex(3)}", spec(), artifact=None)
    name = f"c-{secrets.token_hex(4)}"
    store.create_queue(QueueConfig(queue_name=name, job_types=["gpu"]))
    with pytest.raises(StoreError, match="accepts job types"):
        store.enqueue(name, spec(job_type="cpu"), artifact=None)


def test_claims_are_fifo_leased_fenced_and_capped_by_max_instances(store):
    name = new_queue(store, max_instances=1)
    first, second = (store.enqueue(name, spec(), artifact=None) for _ in range(2))
    me = agent_id()
    store.register_agent(me, [name], [], host="box")
    claim = store.claim_next_job(me, [name], lease_seconds=30)
    assert claim is not None and claim.job.id == first.id and claim.fence == 1
    assert (claim.job.state, claim.job.agent_id) == (CLAIMED, me)
    job = store.get_job(first.id)
    assert (job.state, job.agent_id, job.fence) == (CLAIMED, me, 1) and job.lease_expires > time.time() + 20
    assert store.claim_next_job(me, [name]) is None  # max_instances 1: the second waits
    assert store.get_job(second.id).reason == "waiting_for_capacity"
    assert store.get_queue(name).counts == {QUEUED: 1, CLAIMED: 1}


def test_an_agent_serving_as_a_user_claims_only_their_jobs_on_a_private_queue_and_anyones_on_a_shared_one(store):
    private, shared, docker = (f"c-{secrets.token_hex(4)}" for _ in range(3))
    store.create_queue(QueueConfig(queue_name=private))  # local: private unless marked shared
    store.create_queue(QueueConfig(queue_name=shared, shared=True))
    store.create_queue(QueueConfig(queue_name=docker, provider={"type": "docker"}))  # shared unless marked private
    assert [store.get_queue(q).shared for q in (private, shared, docker)] == [False, True, True]
    assert store.get_queue(private).to_dict()["shared"] is False
    # A server records the user its token acts as, whatever owner is given; an embedded store records the one given.
    mine = store.enqueue(private, spec(), artifact=None, owner="alice")
    theirs = store.enqueue(shared, spec(), artifact=None, owner="alice")
    me, other = mine.owner, f"not-{mine.owner}"
    assert me and theirs.owner == me
    assert store.claim_next_job(agent_id(), [private], owner=other) is None
    assert store.claim_next_job(agent_id(), [private, shared], owner=other).job.id == theirs.id
    assert store.claim_next_job(agent_id(), [private], owner=me).job.id == mine.id
    again = store.enqueue(private, spec(), artifact=None, owner="alice")
    assert store.claim_next_job(agent_id(), [private]).job.id == again.id  # serving as no user: the team's agent


def test_heartbeat_renews_the_lease_and_reports_a_cancel_request(store):
    name = new_queue(store)
    job = store.enqueue(name, spec(), artifact=None)
    claim = store.claim_next_job(agent_id(), [name], lease_seconds=30)
    beat = store.heartbeat(job.id, claim.fence, lease_seconds=60)
    assert (beat.ok, beat.cancel_requested) == (True, False)
    assert store.get_job(job.id).lease_expires > time.time() + 50
    assert store.heartbeat(job.id, claim.fence + 1).ok is False  # a stale fence
    cancelled = store.request_cancel(job.id)
    assert cancelled.state == CLAIMED and cancelled.cancel_requested
    beat = store.heartbeat(job.id, claim.fence)
    assert (beat.ok, beat.cancel_requested) == (True, True)


def test_set_state_and_progress_need_the_current_fence(store):
    name = new_queue(store)
    job = store.enqueue(name, spec(), artifact=None)
    me = agent_id()
    claim = store.claim_next_job(me, [name])
    assert store.set_state(job.id, claim.fence, "starting", "preparing") is True
    assert store.get_job(job.id).reason == "preparing"
    assert store.set_state(job.id, claim.fence, RUNNING, "running", None, agent_id=me) is True
    job = store.get_job(job.id)
    assert (job.state, job.message) == (RUNNING, f"running on agent {me}") and job.started_at is not None
    assert store.set_state(job.id, claim.fence + 1, "starting", "preparing") is False
    assert store.set_progress(job.id, claim.fence, {"current": 2, "total": 5}) is True
    assert store.set_progress(job.id, claim.fence + 1, {"current": 9, "total": 5}) is False
    assert store.get_job(job.id).progress == {"current": 2, "total": 5}


def test_finish_with_a_stale_fence_is_refused_and_changes_nothing(store):
    name = new_queue(store)
    job = store.enqueue(name, spec(), artifact=None)
    claim = store.claim_next_job(agent_id(), [name])
    assert store.finish(job.id, claim.fence - 1, "failed", exit_code=1, reason="exit_code") is False
    assert store.get_job(job.id).state == CLAIMED
    assert store.finish(job.id, claim.fence, SUCCEEDED, exit_code=0, reason="completed") is True
    job = store.get_job(job.id)
    assert (job.state, job.exit_code, job.reason, job.message) == (SUCCEEDED, 0, "completed",
                                                                   "finished with exit code 0")
    assert job.finished_at is not None and job.done and job.lease_expires is None
    assert store.finish(job.id, claim.fence, "failed", exit_code=1) is False  # already final


def test_an_expired_lease_is_requeued_as_a_new_attempt_and_the_old_fence_is_stale(store):
    name = new_queue(store)
    job = store.enqueue(name, spec(retries=1), artifact=None)
    me = agent_id()
    store.register_agent(me, [name], [], host="box")
    claim = store.claim_next_job(me, [name], lease_seconds=0.3)
    time.sleep(0.5)
    # The SQL store requeues when asked; a server does it itself every reap_interval.
    store.requeue_expired()
    requeued = wait_for(lambda: (j := store.get_job(job.id)).state == QUEUED and j)
    assert (requeued.attempt, requeued.reason, requeued.agent_id) == (2, "requeued", None)
    assert store.finish(job.id, claim.fence, SUCCEEDED, exit_code=0) is False
    again = store.claim_next_job(me, [name])
    assert again.job.id == job.id and again.fence == claim.fence + 1 and again.job.attempt == 2


def test_a_job_handed_back_is_queued_again_without_an_attempt_counted_and_the_old_fence_is_stale(store):
    name = new_queue(store)
    job = store.enqueue(name, spec(retries=0), artifact=None)
    claim = store.claim_next_job(agent_id(), [name])
    assert store.hand_back(job.id, claim.fence - 1) is False
    assert store.hand_back(job.id, claim.fence) is True
    back = store.get_job(job.id)
    assert (back.state, back.attempt, back.agent_id, back.lease_expires) == (QUEUED, 1, None, None)
    assert store.finish(job.id, claim.fence, SUCCEEDED, exit_code=0) is False
    assert store.hand_back(job.id, claim.fence) is False
    again = store.claim_next_job(agent_id(), [name])
    assert again.job.id == job.id and again.job.attempt == 1 and again.fence > claim.fence
    store.request_cancel(job.id)  # a cancel asked for while it ran: handing it back ends it cancelled
    assert store.hand_back(job.id, again.fence) is True
    assert store.get_job(job.id).state == CANCELLED


def test_cancel_a_queued_job_at_once(store):
    name = new_queue(store)
    job = store.enqueue(name, spec(), artifact=None)
    cancelled = store.request_cancel(job.id)
    assert (cancelled.state, cancelled.reason) == (CANCELLED, "cancelled") and cancelled.finished_at is not None
    assert store.claim_next_job(agent_id(), [name]) is None
    with pytest.raises(NotFound):
        store.request_cancel("0000000000000000")


def test_rerun_queues_the_same_spec_and_artifact_again(store):
    name = new_queue(store)
    old = store.enqueue(name, spec(name="again", env={"A": "1"}), artifact=None)
    new = store.rerun(old.id)
    assert new.id != old.id and new.rerun_of == old.id and new.state == QUEUED
    assert (new.queue, new.name, new.spec, new.artifact) == (name, "again", old.spec, old.artifact)
    with pytest.raises(NotFound):
        store.rerun("0000000000000000")


# ------------------------------------------------------------------ priorities

def test_claims_take_the_highest_priority_first_and_are_fifo_within_one(store):
    name = new_queue(store)
    order = [0, 5, 0, -1, 5, 2]
    jobs = [store.enqueue(name, spec(priority=p), artifact=None) for p in order]
    assert [j.priority for j in jobs] == order
    me = agent_id()
    store.register_agent(me, [name], [], host="box")
    taken = [store.claim_next_job(me, [name]).job.id for _ in order]
    want = [jobs[i].id for i in (1, 4, 5, 0, 2, 3)]  # 5, 5 (FIFO), 2, 0, 0 (FIFO), -1
    assert taken == want
    assert store.claim_next_job(me, [name]) is None


def test_a_queued_job_says_how_many_jobs_are_ahead_of_it_and_how_many_at_a_higher_priority(store):
    name = new_queue(store, max_instances=1)
    me = agent_id()
    store.register_agent(me, [name], [], host="box")
    low = store.enqueue(name, spec(), artifact=None)
    older = store.enqueue(name, spec(), artifact=None)
    urgent = [store.enqueue(name, spec(priority=9), artifact=None) for _ in range(3)]
    waiting = store.get_job(older.id)
    assert waiting.reason == "waiting_in_line"
    assert "behind 4 job(s)" in waiting.message and "(3 of them at a higher priority)" in waiting.message
    assert store.get_job(low.id).reason == "waiting_in_line" and "behind 3 job(s)" in store.get_job(low.id).message
    assert store.get_job(urgent[0].id).reason == "waiting_for_agent"
    listed = {j.id: j for j in store.list_jobs(queue=name)}  # a listing says it too (the panel shows these)
    assert listed[older.id].message == waiting.message
    store.claim_next_job(me, [name])  # urgent[0] runs: the queue is at max_instances
    capped = store.get_job(older.id)
    assert capped.reason == "waiting_for_capacity" and "3 job(s) ahead of it (2 at a higher priority)" in capped.message


def test_move_to_front_puts_a_queued_job_first_and_only_a_queued_one(store):
    name = new_queue(store)
    first = store.enqueue(name, spec(priority=3), artifact=None)
    rest = [store.enqueue(name, spec(), artifact=None) for _ in range(3)]
    moved = store.move_to_front(rest[-1].id)
    assert (moved.state, moved.priority) == (QUEUED, 4)
    assert store.move_to_front(rest[-1].id).priority == 4  # already first: unchanged
    me = agent_id()
    store.register_agent(me, [name], [], host="box")
    assert store.get_job(rest[-1].id).reason == "waiting_for_agent"
    assert [store.claim_next_job(me, [name]).job.id for _ in range(4)] == [rest[-1].id, first.id, rest[0].id,
                                                                          rest[1].id]
    with pytest.raises(StoreError, match="only a queued job can be moved"):
        store.move_to_front(first.id)
    with pytest.raises(NotFound, match="unknown job"):
        store.move_to_front("0000000000000000")


# ------------------------------------------------------------------ sweeps

def test_a_sweep_queues_one_child_per_run_and_claims_at_most_max_parallel_of_them(store):
    name = new_queue(store)
    runs = [{"lr": 0.1}, {"lr": 0.01}, {"lr": 0.001}]
    sweep = store.create_sweep(name, spec(name="train", parameters={"epochs": 3}), artifact=None, runs=runs,
                               config={"method": "grid", "parameters": {"lr": {"values": [0.1, 0.01, 0.001]}}},
                               max_parallel=2)
    assert (sweep.runs, sweep.max_parallel, sweep.fail_fast, sweep.name) == (3, 2, False, "train")
    assert store.get_sweep(sweep.id) == sweep
    children = store.list_jobs(parent_id=sweep.id)[::-1]
    assert [(j.name, j.spec["parameters"], j.parent_id) for j in children] == [
        (f"train-{i}", {"epochs": 3, **run}, sweep.id) for i, run in enumerate(runs, 1)]
    me = agent_id()
    store.register_agent(me, [name], [], host="box")
    first, second = (store.claim_next_job(me, [name]) for _ in range(2))
    assert [first.job.id, second.job.id] == [children[0].id, children[1].id]
    assert store.claim_next_job(me, [name]) is None  # two of its jobs run: the third waits
    waiting = store.get_job(children[2].id)
    assert waiting.reason == "sweep_at_max_parallel" and "at most 2 of its jobs at once" in waiting.message
    assert store.finish(first.job.id, first.fence, SUCCEEDED)
    assert store.claim_next_job(me, [name]).job.id == children[2].id
    with pytest.raises(NotFound, match="unknown sweep"):
        store.get_sweep("0000000000000000")


def test_a_failed_child_of_a_fail_fast_sweep_cancels_the_rest_and_of_another_sweep_does_not(store):
    name = new_queue(store)
    me = agent_id()
    store.register_agent(me, [name], [], host="box")
    outcomes = {}
    for fail_fast in (True, False):
        sweep = store.create_sweep(name, spec(), artifact=None, runs=[{"x": i} for i in range(4)], config={},
                                   fail_fast=fail_fast)
        running = [store.claim_next_job(me, [name]) for _ in range(2)]
        assert store.finish(running[0].job.id, running[0].fence, "failed", exit_code=1)
        children = store.list_jobs(parent_id=sweep.id)[::-1]
        outcomes[fail_fast] = [(j.state, j.reason, j.cancel_requested) for j in children]
        for claim in running[1:]:
            store.finish(claim.job.id, claim.fence, SUCCEEDED)
        for j in children[2:]:
            if j.state == QUEUED:
                store.request_cancel(j.id)
    assert outcomes[True][0][:2] == ("failed", None) and outcomes[True][1][2] is True  # the running one: asked to stop
    assert [o[:2] for o in outcomes[True][2:]] == [(CANCELLED, "sweep_failed_fast")] * 2
    assert [o[0] for o in outcomes[False]] == ["failed", CLAIMED, QUEUED, QUEUED] and not outcomes[False][1][2]


@pytest.mark.parametrize("runs, field", [([], "runs"), (["lr"], "runs: run 1 must be an object"),
                                         ([{"not a name": 1}], "runs: run 1: parameters"),
                                         ([{"x": 1}] * 1001, "runs")])
def test_a_sweep_with_bad_runs_is_refused_naming_the_field_and_queues_nothing(store, runs, field):
    name = new_queue(store)
    with pytest.raises(ValueError) as err:
        store.create_sweep(name, spec(), artifact=None, runs=runs, config={})
    assert field in str(err.value) and "\n" not in str(err.value)
    assert store.list_jobs(queue=name) == []


# ------------------------------------------------------------------ schedules

def test_schedules_create_get_list_pause_resume_delete(store):
    name = new_queue(store)
    before = time.time()
    created = store.create_schedule(name, spec(name="job"), cron="30 6 * * mon-fri", tz="Europe/Berlin",
                                    artifact=None, name=f"nightly-{name}")
    assert (created.queue, created.cron, created.tz, created.paused, created.name) == (
        name, "30 6 * * mon-fri", "Europe/Berlin", False, f"nightly-{name}")
    from datetime import datetime
    from zoneinfo import ZoneInfo

    there = datetime.fromtimestamp(created.next_run_at, ZoneInfo("Europe/Berlin"))
    assert (there.hour, there.minute, there.isoweekday() <= 5) == (6, 30, True)
    assert before < created.next_run_at < before + 4 * 86400
    assert store.get_schedule(created.id) == created
    assert created.id in [s.id for s in store.list_schedules()]
    paused = store.pause_schedule(created.id)
    assert (paused.paused, paused.next_run_at) == (True, None)
    resumed = store.pause_schedule(created.id, False)
    assert (resumed.paused, resumed.next_run_at) == (False, created.next_run_at)
    assert store.list_jobs(schedule_id=created.id) == []
    store.delete_schedule(created.id)
    with pytest.raises(NotFound, match="unknown schedule"):
        store.get_schedule(created.id)
    with pytest.raises(NotFound, match="unknown schedule"):
        store.delete_schedule(created.id)


@pytest.mark.parametrize("cron, tz, message", [
    ("0 6 * *", "UTC", "cron: '0 6 * *' has 4 field(s)"), ("0 24 * * *", "UTC", "cron: hour: 24 is out of range"),
    ("*/0 * * * *", "UTC", "cron: minute: the step '0'"), ("0 6 * * funday", "UTC", "cron: day of week:"),
    ("0 0 30 2 *", "UTC", "cron: '0 0 30 2 *' names no time"), ("0 6 * * *", "Mars/Olympus", "tz: 'Mars/Olympus'"),
])
def test_a_bad_cron_expression_or_time_zone_is_refused_naming_the_field(store, cron, tz, message):
    name = new_queue(store)
    with pytest.raises(ValueError) as err:
        store.create_schedule(name, spec(), cron=cron, tz=tz, artifact=None)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert store.list_schedules(owner="nobody-has-this-name") == []


def test_a_schedule_on_an_unknown_queue_is_refused(store):
    with pytest.raises(NotFound, match="unknown queue"):
        store.create_schedule(f"nope-{secrets.token_hex(3)}", spec(), cron="* * * * *", artifact=None)


# ------------------------------------------------------------------ logs, metrics, outputs

def claimed(store: Any, **kw: Any) -> Any:
    """A job of a new queue, claimed: (job, fence) for the writes an agent makes."""
    name = new_queue(store)
    job = store.enqueue(name, spec(**kw), artifact=None)
    return job, store.claim_next_job(agent_id(), [name]).fence


def test_logs_append_in_order_and_read_from_any_offset(store):
    job, fence = claimed(store)
    assert store.append_logs(job.id, fence, [("stdout", b"hello\n"), ("stderr", b"oops\n")]) == 11
    assert store.append_logs(job.id, fence, [("stdout", bytes(range(256)))]) == 267
    assert store.get_job(job.id).log_size == 267
    chunks, nxt = store.read_log(job.id)
    assert [(c.offset, c.stream, c.attempt) for c in chunks] == [(0, "stdout", 1), (6, "stderr", 1), (11, "stdout", 1)]
    assert b"".join(c.data for c in chunks) == b"hello\noops\n" + bytes(range(256)) and nxt == 267
    chunks, nxt = store.read_log(job.id, 8)  # the first chunk is trimmed to the offset
    assert (chunks[0].offset, chunks[0].data, nxt) == (8, b"ps\n", 267)
    chunks, nxt = store.read_log(job.id, 0, limit=6)
    assert b"".join(c.data for c in chunks) == b"hello\n" and nxt == 6
    assert store.read_log(job.id, 267) == ([], 267)


def test_logs_take_bytearrays_longer_than_a_chunk(store):
    """An agent's log sink hands the store the bytearrays it filled (not copies): a piece past the store's chunk size
    is split, and each chunk reads back as it was written."""
    job, fence = claimed(store)
    run = bytearray(bytes(range(256)) * 5000)  # 1.28 MB: several of the SQL store's 256 KiB chunks
    assert store.append_logs(job.id, fence, [("stdout", run), ("stderr", bytearray(b"err\n"))]) == len(run) + 4
    chunks, nxt = [], 0
    while page := store.read_log(job.id, nxt)[0]:
        chunks += page
        nxt = page[-1].offset + len(page[-1].data)
    assert b"".join(c.data for c in chunks) == bytes(run) + b"err\n"
    assert all(type(c.data) is bytes for c in chunks)
    assert [c.stream for c in chunks][-1] == "stderr" and {c.stream for c in chunks[:-1]} == {"stdout"}


def test_a_log_write_naming_the_size_it_follows_is_done_once_however_often_it_is_tried(store):
    """An agent tries a log write again when its answer never came (the store restarting): naming the size the
    pieces follow (``at``), the write already done answers the log's size and adds nothing; one at another size is
    refused, nothing written."""
    job, fence = claimed(store)
    assert store.append_logs(job.id, fence, [("stdout", b"one\n")], at=0) == 4
    assert store.append_logs(job.id, fence, [("stdout", b"two\n"), ("stderr", b"!\n")], at=4) == 10
    assert store.append_logs(job.id, fence, [("stdout", b"two\n"), ("stderr", b"!\n")], at=4) == 10  # again
    with pytest.raises(StoreError, match="its log is 10 bytes, not the 7 this write follows"):
        store.append_logs(job.id, fence, [("stdout", b"three\n")], at=7)
    assert store.append_logs(job.id, fence, [("stdout", b"three\n")], at=10) == 16
    chunks, _ = store.read_log(job.id)
    assert b"".join(c.data for c in chunks) == b"one\ntwo\n!\nthree\n"
    assert store.get_job(job.id).log_size == 16


def test_metrics_are_read_after_an_id(store):
    job, fence = claimed(store)
    store.add_metrics(job.id, fence, [{"step": 1, "time": 10.0, "data": {"loss": 0.5}},
                                      {"step": 2, "time": 11.0, "data": {"loss": 0.25}}])
    store.add_metrics(job.id, fence, [])
    metrics = store.read_metrics(job.id)
    assert [(m["step"], m["time"], m["data"]) for m in metrics] == [(1, 10.0, {"loss": 0.5}), (2, 11.0, {"loss": 0.25})]
    assert [m["step"] for m in store.read_metrics(job.id, metrics[0]["id"])] == [2]


def test_outputs_are_listed_by_path_and_replaced_by_path(store, output_blob):
    job, fence = claimed(store)
    a, b = output_blob(b"first"), output_blob(b"second version")
    store.add_outputs(job.id, fence, [OutputRecord("z/model.bin", a, 5), OutputRecord("report.html", a, 5)])
    store.add_outputs(job.id, fence, [OutputRecord("z/model.bin", b, 14)])
    assert store.list_outputs(job.id) == [OutputRecord("report.html", a, 5), OutputRecord("z/model.bin", b, 14)]


def test_logs_metrics_and_outputs_need_the_current_claim(store, output_blob):
    job, fence = claimed(store, retries=1)
    blob = output_blob(b"late")
    store.append_logs(job.id, fence, [("stdout", b"in time\n")])
    for write in (lambda f: store.append_logs(job.id, f, [("stdout", b"stale\n")]),
                  lambda f: store.add_metrics(job.id, f, [{"step": 1, "data": {"loss": 1.0}}]),
                  lambda f: store.add_outputs(job.id, f, [OutputRecord("late.txt", blob, 4)])):
        with pytest.raises(StaleClaim, match="no longer current"):
            write(fence + 1)  # a fence this claim never had
    assert store.finish(job.id, fence, SUCCEEDED, exit_code=0) is True
    for write in (lambda f: store.append_logs(job.id, f, [("stdout", b"after finish\n")]),
                  lambda f: store.add_metrics(job.id, f, [{"step": 2, "data": {"loss": 0.0}}]),
                  lambda f: store.add_outputs(job.id, f, [OutputRecord("late.txt", blob, 4)])):
        with pytest.raises(StaleClaim, match="the job is succeeded"):
            write(fence)
    assert store.set_progress(job.id, fence, {"value": 9}) is False
    job = store.get_job(job.id)
    assert (job.log_size, store.read_metrics(job.id), store.list_outputs(job.id)) == (8, [], [])


@pytest.mark.parametrize("path", ["../escape.txt", "/etc/passwd", "a/../../b", "a//b", "./a", "line\nbreak.txt",
                                  "nul\x00.txt", "esc\x1b[31m.txt", "x" * 1025, ""])
def test_outputs_with_unsafe_paths_are_refused(store, output_blob, path):
    job, fence = claimed(store)
    blob = output_blob(b"data")
    with pytest.raises(ValueError, match="output path"):
        store.add_outputs(job.id, fence, [OutputRecord(path, blob, 4)])
    assert store.list_outputs(job.id) == []


@pytest.mark.parametrize("lease", [float("nan"), float("inf"), -1.0, 0.0, 10.0**9])
def test_a_lease_must_be_finite_and_bounded(store, lease):
    name = new_queue(store)
    job = store.enqueue(name, spec(), artifact=None)
    with pytest.raises(ValueError, match="'lease_seconds' must be a number"):
        store.claim_next_job(agent_id(), [name], lease_seconds=lease)
    assert store.get_job(job.id).state == QUEUED
    fence = store.claim_next_job(agent_id(), [name]).fence
    with pytest.raises(ValueError, match="'lease_seconds' must be a number"):
        store.heartbeat(job.id, fence, lease_seconds=lease)
    assert store.get_job(job.id).lease_expires < time.time() + 60


@pytest.mark.parametrize("record, field", [({"step": 2**70}, "step"), ({"step": "one"}, "step"),
                                           ({"time": float("nan")}, "time"), ({"data": [1, 2]}, "data"),
                                           ({"data": {"loss": float("inf")}}, "data"), ("loss", "object")])
def test_metric_records_must_hold_bounded_numbers_and_an_object(store, record, field):
    job, fence = claimed(store)
    with pytest.raises(ValueError, match=field):
        store.add_metrics(job.id, fence, [record])
    assert store.read_metrics(job.id) == []


@pytest.mark.parametrize("progress", [[1, 2], "half", 3, {"value": float("nan")}, {"text": "x" * 70_000}])
def test_progress_must_be_a_bounded_json_object(store, progress):
    job, fence = claimed(store)
    with pytest.raises(ValueError, match="'progress'"):
        store.set_progress(job.id, fence, progress)
    assert store.get_job(job.id).progress is None


# ------------------------------------------------------------------ agents and tokens

def test_agents_register_are_seen_serve_queues_and_unregister(store):
    name = new_queue(store)
    me = agent_id()
    store.register_agent(me, [name], ["cpu"], host="box-1", info={"gpus": 2})
    agent = next(a for a in store.list_agents() if a["id"] == me)
    assert (agent["host"], agent["queues"], agent["job_types"], agent["info"]["gpus"]) == ("box-1", [name], ["cpu"], 2)
    before = agent["last_seen"]
    time.sleep(0.01)
    store.agent_seen(me)
    assert next(a for a in store.list_agents() if a["id"] == me)["last_seen"] > before
    assert store.get_queue(name).agents == [me]
    job = store.enqueue(name, spec(job_type="cpu"), artifact=None)
    assert store.get_job(job.id).reason == "waiting_for_agent"
    store.unregister_agent(me)
    assert me not in [a["id"] for a in store.list_agents()]
    assert store.get_queue(name).agents == []


def test_job_statuses_and_live_agent_ids_tell_a_reaping_agent_what_still_lives(store):
    name, other = new_queue(store), new_queue(store)
    me = agent_id()
    store.register_agent(me, [name], [], host="box")
    assert me in store.live_agent_ids(name) and me not in store.live_agent_ids(other)
    running, waiting = (store.enqueue(name, spec(), artifact=None) for _ in range(2))
    elsewhere = store.enqueue(other, spec(), artifact=None)
    claim = store.claim_next_job(me, [name])
    assert claim is not None and claim.job.id == running.id
    store.set_state(running.id, claim.fence, "running")
    statuses = store.job_statuses(name, [running.id, waiting.id, elsewhere.id, "no-such-job"])
    assert set(statuses) == {running.id, waiting.id}  # another queue's job and an unknown id are left out
    assert (statuses[running.id].state, statuses[running.id].fence) == ("running", claim.fence)
    assert statuses[waiting.id].state == QUEUED
    store.finish(running.id, claim.fence, "succeeded", exit_code=0)
    assert store.job_statuses(name, [running.id])[running.id].state == "succeeded"
    store.unregister_agent(me)
    assert me not in store.live_agent_ids(name)


def test_agent_tokens_create_verify_list_revoke(store):
    token, record = store.create_agent_token("box", ["gpu", "cpu"], created_by="admin")
    assert token.startswith(f"jla_{record.id}_") and (record.name, record.queues) == ("box", ["gpu", "cpu"])
    assert record.allows("gpu") and not record.allows("other") and not record.revoked
    verified = store.verify_agent_token(token)
    assert verified is not None and (verified.id, verified.queues) == (record.id, ["gpu", "cpu"])
    assert store.verify_agent_token(token + "x") is None and store.verify_agent_token("jla_nope_nope") is None
    assert record.id in [t.id for t in store.list_agent_tokens()]
    revoked = store.revoke_agent_token(record.id)
    assert revoked.id == record.id and revoked.revoked_at is not None
    assert store.verify_agent_token(token) is None
    assert record.id not in [t.id for t in store.list_agent_tokens()]
    assert record.id in [t.id for t in store.list_agent_tokens(include_revoked=True)]
    with pytest.raises(StoreError, match="already revoked"):
        store.revoke_agent_token(token)  # the whole token names it too
    with pytest.raises(NotFound, match="unknown agent token 'feedfacecafe'"):
        store.revoke_agent_token("feedfacecafe")
    with pytest.raises(StoreError, match="at least one queue"):
        store.create_agent_token("empty", [])


# ------------------------------------------------------------------ HttpStore's two credentials

def test_an_http_store_refuses_calls_it_has_no_credential_for_without_sending_them(server):
    admin = HttpStore(server.url, user_token=server.token)
    token, _ = admin.create_agent_token("agent-only", ["default"])
    agent_only = HttpStore(server.url, agent_token=token, claim_wait=0)
    agent_with_user_token = HttpStore(server.url, agent_token=server.token, claim_wait=0)
    user_with_agent_token = HttpStore(server.url, user_token=token)
    try:
        assert agent_only.get_queue("default").name == "default"  # through the agent route
        with pytest.raises(RemoteAuthError, match="no user token"):
            agent_only.list_jobs()
        with pytest.raises(RemoteAuthError, match="no agent token"):
            admin.claim_next_job("a", ["default"])
        # A user token is not an agent token, and the other way round.
        with pytest.raises(RemoteAuthError, match="refused the token"):
            agent_with_user_token.register_agent("a", ["default"], [], host="h")
        with pytest.raises(RemoteAuthError, match="refused the token"):
            user_with_agent_token.list_queues()
    finally:
        admin.revoke_agent_token(token)
        for s in (admin, agent_only, agent_with_user_token, user_with_agent_token):
            s.close()

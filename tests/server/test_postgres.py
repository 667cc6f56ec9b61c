"""The team store on a real PostgreSQL (ci/postgres.sh): the same SQLStore code, claims that never collide."""

from __future__ import annotations

import concurrent.futures
import secrets
import sys
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from jupyter_launch.spec import JobSpec, QueueConfig
from jupyter_launch.store import AgentIdTaken, SQLStore


@pytest.fixture
def pg_store(postgres_url: str):
    """A fresh schema per test, so tests never see each other's rows."""
    schema = f"t_{secrets.token_hex(4)}"
    admin = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as c:
        c.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    stores: list[SQLStore] = []

    def make() -> SQLStore:
        store = SQLStore(url)
        stores.append(store)
        return store

    yield make
    for s in stores:
        s.close()
    with admin.begin() as c:
        c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def test_two_servers_share_queues_and_never_claim_the_same_job(pg_store: Any):
    a, b = pg_store(), pg_store()  # two "servers", one database
    a.create_queue(QueueConfig(queue_name="team"))
    assert [q.name for q in b.list_queues()] == ["team"]
    spec = JobSpec(kind="command", command=[sys.executable, "-c", "1"])
    ids = {a.enqueue("team", spec, artifact=None).id for _ in range(60)}
    for i in range(4):
        b.register_agent(f"agent-{i}", ["team"], [], host="h")

    def drain(store: SQLStore, agent: str) -> list[str]:
        got = []
        while (claim := store.claim_next_job(agent, ["team"])) is not None:
            got.append(claim.job.id)
        return got

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: drain((a, b)[i % 2], f"agent-{i}"), range(8)))
    claimed = [j for r in results for j in r]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    assert a.count_jobs(state="claimed") == 60


def test_max_instances_holds_across_servers(pg_store: Any):
    a, b = pg_store(), pg_store()
    a.create_queue(QueueConfig.model_validate({"queue_name": "capped", "provider": {"type": "local", "max_instances": 3}}))
    spec = JobSpec(kind="command", command=[sys.executable, "-c", "1"])
    for _ in range(20):
        a.enqueue("capped", spec, artifact=None)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        claims = list(pool.map(lambda i: (a, b)[i % 2].claim_next_job(f"ag{i}", ["capped"]), range(10)))
    assert sum(c is not None for c in claims) == 3


def test_agent_tokens_and_logs_on_postgres(pg_store: Any):
    store = pg_store()
    token, rec = store.create_agent_token("pg-agent", ["default"])
    assert store.verify_agent_token(token).id == rec.id and store.verify_agent_token(token + "x") is None
    store.revoke_agent_token(rec.id)
    assert store.verify_agent_token(token) is None
    store.ensure_default_queue()
    job = store.enqueue("default", JobSpec(kind="command", command=["true"]), artifact=None)
    fence = store.claim_next_job("pg-agent", ["default"]).fence
    store.append_logs(job.id, fence, [("stdout", b"a" * 300_000), ("stderr", b"b")])
    chunks, nxt = store.read_log(job.id, 299_999)
    assert b"".join(c.data for c in chunks) == b"ab" and nxt == 300_001


def test_blob_grants_and_agent_bindings_on_postgres(pg_store: Any):
    a, b = pg_store(), pg_store()  # two servers granting the same blob: no unique-key error
    digest, other = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    a.grant_blobs([digest], "queue:default")
    b.grant_blobs([digest, other], "queue:default")
    a.grant_blobs([other], "token:tok1")
    assert a.granted_blobs([digest, other], ["queue:nope"], "tok1") == {other}
    assert a.granted_blobs([digest, other], None, "tok2") == {digest, other}
    assert a.granted_blobs([digest], ["queue:nope"], "tok2") == set()
    a.register_agent("box", ["default"], [], host="h", token_id="tok1")
    with pytest.raises(AgentIdTaken):
        b.unregister_agent("box", token_id="tok2")


def test_schedules_priorities_and_sweeps_on_postgres(pg_store: Any):
    """Two schedulers firing at once on two stores (two servers) queue each time once; the lease has one holder; a
    claim takes the highest priority first and keeps a sweep's max_parallel."""
    import threading

    from jupyter_launch.scheduler import LEASE_NAME

    a, b = pg_store(), pg_store()
    a.create_queue(QueueConfig(queue_name="pg"))
    spec = JobSpec(kind="command", command=[sys.executable, "-c", "pass"])
    schedules = [a.create_schedule("pg", spec, cron="* * * * *", artifact=None, name=f"s{i}") for i in range(20)]
    due = schedules[0].next_run_at
    barrier = threading.Barrier(2)
    fired: list[int] = []

    def fire(store: SQLStore) -> None:
        barrier.wait()
        jobs = store.fire_schedules([(s.id, due, due + 60, True) for s in schedules], now=due)
        fired.append(sum(job is not None for job in jobs))

    threads = [threading.Thread(target=fire, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(fired) == [0, 20]
    assert a.count_jobs(queue="pg") == 20
    takers = [a.take_lease(LEASE_NAME, "a", 10, now=due), b.take_lease(LEASE_NAME, "b", 10, now=due)]
    assert takers == [True, False]

    b.create_queue(QueueConfig(queue_name="pg2"))
    low = b.enqueue("pg2", spec, artifact=None)
    high = b.enqueue("pg2", JobSpec(kind="command", command=["true"], priority=3), artifact=None)
    sweep = b.create_sweep("pg2", spec, artifact=None, runs=[{"x": i} for i in range(3)], config={}, max_parallel=1)
    b.register_agent("pg-agent", ["pg2"], [], host="box")
    claimed = [a.claim_next_job("pg-agent", ["pg2"]).job for _ in range(3)]
    assert [j.id for j in claimed[:2]] == [high.id, low.id] and claimed[2].parent_id == sweep.id
    assert a.claim_next_job("pg-agent", ["pg2"]) is None  # the sweep's other two wait: max_parallel 1

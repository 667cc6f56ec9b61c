"""The store on SQLite: FIFO, max_instances, job-type routing, leases with fencing, requeue, logs with offsets; WAL
mode and the schema under alembic."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import jupyter_launch.store.sql as sql
from jupyter_launch.spec import JobSpec, QueueConfig
from jupyter_launch.store import ACTIVE, AgentIdTaken, NotFound, SQLStore, StaleClaim, StoreError
from jupyter_launch.store.schema import metadata


@pytest.fixture
def store(tmp_path):
    s = SQLStore(f"sqlite:///{tmp_path / 'launch.db'}")
    s.ensure_default_queue()
    yield s
    s.close()


def spec(**kw):
    return JobSpec(command=["true"], **kw)


def make_queue(store, name="q", **provider):
    return store.create_queue(QueueConfig(queue_name=name, provider={"type": "local", **provider}))


def test_default_queue_exists_from_the_first_run(store):
    assert [q.name for q in store.list_queues()] == ["default"]


def test_unknown_queue_is_refused_and_nothing_is_written(store):
    with pytest.raises(NotFound, match="unknown queue 'nope'"):
        store.enqueue("nope", spec(), artifact=None)
    assert store.count_jobs() == 0


def test_fifo_per_queue(store):
    make_queue(store)
    ids = [store.enqueue("q", spec(), artifact=None).id for _ in range(5)]
    got = [store.claim_next_job("a", ["q"]).job.id for _ in range(5)]
    assert got == ids
    assert store.claim_next_job("a", ["q"]) is None


def test_max_instances_caps_running_jobs(store):
    make_queue(store, max_instances=2)
    for _ in range(4):
        store.enqueue("q", spec(), artifact=None)
    c1 = store.claim_next_job("a", ["q"])
    c2 = store.claim_next_job("b", ["q"])
    assert c1 and c2
    assert store.claim_next_job("c", ["q"]) is None
    store.register_agent("c", ["q"], [], host="h")
    waiting = store.list_jobs(queue="q", state="queued")[0]
    assert waiting.reason == "waiting_for_capacity" and "max_instances (2)" in waiting.message
    store.finish(c1.job.id, c1.fence, "succeeded", exit_code=0)
    assert store.claim_next_job("c", ["q"]) is not None


def test_job_type_routing(store):
    make_queue(store)
    train = store.enqueue("q", spec(job_type="train-model"), artifact=None)
    infer = store.enqueue("q", spec(job_type="inference"), artifact=None)
    anything = store.enqueue("q", spec(), artifact=None)
    assert store.claim_next_job("a", ["q"], ["inference"]).job.id == infer.id
    store.register_agent("a", ["q"], ["inference"], host="h")
    assert store.get_job(train.id).reason == "no_agent_for_job_type"
    assert store.claim_next_job("b", ["q"]).job.id == train.id  # no filter takes any
    assert store.claim_next_job("b", ["q"]).job.id == anything.id


def test_queue_job_types_refuse_other_types_at_submit(store):
    store.create_queue(QueueConfig(queue_name="t", job_types=["train-model"]))
    with pytest.raises(StoreError, match="accepts job types"):
        store.enqueue("t", spec(job_type="other"), artifact=None)


def test_waiting_reasons(store):
    make_queue(store)
    j1 = store.enqueue("q", spec(), artifact=None)
    j2 = store.enqueue("q", spec(), artifact=None)
    assert store.get_job(j1.id).reason == "no_agent_for_queue"
    assert "jupyter launch agent --queue q" in store.get_job(j1.id).message
    store.register_agent("a", ["q"], [], host="h")
    assert store.get_job(j1.id).reason == "waiting_for_agent"
    assert store.get_job(j2.id).reason == "waiting_in_line"
    gpu = store.enqueue("q", spec(resources={"gpu": 1}), artifact=None)
    assert store.get_job(gpu.id).reason == "insufficient_gpus"
    assert "--gpus 0" in store.get_job(gpu.id).message


def test_gpu_jobs_only_go_to_agents_with_free_gpus(store):
    make_queue(store)
    gpu = store.enqueue("q", spec(resources={"gpu": 2}), artifact=None)
    cpu = store.enqueue("q", spec(), artifact=None)
    assert store.claim_next_job("a", ["q"], free_gpus=1).job.id == cpu.id
    assert store.claim_next_job("a", ["q"], free_gpus=2).job.id == gpu.id


def test_stale_fence_cannot_report(store):
    make_queue(store)
    job = store.enqueue("q", spec(retries=1), artifact=None)
    old = store.claim_next_job("a", ["q"], lease_seconds=0.05)
    store.register_agent("b", ["q"], [], host="h")
    time.sleep(0.1)
    assert store.requeue_expired() == [(job.id, "queued")]
    rec = store.get_job(job.id)
    assert rec.state == "queued" and rec.attempt == 2 and rec.reason == "requeued"
    new = store.claim_next_job("b", ["q"])
    assert new.fence == old.fence + 1
    assert store.heartbeat(job.id, old.fence).ok is False
    assert store.finish(job.id, old.fence, "failed") is False
    assert store.set_state(job.id, old.fence, "running") is False
    assert store.finish(job.id, new.fence, "succeeded", exit_code=0) is True
    assert store.get_job(job.id).state == "succeeded"


def test_a_claim_handed_back_is_queued_as_the_same_attempt_and_its_fence_is_dead(store):
    make_queue(store)
    job = store.enqueue("q", spec(), artifact=None)  # retries 0: a charged attempt would fail it as lost
    lost = store.claim_next_job("gone", ["q"])
    assert store.hand_back(job.id, lost.fence) is True
    rec = store.get_job(job.id)
    assert (rec.state, rec.attempt, rec.agent_id, rec.fence, rec.lease_expires) == ("queued", 1, None, 2, None)
    assert store.hand_back(job.id, lost.fence) is False
    with pytest.raises(StaleClaim):
        store.append_logs(job.id, lost.fence, [("stdout", b"from nobody\n")])
    again = store.claim_next_job("live", ["q"])
    assert (again.job.id, again.job.attempt, again.fence) == (job.id, 1, 3)
    store.set_state(job.id, again.fence, "running")
    # A stopping agent hands back a job it started too: queued again as the same attempt.
    assert store.hand_back(job.id, again.fence) is True
    rec = store.get_job(job.id)
    assert (rec.state, rec.attempt, rec.fence) == ("queued", 1, 4)
    store.finish(job.id, again.fence, "succeeded", exit_code=0)
    assert store.get_job(job.id).state == "queued"  # the stopped claim reports nothing more


def test_a_claim_records_the_agent_token_that_made_it(store):
    make_queue(store)
    remote, local = (store.enqueue("q", spec(), artifact=None) for _ in range(2))
    assert store.claim_next_job("box", ["q"], token_id="tokA").job.claim_token == "tokA"
    assert store.get_job(remote.id).claim_token == "tokA"
    assert store.claim_next_job("here", ["q"]).job.claim_token == "@local"  # an agent on the store itself
    assert store.get_job(local.id).claim_token == "@local"


def test_an_agent_id_is_bound_to_the_token_that_registered_it(store):
    store.register_agent("box", ["q"], [], host="h", token_id="tokA")
    store.register_agent("box", ["q", "r"], [], host="h", token_id="tokA")  # its own token may register it again
    for token in ("tokB", None):
        with pytest.raises(AgentIdTaken, match="registered by agent token tokA"):
            store.register_agent("box", ["q"], [], host="h", token_id=token)
        with pytest.raises(AgentIdTaken):
            store.agent_seen("box", token_id=token)
        with pytest.raises(AgentIdTaken):
            store.unregister_agent("box", token_id=token)
        with pytest.raises(AgentIdTaken):
            store.check_agent_id("box", token)
    store.register_agent("server-own", ["q"], [], host="h")
    with pytest.raises(AgentIdTaken, match="the server's own agent"):
        store.unregister_agent("server-own", token_id="tokA")
    store.check_agent_id("never-registered", "tokB")
    store.unregister_agent("box", token_id="tokA")
    assert [a["id"] for a in store.list_agents()] == ["server-own"]


def test_lease_expiry_without_retries_fails_as_lost(store):
    make_queue(store)
    job = store.enqueue("q", spec(), artifact=None)
    store.claim_next_job("a", ["q"], lease_seconds=0.01)
    time.sleep(0.05)
    store.requeue_expired()
    rec = store.get_job(job.id)
    assert (rec.state, rec.reason) == ("failed", "lost")


def test_heartbeat_extends_the_lease_and_carries_cancel(store):
    make_queue(store)
    job = store.enqueue("q", spec(), artifact=None)
    c = store.claim_next_job("a", ["q"], lease_seconds=0.2)
    assert store.heartbeat(job.id, c.fence, lease_seconds=30).ok
    time.sleep(0.3)
    assert store.requeue_expired() == []
    store.request_cancel(job.id)
    beat = store.heartbeat(job.id, c.fence)
    assert beat.ok and beat.cancel_requested


def test_cancel_queued_job_is_immediate(store):
    make_queue(store)
    job = store.enqueue("q", spec(), artifact=None)
    assert store.request_cancel(job.id).state == "cancelled"
    assert store.claim_next_job("a", ["q"]) is None


def test_concurrent_claims_never_share_a_job(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    s = SQLStore(url)
    make_queue(s)
    s.enqueue_many("q", [spec() for _ in range(200)], artifact=None)
    taken: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        mine = SQLStore(url)
        while (c := mine.claim_next_job(f"a{n}", ["q"])) is not None:
            with lock:
                taken.append(c.job.id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 200 and len(set(taken)) == 200


def test_logs_keep_order_and_offsets(store):
    make_queue(store)
    job = store.enqueue("q", spec(), artifact=None)
    fence = store.claim_next_job("a", ["q"]).fence
    store.append_logs(job.id, fence, [("stdout", b"one\n"), ("stderr", b"two\n")])
    store.append_logs(job.id, fence, [("stdout", b"three\n")])
    chunks, nxt = store.read_log(job.id, 0)
    assert b"".join(c.data for c in chunks) == b"one\ntwo\nthree\n"
    assert [c.stream for c in chunks] == ["stdout", "stderr", "stdout"]
    assert nxt == 14 == store.get_job(job.id).log_size
    chunks, nxt = store.read_log(job.id, 6)  # resume mid-chunk: no loss, no duplicate
    assert b"".join(c.data for c in chunks) == b"o\nthree\n"
    assert store.read_log(job.id, nxt) == ([], nxt)


def test_big_log_pieces_are_split_and_read_back(store):
    make_queue(store)
    job = store.enqueue("q", spec(), artifact=None)
    blob = bytes(range(256)) * 5000  # 1.28 MB
    store.append_logs(job.id, store.claim_next_job("a", ["q"]).fence, [("stdout", blob)])
    got, offset = b"", 0
    while True:
        chunks, offset = store.read_log(job.id, offset, limit=300_000)
        if not chunks:
            break
        got += b"".join(c.data for c in chunks)
    assert got == blob


def test_rerun_keeps_spec_and_artifact(store):
    make_queue(store)
    job = store.enqueue("q", spec(env={"A": "1"}), artifact="sha256:" + "0" * 64)
    again = store.rerun(job.id)
    assert again.id != job.id and again.rerun_of == job.id
    assert again.spec == job.spec and again.artifact == job.artifact


def test_delete_queue_with_jobs_needs_force(store):
    make_queue(store)
    job = store.enqueue("q", spec(), artifact=None)
    with pytest.raises(StoreError, match="--force"):
        store.delete_queue("q")
    store.delete_queue("q", force=True)
    assert store.get_job(job.id).state == "cancelled"
    assert all(s not in ACTIVE for s in [store.get_job(job.id).state])


def test_aws_queue_is_refused_by_the_store(store):
    with pytest.raises(Exception, match="supported providers are local, docker, kubernetes"):
        store.create_queue(QueueConfig(queue_name="aws", provider={"type": "aws", "region": "us-east-1"}))


def test_sqlite_store_is_in_wal_mode_with_its_schema_under_alembic(tmp_path):
    store = SQLStore(f"sqlite:///{tmp_path / 'fresh.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(sql.__file__).parent / "migrations"))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head == sql.SCHEMA_REVISION  # the store skips migrating when the database says this revision
    with store.engine.connect() as conn:
        # The tables alembic built are the ones the code declares: no change made outside a migration.
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    store.close()
    db = sqlite3.connect(tmp_path / "fresh.db")  # a plain connection: what is in the file, not in the pool
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
    finally:
        db.close()


def test_a_listed_queued_job_counts_the_jobs_ahead_of_it_up_to_a_cap_and_get_job_exactly(store):
    from jupyter_launch.store.sql import LIST_AHEAD_CAP

    make_queue(store)
    store.enqueue_many("q", [spec()] * (LIST_AHEAD_CAP + 5), artifact=None)
    store.enqueue_many("q", [spec(priority=2)] * 3, artifact=None)
    last = store.enqueue("q", spec(), artifact=None)
    listed = store.list_jobs(queue="q", limit=1)[0]
    assert listed.id == last.id and listed.message.endswith("; 1,003+ job(s) ahead of it (3 at a higher priority)")
    exact = store.get_job(last.id)
    assert exact.message.endswith(f"; {LIST_AHEAD_CAP + 8} job(s) ahead of it (3 at a higher priority)")


def test_a_store_of_the_previous_schema_migrates_to_0005_keeping_its_jobs_and_back(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = SQLStore(url)
    make_queue(store)
    job = store.enqueue("q", spec(priority=5), artifact=None)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(sql.__file__).parent / "migrations"))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    store.close()
    db = sqlite3.connect(tmp_path / "old.db")
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert "priority" not in columns and not {"schedules", "sweeps", "leases"} & tables
    again = SQLStore(url)  # migrates up at open
    kept = again.get_job(job.id)
    assert (kept.state, kept.priority, kept.schedule_id, kept.parent_id) == ("queued", 0, None, None)
    assert again.list_schedules() == []
    with again.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    again.close()

"""The REST API end to end on a real server with the in-process agent: queues, jobs, logs, metrics, outputs."""

from __future__ import annotations


from .conftest import command_spec, wait_done



async def test_queue_crud(api):
    code, body = await api("GET", "queues")
    assert code == 200 and [q["name"] for q in body["queues"]] == ["default"]
    code, q = await api("POST", "queues", body={"yaml": "queue_name: gpu\nprovider:\n  type: local\n  max_instances: 2\n"})
    assert code == 201, q
    assert q["name"] == "gpu" and q["max_instances"] == 2
    code, err = await api("POST", "queues", body={"queue_name": "gpu"})
    assert code == 409 and "already exists" in err["message"]
    code, q = await api("PUT", "queues", "gpu", body={"provider": {"type": "local", "max_instances": 3}})
    assert code == 200 and q["max_instances"] == 3
    code, err = await api("POST", "queues", body={"yaml": "queue_name: x\nprovider:\n  type: nope\n"})
    assert code == 422 and "provider" in err["message"]
    code, _ = await api("DELETE", "queues", "gpu")
    assert code == 204
    code, err = await api("GET", "queues", "gpu")
    assert code == 404 and "unknown queue 'gpu'" in err["message"]


async def test_submit_run_logs_metrics_outputs(api, start_launch):
    await start_launch()
    code = (
        "import os, pathlib, jupyter_launch\n"
        "print('hello from the job')\n"
        "jupyter_launch.log({'loss': 0.5}, step=1)\n"
        "pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'report.txt').write_text('done')\n")
    status, job = await api("POST", "jobs", body={"queue": "default", "spec": command_spec(code, env={"PYTHONPATH": _root()})})
    assert status == 201, job
    assert job["state"] == "queued" and job["owner"]
    job = await wait_done(api, job["id"])
    assert (job["state"], job["exit_code"]) == ("succeeded", 0), job
    status, page = await api("GET", "jobs", job["id"], "logs")
    assert status == 200 and "".join(c["data"] for c in page["chunks"]) == "hello from the job\n"
    assert page["done"] and page["next_offset"] == job["log_size"]
    status, page = await api("GET", "jobs", job["id"], "logs", params={"offset": 6})
    assert "".join(c["data"] for c in page["chunks"]) == "from the job\n"
    status, m = await api("GET", "jobs", job["id"], "metrics")
    assert [x["data"] for x in m["metrics"]] == [{"loss": 0.5}]
    status, outs = await api("GET", "jobs", job["id"], "outputs")
    assert [o["path"] for o in outs["outputs"]] == ["report.txt"]
    status, body = await api("GET", "jobs", job["id"], "outputs", "report.txt")
    assert status == 200 and body == b"done"
    status, err = await api("GET", "jobs", job["id"], "outputs", "nope.txt")
    assert status == 404 and "has no output 'nope.txt'" in err["message"]


async def test_list_filter_page_cancel_rerun(api):
    await api("POST", "queues", body={"queue_name": "held"})
    ids = []
    for i in range(5):
        status, job = await api("POST", "jobs", body={"queue": "held", "spec": command_spec(f"print({i})", name=f"j{i}")})
        ids.append(job["id"])
    status, page = await api("GET", "jobs", params={"queue": "held", "limit": 2})
    assert [j["id"] for j in page["jobs"]] == ids[:-3:-1] and page["next_before"]
    status, page2 = await api("GET", "jobs", params={"queue": "held", "limit": 2, "before": page["next_before"]})
    assert [j["id"] for j in page2["jobs"]] == [ids[2], ids[1]]
    assert page["jobs"][0]["reason"] == "no_agent_for_queue"
    status, job = await api("POST", "jobs", ids[0], "cancel")
    assert status == 202 and job["state"] == "cancelled"
    status, page = await api("GET", "jobs", params={"state": "cancelled"})
    assert [j["id"] for j in page["jobs"]] == [ids[0]]
    status, job = await api("POST", "jobs", ids[0], "rerun")
    assert status == 201 and job["rerun_of"] == ids[0] and job["state"] == "queued"
    status, err = await api("GET", "jobs", params={"limit": "lots"})
    assert status == 400 and "limit must be an integer" in err["message"]


async def test_history_filters_are_query_arguments_and_a_bad_one_is_a_400_naming_it(api, launch_app):
    await api("POST", "queues", body={"queue_name": "history"})
    ids = []
    for name in ("train-a", "eval-b", "train-c"):
        status, job = await api("POST", "jobs", body={"queue": "history", "spec": command_spec("1", name=name)})
        ids.append(job["id"])
    await api("POST", "jobs", ids[1], "cancel")
    # jupyter_server's token login is a new anonymous user (32 hex characters) on each request: each acts as the
    # server's user instead, one owner for all.
    job = launch_app.store.get_job(ids[0])
    assert job.owner == job.owner_name == launch_app.server_user, job
    status, again = await api("POST", "jobs", ids[0], "rerun")
    assert (again["owner"], again["owner_name"]) == (job.owner, job.owner_name)  # the rerun is who asked for it
    await api("POST", "jobs", again["id"], "cancel")
    await api("DELETE", "jobs", again["id"])
    status, page = await api("GET", "jobs", params={"queue": "history", "q": "TRAIN", "sort": "name", "limit": 1})
    assert status == 200 and [j["name"] for j in page["jobs"]] == ["train-a"]
    assert page["next_before"] is None and page["next_offset"] == 1  # sorted by name: page on with offset
    status, page = await api("GET", "jobs", params={"queue": "history", "q": "train", "sort": "name", "offset": 1})
    assert [j["name"] for j in page["jobs"]] == ["train-c"] and page["next_offset"] is None
    status, page = await api("GET", "jobs", params={"queue": "history", "state": "queued,cancelled",
                                                    "submitted_after": 0, "submitted_before": 4e9})
    assert [j["id"] for j in page["jobs"]] == ids[::-1]
    for params, field in (({"state": "done"}, "'state' must be one of"), ({"sort": "size"}, "'sort' must be one of"),
                          ({"submitted_after": "monday"}, "submitted_after must be a number"),
                          ({"submitted_before": "nan"}, "'submitted_before' must be a number"),
                          ({"archived": "maybe"}, "archived must be one of"), ({"offset": "-1"}, "offset must be"),
                          ({"q": "x" * 201}, "'q' must be a text")):
        status, err = await api("GET", "jobs", params=params)
        assert status == 400 and field in err["message"], (params, status, err)

    status, err = await api("DELETE", "jobs", ids[0])
    assert status == 409 and "cancel it first" in err["message"]
    status, job = await api("POST", "jobs", ids[1], "archive")
    assert status == 200 and job["archived_at"]
    status, page = await api("GET", "jobs", params={"queue": "history", "archived": "true"})
    assert [j["id"] for j in page["jobs"]] == [ids[1]]
    status, body = await api("DELETE", "jobs", ids[1])
    assert (status, body) == (200, {"job_id": ids[1], "released": []})
    status, err = await api("GET", "jobs", ids[1])
    assert status == 404 and launch_app.store.list_jobs(queue="history", archived=None)[-1].id == ids[0]


async def test_bad_requests_say_what_to_do(api):
    status, err = await api("POST", "jobs", body={"queue": "nope", "spec": command_spec("1")})
    assert status == 404 and "unknown queue 'nope'" in err["message"]
    status, err = await api("POST", "jobs", body={"spec": {"kind": "command"}})
    assert status == 422 and err["message"]
    status, err = await api("POST", "jobs", raw=b"{not json")
    assert status == 400 and "not JSON" in err["message"]
    status, err = await api("POST", "jobs", body={"spec": command_spec("1"), "artifact": "sha256:" + "0" * 64})
    assert status == 409 and "artifacts/missing" in err["message"]
    status, err = await api("GET", "jobs", "0123456789abcd")
    assert status == 404 and "unknown job" in err["message"]


async def test_artifact_blobs_upload_only_missing(api, launch_app):
    from jupyter_launch.store import sha256_bytes

    a, b = b"first blob", b"second blob"
    da, db = sha256_bytes(a), sha256_bytes(b)
    launch_app.blobs.put_bytes(a)
    status, body = await api("POST", "artifacts", "missing", body={"digests": [da, db]})
    assert status == 200 and body["missing"] == [db]
    status, body = await api("PUT", "artifacts", "blobs", db, raw=b"tampered")
    assert status == 400 and "digest" in body["message"]
    status, body = await api("PUT", "artifacts", "blobs", db, raw=b)
    assert status == 201 and body == {"digest": db, "size": len(b)}
    status, body = await api("POST", "artifacts", "missing", body={"digests": [da, db]})
    assert body["missing"] == []
    assert launch_app.blobs.read_bytes(db) == b


def _root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])


async def test_stopping_the_server_requeues_running_jobs(api, start_launch):
    import asyncio
    import time

    app = await start_launch()
    _, job = await api("POST", "jobs", body={"spec": command_spec("import time; print('up', flush=True); time.sleep(60)",
                                                                  retries=0)})
    deadline = time.monotonic() + 30
    while (await api("GET", "jobs", job["id"]))[1]["state"] != "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await app.stop_extension()
    assert time.monotonic() - t0 < 20
    from jupyter_launch.store import SQLStore

    store = SQLStore(app.store_url)
    rec = store.get_job(job["id"])
    store.close()
    # Handed back, to run again on the next start; not counted as an attempt (with no retries, it used to be lost).
    assert (rec.state, rec.attempt) == ("queued", 1), rec


async def test_the_default_authorizer_lets_its_one_user_do_everything(api, launch_app):
    """No custom authorizer (jupyter_server's AllowAllAuthorizer) and the server's own token: every resource is
    allowed, so this user reaches jobs of any owner, as before resources were split."""
    from jupyter_launch.spec import JobSpec

    job = launch_app.store.enqueue("default", JobSpec(kind="command", command=["true"]), artifact=None,
                                   owner="someone-else")
    status, page = await api("GET", "jobs")
    assert status == 200 and [j["id"] for j in page["jobs"]] == [job.id], page
    for method, parts in (("GET", ("jobs", job.id)), ("GET", ("jobs", job.id, "logs")),
                          ("GET", ("jobs", job.id, "outputs")), ("POST", ("jobs", job.id, "rerun")),
                          ("POST", ("jobs", job.id, "cancel")), ("GET", ("tokens",))):
        status, body = await api(method, *parts)
        assert status < 300, (method, parts, status, body)
    status, body = await api("POST", "queues", body={"queue_name": "mine"})
    assert status == 201, body

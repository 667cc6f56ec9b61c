"""openapi.yaml describes every route, and real responses match its schemas."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

import jupyter_launch.server
from jupyter_launch.server.handlers import default_handlers
from jupyter_launch.server.ws import stream_handlers

from .conftest import command_spec, wait_done

SPEC = yaml.safe_load((Path(jupyter_launch.server.__file__).parent / "openapi.yaml").read_text())


def _template(pattern: str) -> str:
    # Named groups become {name}; an action group listing alternatives is documented as {action}.
    return re.sub(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))+\)", lambda m: "{" + m.group(1) + "}", pattern)


def test_every_route_is_documented():
    routes = {_template(p) for p, _ in default_handlers + stream_handlers}
    assert routes == set(SPEC["paths"]), routes ^ set(SPEC["paths"])


def check(method: str, path: str, status: int, body: Any) -> None:
    op = SPEC["paths"][path][method.lower()]
    resp = op["responses"][str(status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    schema = resp.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return
    jsonschema.Draft202012Validator({**schema, "components": SPEC["components"]}).validate(body)


async def test_responses_match_the_spec(api, start_launch):
    await start_launch()
    s, b = await api("POST", "queues", body={"queue_name": "docs"})
    check("POST", "/launch/api/queues", s, b)
    s, b = await api("GET", "queues")
    check("GET", "/launch/api/queues", s, b)
    s, b = await api("GET", "queues", "docs")
    check("GET", "/launch/api/queues/{queue}", s, b)
    s, b = await api("GET", "queues", "nope")
    check("GET", "/launch/api/queues/{queue}", s, b)
    code = "import jupyter_launch, os, pathlib\nprint('hi')\njupyter_launch.log({'a': 1})\n" \
           "pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'o.txt').write_text('x')\n"
    s, job = await api("POST", "jobs", body={"spec": command_spec(code, env={"PYTHONPATH": str(Path(__file__).parents[2])})})
    check("POST", "/launch/api/jobs", s, job)
    s, b = await api("POST", "jobs", body={"spec": {"kind": "command"}})
    check("POST", "/launch/api/jobs", s, b)
    await wait_done(api, job["id"])
    for parts, path in ((("jobs",), "/launch/api/jobs"), (("jobs", job["id"]), "/launch/api/jobs/{job_id}"),
                        (("jobs", job["id"], "logs"), "/launch/api/jobs/{job_id}/logs"),
                        (("jobs", job["id"], "metrics"), "/launch/api/jobs/{job_id}/metrics"),
                        (("jobs", job["id"], "outputs"), "/launch/api/jobs/{job_id}/outputs"),
                        (("agents",), "/launch/api/agents")):
        s, b = await api("GET", *parts)
        assert s == 200, b
        check("GET", path, s, b)
    s, b = await api("POST", "jobs", job["id"], "rerun")
    check("POST", "/launch/api/jobs/{job_id}/rerun", s, b)
    s, b = await api("POST", "jobs", b["id"], "cancel")
    check("POST", "/launch/api/jobs/{job_id}/cancel", s, b)
    s, b = await api("POST", "artifacts", "missing", body={"digests": ["sha256:" + "1" * 64]})
    check("POST", "/launch/api/artifacts/missing", s, b)
    s, created = await api("POST", "tokens", body={"name": "docs-agent", "queues": ["docs"]})
    check("POST", "/launch/api/tokens", s, created)
    s, b = await api("GET", "agent", "token", headers={"Authorization": f"Bearer {created['token']}"})
    check("GET", "/launch/api/agent/token", s, b)
    s, b = await api("GET", "tokens", params={"include_revoked": "true"})
    check("GET", "/launch/api/tokens", s, b)
    s, b = await api("DELETE", "tokens", created["id"])
    check("DELETE", "/launch/api/tokens/{token_id}", s, b)
    s, b = await api("DELETE", "tokens", created["id"])
    check("DELETE", "/launch/api/tokens/{token_id}", s, b)
    assert s == 409 and "already revoked" in b["message"]

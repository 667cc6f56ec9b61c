"""openapi.yaml is a valid OpenAPI document, describes every route, is served by the server, and real responses match
its schemas."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from launch_server import LaunchServer
from openapi_spec_validator import validate as validate_openapi

import jupyter_launch.server
from jupyter_launch.server.handlers import default_handlers
from jupyter_launch.server.ws import stream_handlers

from .conftest import command_spec, wait_done

DOCUMENT = Path(jupyter_launch.server.__file__).parent / "openapi.yaml"
SPEC = yaml.safe_load(DOCUMENT.read_text())


def _template(pattern: str) -> str:
    # Named groups become {name}; an action group listing alternatives is documented as {action}.
    return re.sub(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))+\)", lambda m: "{" + m.group(1) + "}", pattern)


def test_every_route_is_documented():
    routes = {_template(p) for p, _ in default_handlers + stream_handlers}
    assert routes == set(SPEC["paths"]), routes ^ set(SPEC["paths"])


def test_the_document_is_valid_openapi():
    validate_openapi(SPEC)  # raises naming the path of the first error


def test_descriptions_are_in_block_style():
    """A plain description in a flow mapping splits at its first comma into a second, unknown key (it did once:
    `{description: the job, with a reason while it waits, content: ...}`); in JSON Schema an unknown key is even
    silently allowed. So no flow mapping holds a description or summary, and no key has an empty value."""
    problems = []

    def walk(node: yaml.Node) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if node.flow_style and key.value in ("description", "summary"):
                    problems.append(f"line {key.start_mark.line + 1}: {key.value} inside a {{...}} mapping")
                if isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null"):
                    problems.append(f"line {key.start_mark.line + 1}: {key.value!r} has no value")
                walk(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    walk(yaml.compose(DOCUMENT.read_text()))
    assert not problems, "\n".join(problems)


def test_the_server_serves_its_document(tmp_path):
    """GET /launch/api/openapi.json from a real `jupyter server` under a base URL: the document as JSON with that base
    URL as its server, valid, matching its own entry; refused without credentials."""
    server = LaunchServer(tmp_path, agent_queues=[], extra_config="c.ServerApp.base_url = '/user/alice/'\n")
    server.url += "/user/alice"
    server.start()
    try:
        status, served = server.api("GET", "openapi.json")
        assert status == 200, served
        validate_openapi(served)
        assert served["servers"] == [{"url": "/user/alice"}]
        assert {**served, "servers": SPEC["servers"]} == json.loads(json.dumps(SPEC))
        check("GET", "/launch/api/openapi.json", status, served)
        status, body = server.api("GET", "openapi.json", token="")
        assert status == 403, body
        status, body = server.api("GET", "openapi.json", token="not-the-token")
        assert status == 403, body
    finally:
        server.stop()


def check(method: str, path: str, status: int, body: Any) -> None:
    op = SPEC["paths"][path][method.lower()]
    resp = op["responses"][str(status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    schema = resp.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return
    jsonschema.Draft202012Validator({**strict(schema), "components": strict(SPEC["components"])}).validate(body)


EXTENDED = {m["$ref"].rsplit("/", 1)[1] for schema in SPEC["components"]["schemas"].values()
            for m in schema.get("allOf", []) if "$ref" in m}  # schemas another one extends with allOf


def strict(node: Any, *, in_all_of: bool = False) -> Any:
    """``node`` with every object schema that lists its properties closed (``unevaluatedProperties: false``), so a
    field the server returns and the document leaves out fails as surely as one it documents and leaves out. allOf
    members, and a schema another extends with allOf, stay open (closed, they would refuse the extension's fields);
    the extending schema is closed."""
    if isinstance(node, list):
        return [strict(n, in_all_of=in_all_of) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v, in_all_of=(k == "allOf")) for k, v in node.items()}
    if node is SPEC["components"]:
        for name in EXTENDED:
            out["schemas"][name].pop("unevaluatedProperties", None)
    if ("properties" in out or "allOf" in out) and "additionalProperties" not in out and not in_all_of:
        out["unevaluatedProperties"] = False
    return out


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
    s, b = await api("POST", "jobs", b["id"], "archive")
    check("POST", "/launch/api/jobs/{job_id}/{action}", s, b)
    s, b = await api("GET", "jobs", params={"archived": "all", "sort": "-name", "q": "a"})
    check("GET", "/launch/api/jobs", s, b)
    s, b = await api("DELETE", "jobs", job["id"])
    assert s == 200 and b["released"], b  # o.txt, its only output
    check("DELETE", "/launch/api/jobs/{job_id}", s, b)
    s, b = await api("DELETE", "jobs", job["id"])
    check("DELETE", "/launch/api/jobs/{job_id}", s, b)
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


def test_the_panel_types_are_generated_from_this_document():
    """The panel's API types are generated from openapi.yaml (openapi-typescript) before every tsc and jest run, not
    written by hand nor committed: `jlpm build`, `jlpm build:prod`, a pip install (hatch-jupyter-builder runs those)
    and `jlpm test` regenerate them, so a document that drifts from what the panel uses fails the panel's build."""
    ext = Path(__file__).parents[2] / "labextension"
    scripts = json.loads((ext / "package.json").read_text())["scripts"]
    generate = scripts["build:openapi"].split()
    assert generate[0] == "openapi-typescript"
    assert (ext / generate[1]).resolve() == DOCUMENT.resolve()
    assert generate[generate.index("--output") + 1] == "src/generated/openapi.d.ts"
    for name in ("build:lib", "build:lib:prod", "test", "watch:src"):
        assert scripts[name].startswith("jlpm build:openapi && "), (name, scripts[name])
    api = (ext / "src" / "api.ts").read_text()
    assert "from './generated/openapi';" in api
    for name in ("IQueue", "IJob", "IMetricRecord", "IOutput", "IResources", "ISubmitRequest"):
        assert re.search(rf"^export type {name} = .*Schemas\[", api, re.M), f"{name} is not the document's type"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(ext / "src" / "generated" / "openapi.d.ts")],
                             cwd=ext, check=False).returncode
    assert ignored == 0, "the generated types are built, not committed"

"""Every launch handler is authenticated and authorized through jupyter_server's authorizer.

The list of handlers is enumerated, not written out: a new handler without auth fails here. (jupyter_server itself
also refuses to load an extension whose endpoints lack @web.authenticated, and the suite turns that warning into an
error.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jupyter_server.auth.authorizer import Authorizer

import jupyter_launch.server
from jupyter_launch.server.handlers import AGENT_AUTH_RESOURCE, JOBS_RESOURCE, default_handlers
from jupyter_launch.server.ws import stream_handlers

SPEC = yaml.safe_load((Path(jupyter_launch.server.__file__).parent / "openapi.yaml").read_text())

METHODS = ("get", "post", "put", "delete", "patch", "head")
SAMPLES = {"job_id": "0123456789abcd", "queue": "default", "digest": "sha256:" + "0" * 64, "path": "out.txt",
           "token_id": "0123456789ab", "schedule_id": "0123456789abcd", "sweep_id": "0123456789abcd"}
CALLS: list[tuple[str, str, str]] = []


class DenyLaunch(Authorizer):
    """Allows everything but the launch resources, and records what it was asked."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        CALLS.append((type(handler).__name__, action, resource))
        return not resource.startswith("launch")


def documented_resource(pattern: str, method: str) -> str:
    """The resource openapi.yaml names for a user operation: the role in its ``security``, else the default's."""
    path = re.sub(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))+\)", lambda m: "{" + m.group(1) + "}", pattern)
    security = SPEC["paths"][path][method.lower()].get("security", SPEC["security"])
    (roles,) = [scheme["jupyterToken"] for scheme in security]
    (resource,) = roles
    return resource


def endpoints() -> list[tuple[str, str, type]]:
    out = []
    for pattern, cls in default_handlers + stream_handlers:
        def sample(m: re.Match) -> str:
            name, body = m.group(1), m.group(2)
            if name == "action":
                return body.split("|")[0]
            return SAMPLES[name]

        path = re.sub(r"\(\?P<(\w+)>((?:[^()]|\([^()]*\))+)\)", sample, pattern)
        for method in METHODS:
            if method in cls.__dict__ or any(method in base.__dict__ for base in cls.__mro__[1:]
                                             if base.__module__.startswith("jupyter_launch")):
                out.append((method.upper(), path, cls, pattern))
    return out


ENDPOINTS = endpoints()


def test_every_endpoint_is_enumerated():
    names = {cls.__name__ for _, _, cls, _ in ENDPOINTS}
    assert names == {cls.__name__ for _, cls in default_handlers + stream_handlers}
    assert len(ENDPOINTS) >= 25


async def _request(jp_fetch: Any, method: str, path: str, headers: dict[str, str]) -> int:
    from tornado.httpclient import HTTPClientError

    parts = path.strip("/").split("/")
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    try:
        r = await jp_fetch(*parts, method=method, body=body, headers=headers,
                           allow_nonstandard_methods=True)
    except HTTPClientError as exc:
        assert exc.response is not None, exc
        r = exc.response
    return r.code


@pytest.mark.parametrize("method,path,cls,pattern", ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
async def test_unauthenticated_requests_are_refused(jp_fetch, jp_ws_fetch, method, path, cls, pattern):
    if path.endswith("/logs/ws"):
        from tornado.httpclient import HTTPClientError

        with pytest.raises(HTTPClientError) as info:
            await jp_ws_fetch(*path.strip("/").split("/"), headers={"Authorization": ""})
        code = info.value.code
    else:
        code = await _request(jp_fetch, method, path, {"Authorization": ""})
    assert code in (401, 403), f"{method} {path} ({cls.__name__}) answered {code} without credentials"


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"authorizer_class": DenyLaunch}


async def test_every_endpoint_asks_the_authorizer_for_the_resource_openapi_names(jp_fetch, launch_app):
    token, _ = launch_app.store.create_agent_token("auth-test", ["*"])
    for method, path, cls, pattern in ENDPOINTS:
        CALLS.clear()
        agent = path.startswith("/launch/api/agent/")
        headers = {"Authorization": f"Bearer {token}"} if agent else {}
        if path.endswith("/logs/ws"):
            continue  # WebSocket: checked below
        code = await _request(jp_fetch, method, path, headers)
        resource = AGENT_AUTH_RESOURCE if agent else documented_resource(pattern, method)
        action = "read" if method == "GET" else "write"
        assert code == 403, f"{method} {path} ({cls.__name__}) answered {code} though the authorizer denies it"
        # The first question decides: the route's own resource, with the verb's action, before anything is done.
        assert CALLS and CALLS[0][1:] == (action, resource), f"{method} {path} asked the authorizer {CALLS}"


async def test_log_websocket_asks_the_authorizer(jp_ws_fetch, launch_app):
    from tornado.httpclient import HTTPClientError

    CALLS.clear()
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("launch", "api", "jobs", SAMPLES["job_id"], "logs", "ws")
    assert info.value.code == 403
    assert ("LogSocketHandler", "read", JOBS_RESOURCE) in CALLS


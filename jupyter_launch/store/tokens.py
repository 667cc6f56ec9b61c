"""Agent tokens in the SQL store: what a remote agent shows the server. Scoped to queues, stored as a hash, revocable.

A token reads ``jla_<id>_<secret>``. The id is public (listed, revoked by it); only the sha256 of the 32-byte random
secret is stored, and a plain hash is enough for a secret of that entropy. The server checks the token on every agent
call, so a revoked agent gets no more work from its next call on. ``SQLStore`` keeps them through
:class:`AgentTokenRows`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from . import schema as t
from .base import NotFound, StoreError

PREFIX = "jla_"
ALL_QUEUES = "*"


@dataclass
class AgentToken:
    """An agent token's record; never its secret."""

    id: str
    name: str
    queues: list[str]
    created_at: float
    created_by: str | None
    last_used_at: float | None
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows(self, queue: str) -> bool:
        return ALL_QUEUES in self.queues or queue in self.queues

    def to_dict(self) -> dict[str, Any]:
        return dict(id=self.id, name=self.name, queues=self.queues, created_at=self.created_at,
                    created_by=self.created_by, last_used_at=self.last_used_at, revoked_at=self.revoked_at)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentToken:
        return cls(d["id"], d["name"], list(d["queues"]), d["created_at"], d.get("created_by"),
                   d.get("last_used_at"), d.get("revoked_at"))


def token_id(text: str) -> str:
    """The id in a token id or a whole token (``jla_<id>_<secret>``)."""
    return text.removeprefix(PREFIX).split("_", 1)[0]


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _record(row: Any) -> AgentToken:
    return AgentToken(row.id, row.name, list(row.queues), row.created_at, row.created_by, row.last_used_at,
                      row.revoked_at)


class AgentTokenRows:
    """The agent-token methods of ``SQLStore`` (through its ``_write``/``_read`` transactions), on the
    ``agent_tokens`` table of the same database as the queues."""

    def create_agent_token(self, name: str, queues: list[str], *,
                           created_by: str | None = None) -> tuple[str, AgentToken]:
        """A new token; returns ``(token, record)``. The token is shown once and cannot be read back."""
        if not queues:
            raise StoreError("an agent token needs at least one queue (or '*' for all queues)")
        new_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        with self._write() as c:
            c.execute(t.agent_tokens.insert().values(id=new_id, name=name, secret_hash=_hash(secret),
                                                     queues=list(queues), created_at=now, created_by=created_by))
        return f"{PREFIX}{new_id}_{secret}", AgentToken(new_id, name, list(queues), now, created_by, None, None)

    def list_agent_tokens(self, *, include_revoked: bool = False) -> list[AgentToken]:
        """Tokens, oldest first (never their secrets); revoked ones only when asked."""
        q = select(t.agent_tokens).order_by(t.agent_tokens.c.created_at)
        if not include_revoked:
            q = q.where(t.agent_tokens.c.revoked_at.is_(None))
        with self._read() as c:
            return [_record(r) for r in c.execute(q)]

    def revoke_agent_token(self, token: str) -> AgentToken:
        """Revoke a token by its id (or the whole token); returns its record."""
        tid = token_id(token)
        with self._write() as c:
            n = c.execute(t.agent_tokens.update().where(t.agent_tokens.c.id == tid,
                                                        t.agent_tokens.c.revoked_at.is_(None))
                          .values(revoked_at=time.time())).rowcount
            row = c.execute(select(t.agent_tokens).where(t.agent_tokens.c.id == tid)).first()
        if row is None:
            raise NotFound(f"unknown agent token {tid!r}; see `jupyter launch token list`")
        if not n:
            raise StoreError(f"agent token {tid!r} was already revoked")
        return _record(row)

    def verify_agent_token(self, token: str) -> AgentToken | None:
        """The token's record when it is valid and not revoked; ``None`` otherwise."""
        if not token.startswith(PREFIX):
            return None
        tid, _, secret = token[len(PREFIX):].partition("_")
        if not tid or not secret:
            return None
        with self._read() as c:
            row = c.execute(select(t.agent_tokens).where(t.agent_tokens.c.id == tid)).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
            return None
        return _record(row)

    def touch_agent_token(self, token_id: str) -> None:
        """Record that the token was just used (an agent registered with it)."""
        with self._write() as c:
            c.execute(t.agent_tokens.update().where(t.agent_tokens.c.id == token_id)
                      .values(last_used_at=time.time()))

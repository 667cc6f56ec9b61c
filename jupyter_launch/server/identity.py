"""Who a request to ``/launch/api/`` is, as the owner of the jobs it submits: the identity provider's user, except
where that user is only jupyter_server's stand-in for the server's own user.

jupyter_server's own identity providers (a token or a password, ``IdentityProvider`` and
``PasswordIdentityProvider``) know one person, whoever holds the server's token or password, and make up a fresh
anonymous identity (a 32-hex username) for each token-authenticated request and each login. Jobs owned by those would
have as many owners as requests, none of them the person. So a request made with the server's own token, or any
request under those providers, acts as the server's user (``LaunchApp.server_user``: ``$JUPYTERHUB_USER`` or the OS
user, the owner an embedded client on this machine records too). Any other provider's users (the Hub's, a custom
provider's per-user tokens) keep their own username.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider

# Providers whose users stand for the server's one user; a subclass may know real users, so it is not on the list.
SINGLE_USER_PROVIDERS = (IdentityProvider, PasswordIdentityProvider)


@dataclass(frozen=True)
class Submitter:
    """``name``: the owner recorded and compared; ``display_name``: how people know them (the panel, ``list``)."""

    name: str
    display_name: str | None


def submitter(handler: Any, server_user: str) -> Submitter | None:
    """The owner ``handler``'s request acts as; None when it is not authenticated."""
    user = handler.current_user
    if not user:
        return None
    if acts_as_server_user(handler):
        return Submitter(server_user, server_user)
    return Submitter(user.username, user.display_name or user.name or None)


def acts_as_server_user(handler: Any) -> bool:
    """True for a request authenticated by the server's own token, and for every request under jupyter_server's own
    single-user identity providers (their cookie logins are anonymous identities of that one user)."""
    provider = handler.identity_provider
    if type(provider) in SINGLE_USER_PROVIDERS:
        return True
    token = getattr(provider, "token", "") or ""
    sent = provider.get_token(handler) or ""
    return bool(token) and hmac.compare_digest(sent.encode(), token.encode())

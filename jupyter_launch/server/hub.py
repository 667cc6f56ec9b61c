"""jupyter-launch under JupyterHub, in a user's single-user server or in ``jupyter launch serve`` run as the Hub's
service: the Hub's admins are jupyter-launch's admins, its other users own only their own jobs.

There the identity is the Hub's user (``JupyterHubIdentityProvider``), and jupyter_server's default authorizer allows
whoever reaches the server everything, ``launch_admin`` included: on a store the team shares, each user would see and
cancel everyone's jobs. ``HubAuthorizer`` keeps the Hub's own check (the access scope of this server, or of this
service: ``access:services!service=NAME``) for every resource and adds one for jupyter-launch's admin resources: the
user is a Hub admin. ``LaunchApp.hub_authorizer_class`` installs it when the server's authorizer is left at the default.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.singleuser.extension import JupyterHubAuthorizer
from traitlets import Bool, List, Unicode

from .handlers import ADMIN_RESOURCE, AGENT_AUTH_RESOURCE, QUEUES_RESOURCE


class HubAuthorizer(JupyterHubAuthorizer):
    """JupyterHub's authorizer, with ``admin_resources`` allowed only to the Hub's admins (``is_launch_admin``)."""

    admin_resources = List(Unicode(), default_value=[ADMIN_RESOURCE, QUEUES_RESOURCE], config=True,
                           help="jupyter-launch resources only admins get: launch_admin (every user's jobs) and "
                                "launch_queues (the team's queues and agent tokens). Users keep launch_jobs: their "
                                "own jobs.")
    hub_admins = Bool(True, config=True, help="Users the Hub marks admin (its admin_users, the `admin` flag of the "
                                              "user model the server gets from the Hub) are admins.")
    admin_scopes = List(Unicode(), default_value=["admin:users"], config=True,
                        help="A user whose request carries any of these Hub scopes is an admin (a custom scope such "
                             "as custom:launch:admin, granted through a Hub role, names admins apart from the Hub's). "
                             "A browser's token carries only the scopes the server's OAuth client asks for "
                             "(c.Spawner.oauth_client_allowed_scopes); API tokens carry their owner's.")

    def is_launch_admin(self, user: Any) -> bool:
        """Whether the Hub user behind this request is a jupyter-launch admin; override for another rule."""
        hub_user = getattr(user, "hub_user", None) or {}
        if self.hub_admins and hub_user.get("admin") is True:
            return True
        return bool(set(self.admin_scopes) & set(hub_user.get("scopes") or ()))

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        if resource == AGENT_AUTH_RESOURCE:
            # A remote agent, authenticated by its agent token (the agent routes take nothing else), not by the Hub:
            # it has no Hub scopes to check, and its token's queues bound what it may do.
            return not hasattr(user, "hub_user")
        if not super().is_authorized(handler, user, action, resource):
            return False
        return resource not in self.admin_resources or self.is_launch_admin(user)

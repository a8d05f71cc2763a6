"""Who may call what, and what an edit may store: the HTTP API's request policy.

Roles (bearer tokens, ``Authorization: Bearer <token>``):

- **admin** (``token`` / ``$token_env``, default ``VMEM_TOKEN``): every endpoint, and the only
  role for mutations (``POST``/``DELETE /v1/memory/items``, ``POST /v1/memory/reload``, any
  future admin endpoint). No admin token configured: mutations are refused (403).
- **read** (``read_token`` / ``$read_token_env``, default ``VMEM_READ_TOKEN``, optional): query
  endpoints (``/v1/classify*``, ``/v1/neighbors*``, ``GET /v1/memory``). When no read token is
  configured, queries are open; when one is, a query needs the read or the admin token.
- ``/healthz`` and ``/metrics`` are always open.

Answers: no bearer token -> 401, a token that does not grant the role -> 403 (a read token on a
mutation included); the router turns ``Refused`` into ``{"error", "field"}`` JSON. Tokens are
compared in constant time (``hmac.compare_digest``) as UTF-8 bytes.

Sources: an added item's ``source`` must pass ``pipelines.sources.policy`` under the server's
``allowed_source_roots``, else 422 naming ``items.N.source``.
"""
from __future__ import annotations

import hmac
from collections.abc import Iterable

from fastapi.security.utils import get_authorization_scheme_param

from pipelines.sources.policy import SourcePolicy, SourceRefused

ADMIN, READ = "admin", "read"
ROLES = (ADMIN, READ)


class Refused(Exception):
    """A request the policy refuses: HTTP ``status``, the ``field`` at fault, a ``message``."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def _same(presented: bytes, configured: str) -> bool:
    return bool(configured) and hmac.compare_digest(presented, configured.encode("utf-8"))


def check_token(authorization: str | None, role: str, admin_token: str, read_token: str = "") -> None:
    """Allow (return None) or raise Refused for a request needing ``role`` (``ADMIN`` or
    ``READ``), given its ``Authorization`` header (or None) and the configured tokens ("" =
    none). 401: no bearer token where one is needed; 403: the token does not grant the role
    (wrong, a read token on an admin endpoint, or no admin token configured). Raises
    ValueError for an unknown role."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    if role == READ and not read_token:
        return  # queries are open unless a read token is configured
    if role == ADMIN and not admin_token:  # no token could be accepted: say so first
        raise Refused(403, "Authorization", "no admin token is configured: changes are disabled")
    scheme, presented = get_authorization_scheme_param(authorization)
    if scheme.lower() != "bearer" or not presented:
        raise Refused(401, "Authorization", "a bearer token is required")
    value = presented.encode("utf-8", "surrogatepass")
    is_admin, is_reader = _same(value, admin_token), _same(value, read_token)  # both, always
    if is_admin or (role == READ and is_reader):
        return
    if role == ADMIN and is_reader:
        raise Refused(403, "Authorization", "a read-only token cannot change the memory")
    raise Refused(403, "Authorization", "token not accepted")


def authorize(options, authorization: str | None, role: str = ADMIN) -> None:
    """``check_token`` with the tokens of ``options`` (a ``serving.options.ServingOptions``:
    ``resolved_token()``, ``resolved_read_token()``, read in the calling process). Raises
    Refused."""
    check_token(authorization, role, options.resolved_token(), options.resolved_read_token())


def check_sources(sources: Iterable[str], policy: SourcePolicy, field: str = "items.{}.source") -> None:
    """Raise Refused(422, ``field`` formatted with the item's position, the reason) for the
    first source ``policy`` refuses; None when all pass."""
    for i, source in enumerate(sources):
        try:
            policy.check(source)
        except SourceRefused as error:
            raise Refused(422, field.format(i), str(error)) from None

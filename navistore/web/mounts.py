"""Mounts: APIs that answer every path under a first segment of their own (``/v2/...``).

The native API routes a path to an endpoint, a prefix or a key. A mount takes a whole subtree
instead, so that another store's API (:mod:`navistore.compat`) can be spoken on the same port.
The resource still decides who asks before the mount sees the request (so a mount cannot forget
to); the mount then checks what each request needs with :meth:`AccessPolicy.check
<navistore.web.access.AccessPolicy.check>`, because only it knows which keys a path touches.
"""

from __future__ import annotations

from typing import Protocol

from twisted.web.server import Request

from navistore.tokens import Caller
from navistore.web.errors import ApiError
from navistore.web.responses import Response

__all__ = ["Mount"]


class Mount(Protocol):
    """An API mounted on a first path segment."""

    def secret(self, request: Request) -> str | None:
        """The token secret ``request`` carries in this API's own ways (Consul's
        ``X-Consul-Token`` and ``?token=``), or None: ``Authorization: Bearer`` only."""

    def refused(self, request: Request, error: ApiError) -> ApiError:
        """The refusal the node made before the mount saw ``request`` (an unknown token), as
        this API answers it: at least with the headers its clients need on every answer."""

    async def answer(self, request: Request, path: str, caller: Caller) -> Response:
        """Answer ``request`` for its decoded ``path`` (leading ``/``, query excluded), made by
        ``caller``. Raise :class:`~navistore.web.errors.ApiError` for a refusal the native
        way, or answer the API's own error bodies."""

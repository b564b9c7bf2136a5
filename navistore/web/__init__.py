"""The HTTP face of a node: :func:`make_site` builds the twisted.web Site over a Store."""

from __future__ import annotations

from typing import Any

from ..store import Store
from .limits import DEFAULT_MAX_VALUE_SIZE, NavistoreSite
from .routes import ApiResource, Endpoints, Handler

__all__ = ["DEFAULT_MAX_VALUE_SIZE", "ApiResource", "Endpoints", "Handler", "make_site"]


def make_site(
    store: Store,
    *,
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
    access_log: bool = False,
    extra_endpoints: Endpoints | None = None,
    reactor: Any = None,
) -> NavistoreSite:
    """Build the Site serving the API of ``store``.

    :param max_value_size: the largest request body accepted, in bytes; larger ones get 413
        before they are read.
    :param access_log: log one line per request through twisted.logger.
    :param extra_endpoints: more server endpoints by name and method (replication's).
    :param reactor: the reactor the Site uses for its clock (default: the global one).
    """
    resource = ApiResource(store, max_value_size=max_value_size, extra_endpoints=extra_endpoints)
    site = NavistoreSite(resource, max_value_size=max_value_size, access_log=access_log)
    if reactor is not None:
        site.reactor = reactor
    return site

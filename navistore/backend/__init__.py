"""Storage backends, and :func:`open_backend` which picks one by URL.

A backend URL is ``scheme:location?option=value&...``: ``memory:``, ``sqlite:///abs/path.db``,
``sqlite:relative.db?synchronous=full``. Third-party packages add schemes by declaring an entry
point in the group ``navistore.backends`` whose name is the scheme and whose object is a callable
taking a :class:`BackendURL` and returning an :class:`~navistore.interfaces.IStorageBackend`.
A factory may also have a ``check`` attribute, a callable taking the same :class:`BackendURL`
that raises :class:`BackendURLError` for a URL the factory would refuse, without opening
anything: :func:`check_backend` calls it while a node's options are parsed, so a bad option or
path fails the start before a port is bound.

Two composite schemes wrap other URLs (:mod:`navistore.backend.composite_url` has the syntax):
``cache:SIZE:URL`` (:mod:`navistore.backend.cache_tier`) and ``shards:URL;URL;...``
(:mod:`navistore.backend.shards`).
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote

import attrs

from navistore.interfaces import IStorageBackend

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendURL",
    "BackendURLError",
    "UnknownBackend",
    "check_backend",
    "display_url",
    "known_schemes",
    "open_backend",
    "parse_backend_url",
]

#: The entry-point group third-party backends register under.
ENTRY_POINT_GROUP = "navistore.backends"

_BUILTIN: dict[str, str] = {
    "memory": "navistore.backend.memory:open_memory",
    "sqlite": "navistore.backend.sqlite:open_sqlite",
    "http": "navistore.backend.http:open_http",
    "https": "navistore.backend.http:open_http",
    "postgresql": "navistore.backend.postgresql:open_postgresql",
    "postgres": "navistore.backend.postgresql:open_postgresql",
    "cache": "navistore.backend.cache_tier:open_cache",
    "shards": "navistore.backend.shards:open_shards",
}

#: What checks a built-in backend's URL without opening it (see :func:`check_backend`).
_BUILTIN_CHECKS: dict[str, str] = {
    "memory": "navistore.backend.memory:check_memory",
    "sqlite": "navistore.backend.sqlite:check_sqlite",
    "http": "navistore.backend.http:check_http",
    "https": "navistore.backend.http:check_http",
    "postgresql": "navistore.backend.postgresql:check_postgresql",
    "postgres": "navistore.backend.postgresql:check_postgresql",
    "cache": "navistore.backend.cache_tier:check_cache",
    "shards": "navistore.backend.shards:check_shards",
}

BackendFactory = Callable[["BackendURL"], Any]


class BackendURLError(ValueError):
    """A backend URL cannot be understood (bad syntax, option or value)."""


class UnknownBackend(BackendURLError):
    """No backend is registered for the URL's scheme; the message lists the known ones."""


@attrs.frozen
class BackendURL:
    """A parsed backend URL.

    :ivar scheme: lower-case scheme, e.g. ``sqlite``.
    :ivar location: what follows the scheme with ``//`` authority handling left to the backend;
        for ``sqlite:///a/b.db`` it is ``/a/b.db``, for ``sqlite:b.db`` it is ``b.db``.
    :ivar options: the query parameters (last one wins).
    :ivar text: the URL as given.
    """

    scheme: str
    location: str
    options: dict[str, str]
    text: str

    def option(self, name: str, default: str, allowed: tuple[str, ...] = ()) -> str:
        """Return an option's value (lower-cased when ``allowed`` is given), checking it."""
        value = self.options.get(name, default)
        if allowed:
            value = value.lower()
            if value not in allowed:
                raise BackendURLError(
                    f"{self.text}: option {name}={value!r} is not one of {', '.join(allowed)}"
                )
        return value

    def refuse_unknown_options(self, known: tuple[str, ...]) -> None:
        """Raise :class:`BackendURLError` naming any option the backend does not take."""
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            accepted = ", ".join(known) or "none"
            raise BackendURLError(
                f"{self.text}: unknown option(s) {', '.join(unknown)}; accepted: {accepted}"
            )


def parse_backend_url(text: str) -> BackendURL:
    """Split a backend URL into scheme, location and options."""
    scheme, colon, rest = text.partition(":")
    if not colon or not scheme or not scheme.replace("+", "").replace("-", "").isalnum():
        raise BackendURLError(
            f"{text!r} is not a backend URL (expected scheme:location, e.g. sqlite:navistore.db)"
        )
    location, _, query = rest.partition("?")
    if location.startswith("//"):
        # sqlite:///abs -> "/abs"; http://host:port keeps its authority for the backend to read.
        location = location[2:] if scheme.lower() in ("sqlite", "memory") else location
    options = dict(parse_qsl(query, keep_blank_values=True))
    return BackendURL(scheme.lower(), unquote(location), options, text)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    if sys.version_info >= (3, 10):
        found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    else:  # pragma: no cover - Python 3.9 (PyPy) returns a dict of groups
        found = metadata.entry_points().get(ENTRY_POINT_GROUP, [])
    return {entry.name.lower(): entry for entry in found}


def known_schemes() -> list[str]:
    """Every scheme :func:`open_backend` accepts: built-in ones and registered entry points."""
    return sorted(set(_BUILTIN) | set(_entry_points()))


def _load(reference: str) -> BackendFactory:
    module_name, _, attribute = reference.partition(":")
    factory: BackendFactory = getattr(importlib.import_module(module_name), attribute)
    return factory


def _factory(parsed: BackendURL) -> BackendFactory:
    if parsed.scheme in _BUILTIN:
        return _load(_BUILTIN[parsed.scheme])
    entry = _entry_points().get(parsed.scheme)
    if entry is None:
        raise UnknownBackend(
            f"no backend for scheme {parsed.scheme!r} in {parsed.text!r}; known schemes: "
            + ", ".join(known_schemes())
        )
    factory: BackendFactory = entry.load()
    return factory


def display_url(url: str) -> str:
    """``url`` as logs may show it: a password in it (``postgresql://user:secret@host/db``)
    replaced by ``***``, in every member of a composite (``cache:``, ``shards:``) too."""
    composite = url.split(":", 1)[0].lower()
    if composite == "shards":
        return "shards:" + ";".join(display_url(member) for member in url[7:].split(";"))
    if composite == "cache" and url.count(":") >= 2:
        scheme, spec, inner = url.split(":", 2)
        return f"{scheme}:{spec}:{display_url(inner)}"
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    authority, slash, path = rest.partition("/")
    credentials, at, host = authority.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"


def check_backend(url: str) -> None:
    """Refuse a URL the backend it names would refuse, without opening it: unknown scheme,
    options, values, or (for sqlite) a path this process cannot write. A third-party backend
    is checked when its factory has a ``check`` attribute; otherwise only its scheme is.

    :raises UnknownBackend: the scheme is not known; the message lists the known schemes.
    :raises BackendURLError: the URL or one of its options is invalid.
    """
    parsed = parse_backend_url(url)
    factory = _factory(parsed)
    if parsed.scheme in _BUILTIN_CHECKS:
        check: Callable[[BackendURL], object] | None = _load(_BUILTIN_CHECKS[parsed.scheme])
    else:
        check = getattr(factory, "check", None)
    if check is not None:
        check(parsed)


def open_backend(url: str) -> IStorageBackend:
    """Make the backend a URL names.

    :raises UnknownBackend: the scheme is not known; the message lists the known schemes.
    :raises BackendURLError: the URL or one of its options is invalid.
    """
    parsed = parse_backend_url(url)
    backend = _factory(parsed)(parsed)
    if not IStorageBackend.providedBy(backend):
        raise BackendURLError(f"{url}: the factory for {parsed.scheme!r} gave no IStorageBackend")
    return backend

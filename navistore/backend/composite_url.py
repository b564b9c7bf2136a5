"""The URL syntax of the composite backends: ``cache:`` in front of a backend, ``shards:`` over
several.

A member URL may itself contain ``:``, ``?``, ``&`` and ``/`` (``postgresql://u:p@h/db?x=1&y=2``),
so the composite's own parts come first and the members are never parsed by the composite:

- ``cache:SIZE:URL`` and ``cache:SIZE,max-age=SECONDS:URL``: everything after the second colon
  is the inner URL, exactly as written; SIZE has no colon (``65536``, ``64MiB``, ``2GB``).
- ``shards:URL;URL;...``: the member URLs separated by ``;``. No built-in URL needs a literal
  ``;``: a path or a password holding one writes it percent-encoded (``%3B``), which sqlite and
  libpq decode, so the split cannot be ambiguous. The order of the members is the layout: a key
  always goes to the same member of the same list.

Composites nest: ``cache:64MiB:shards:sqlite:a.db;sqlite:b.db`` caches over shards, and
``shards:cache:8MiB:sqlite:a.db;cache:8MiB:sqlite:b.db`` shards over caches. A ``shards:``
inside a ``shards:`` is refused: its members would be split by the outer list.
"""

from __future__ import annotations

import math
import re

import attrs

from navistore.backend import BackendURLError

__all__ = ["CacheURL", "parse_cache_url", "parse_shards_url", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}

_SIZE = re.compile(r"([0-9]+)\s*([a-z]*)\Z")


def parse_size(text: str) -> int:
    """A number of bytes, written as a whole number with an optional unit (``kB``, ``MB``,
    ``GB`` in powers of 1000; ``KiB``, ``MiB``, ``GiB`` in powers of 1024), at least 1."""
    found = _SIZE.match(text.strip().lower())
    if found is None or found.group(2) not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 65536, 64MiB, 2GB)")
    size = int(found.group(1)) * _UNITS[found.group(2)]
    if size < 1:
        raise ValueError(f"{text!r} is not a size of at least one byte")
    return size


@attrs.frozen
class CacheURL:
    """A parsed ``cache:`` URL.

    :ivar max_bytes: the bound of the cache.
    :ivar max_age: seconds after which everything cached is forgotten (None: never, for a
        backend that reports other writers' writes or has none).
    :ivar inner: the URL of the backend behind the cache, as written.
    """

    max_bytes: int
    max_age: float | None
    inner: str


def parse_cache_url(text: str) -> CacheURL:
    """Split ``cache:SIZE[,max-age=SECONDS]:URL``; BackendURLError says what is wrong."""
    scheme, _, rest = text.partition(":")
    assert scheme.lower() == "cache"
    spec, colon, inner = rest.partition(":")
    if not colon or not inner:
        raise BackendURLError(f"{text}: expected cache:SIZE:URL, e.g. cache:64MiB:sqlite:a.db")
    size_text, *settings = spec.split(",")
    try:
        max_bytes = parse_size(size_text)
    except ValueError as exc:
        raise BackendURLError(f"{text}: {exc}") from None
    max_age: float | None = None
    for setting in settings:
        name, equals, value = setting.partition("=")
        if name.strip().lower() != "max-age" or not equals:
            raise BackendURLError(f"{text}: unknown cache setting {setting!r}; accepted: max-age")
        try:
            max_age = float(value.strip().lower().removesuffix("s"))
        except ValueError:
            max_age = math.nan
        if not (math.isfinite(max_age) and max_age > 0):
            raise BackendURLError(f"{text}: max-age={value!r} is not a number of seconds above 0")
    return CacheURL(max_bytes, max_age, inner)


def parse_shards_url(text: str) -> list[str]:
    """The member URLs of ``shards:URL;URL;...``, at least two, none of them ``shards:``."""
    scheme, _, rest = text.partition(":")
    assert scheme.lower() == "shards"
    members = rest.split(";")
    if len(members) < 2:
        raise BackendURLError(
            f"{text}: expected at least two member URLs separated by ';', "
            "e.g. shards:sqlite:a.db;sqlite:b.db"
        )
    for number, member in enumerate(members, 1):
        if not member.strip():
            raise BackendURLError(f"{text}: member {number} is empty (a stray ';'?)")
        if member.split(":", 1)[0].strip().lower() == "shards":
            raise BackendURLError(f"{text}: a shards: URL cannot be a member of another")
    return members

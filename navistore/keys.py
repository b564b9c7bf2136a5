"""The key grammar: what a Navistore key may be, and what a prefix matches.

A key is a ``/``-separated path of UTF-8 segments such as ``/app/db/host``. The leading ``/`` is
optional on the wire and normalised here, so ``name`` and ``/name`` are the same key. Keys are
compared as strings; since Python compares code points and UTF-8 preserves code-point order, the
order used here is the byte order a database with a binary collation uses too.
"""

from __future__ import annotations

import unicodedata

__all__ = [
    "DEFAULT_MAX_KEY_BYTES",
    "RESERVED_EXCEPTIONS",
    "ROUTE_KEYS",
    "InvalidKey",
    "classic_form",
    "is_reserved",
    "key_in_prefix",
    "normalize_key",
    "normalize_prefix",
    "prefix_upper_bound",
]

#: The longest key, in UTF-8 bytes including the leading ``/``, accepted by default.
DEFAULT_MAX_KEY_BYTES = 1024

#: Reserved-looking first segments that are ordinary keys for compatibility with the classic API.
RESERVED_EXCEPTIONS = frozenset({"_replication_slaves"})

#: Paths the classic API routes to its endpoints, so that no client can reach them as keys.
ROUTE_KEYS = frozenset({"/listkeys", "/reset"})


class InvalidKey(ValueError):
    """A key or prefix breaks the grammar; the message says exactly how."""

    code = "invalid_key"

    def __init__(self, key: object, reason: str) -> None:
        super().__init__(f"invalid key {key!r}: {reason}")
        self.key = key
        self.reason = reason
        self.detail = {"reason": reason}


def _decode(raw: str | bytes) -> str:
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidKey(raw, f"not valid UTF-8 (byte {exc.start})") from None
    if not isinstance(raw, str):
        raise InvalidKey(raw, f"must be text, not {type(raw).__name__}")
    return raw


#: Unicode categories no key may hold: controls and surrogates, which no text should carry.
_NEVER = ("Cc", "Cs")
#: Format characters (bidi controls, zero-width characters, the BOM): invisible, so that
#: ``/app/\u200bdb`` would sit unseen beside ``/app/db``. Clients may not write them; records
#: stored before they were refused stay readable and deletable.
_FORMAT = "Cf"


def _check_segments(
    original: object, text: str, segments: list[str], *, allow_format: bool = False
) -> None:
    for position, segment in enumerate(segments, start=1):
        if segment == "":
            raise InvalidKey(original, f"segment {position} is empty (no '//' and no trailing '/')")
        if segment in (".", ".."):
            raise InvalidKey(original, f"segment {position} is {segment!r}")
    if text.isprintable():  # in C, and True only without control (Cc) or surrogate (Cs) chars
        return
    for index, char in enumerate(text):
        category = unicodedata.category(char)
        if category == _FORMAT and not allow_format:
            raise InvalidKey(
                original,
                f"invisible format character U+{ord(char):04X} at position {index} "
                "(a bidi control, zero-width character or byte order mark)",
            )
        if category in _NEVER:
            raise InvalidKey(
                original, f"control or surrogate character U+{ord(char):04X} at position {index}"
            )


def _check_length(original: object, canonical: str, max_bytes: int | None) -> None:
    if max_bytes is None:
        return
    try:
        size = len(canonical.encode("utf-8"))
    except UnicodeEncodeError:  # pragma: no cover - surrogates are refused before this
        raise InvalidKey(original, "not encodable as UTF-8") from None
    if size > max_bytes:
        raise InvalidKey(original, f"{size} bytes long, the limit is {max_bytes}")


def is_reserved(key: str) -> bool:
    """Tell whether a canonical key lies in the server's reserved namespace.

    Reserved keys have a first segment starting with ``_`` (``/_changes``, ``/_peers``); the
    classic ``/_replication_slaves`` is an exception because 2011 clients address it as a key.
    The classic routes ``/listkeys`` and ``/reset`` are reserved too: no request reaches them as
    keys, so none may be stored (a replicated or bulk-loaded one could never be read or
    deleted).
    """
    if key in ROUTE_KEYS:
        return True
    first = key[1:].split("/", 1)[0]
    return first.startswith("_") and first not in RESERVED_EXCEPTIONS


def normalize_key(
    raw: str | bytes,
    *,
    max_bytes: int | None = DEFAULT_MAX_KEY_BYTES,
    allow_reserved: bool = False,
    allow_format: bool = False,
) -> str:
    """Return the canonical form (leading ``/``) of a key, or raise :class:`InvalidKey`.

    :param max_bytes: the length limit in UTF-8 bytes of the canonical form; ``None`` for none.
    :param allow_reserved: accept keys in the reserved ``_`` namespace (the server's own use).
    :param allow_format: accept invisible format characters (storage does, for old records).
    """
    text = _decode(raw)
    body = text[1:] if text.startswith("/") else text
    if body == "":
        raise InvalidKey(raw, "empty")
    _check_segments(raw, text, body.split("/"), allow_format=allow_format)
    canonical = "/" + body
    _check_length(raw, canonical, max_bytes)
    if not allow_reserved and is_reserved(canonical):
        reason = (
            "it is a route of the classic API, not a key"
            if canonical in ROUTE_KEYS
            else "the first segment starts with '_', which is reserved for the server"
        )
        raise InvalidKey(raw, reason)
    return canonical


def normalize_prefix(raw: str | bytes, *, max_bytes: int | None = DEFAULT_MAX_KEY_BYTES) -> str:
    """Return the canonical form of a listing prefix, or raise :class:`InvalidKey`.

    A prefix is a plain string prefix of canonical keys: ``/a/`` matches ``/a/b`` and never
    ``/ab`` (document semantics), while ``/a`` matches ``/a``, ``/ab`` and ``/a/b``. The empty
    prefix and ``/`` match every key. Every complete segment obeys the key grammar; the last one
    may be empty (``/a/``) or partial (``/a/pa``).
    """
    text = _decode(raw)
    body = text[1:] if text.startswith("/") else text
    if body == "":
        return "/"
    # The last segment may be partial, so '.' or '..' there can begin a segment like '.hidden'.
    _check_segments(raw, text, body.split("/")[:-1])
    canonical = "/" + body
    _check_length(raw, canonical, max_bytes)
    return canonical


def key_in_prefix(key: str, prefix: str) -> bool:
    """Tell whether a canonical key is matched by a canonical prefix."""
    return key.startswith(prefix)


def prefix_upper_bound(prefix: str) -> str | None:
    """Return the smallest string greater than every string starting with ``prefix``.

    Range scans use ``prefix <= key < bound``; ``None`` means there is no upper bound (the
    prefix ends with the largest code point, which never happens for valid keys in practice).
    """
    stripped = prefix
    while stripped:
        last = stripped[-1]
        if ord(last) < 0x10FFFF:
            following = ord(last) + 1
            if 0xD800 <= following <= 0xDFFF:  # surrogates cannot be encoded: skip them
                following = 0xE000
            return stripped[:-1] + chr(following)
        stripped = stripped[:-1]
    return None


def classic_form(key: str) -> str:
    """Return a canonical key as the classic API spelled it: without the leading ``/``."""
    return key[1:]

"""Who may do what: bearer tokens, their permissions and key prefixes, and the tokens file.

A client proves who it is with ``Authorization: Bearer <secret>``. The tokens file (TOML) says
which secrets exist, what each may do and where::

    [[token]]
    name = "deploy"            # appears in logs, never the secret
    secret = "..."             # or sha256 = "<hex digest of the secret>", so the file holds none
    allow = ["read", "write"]  # any of: read, write, admin, peer, metrics
    prefixes = ["/app/"]       # optional; default every key

The node keeps only the SHA-256 digest of each secret and compares digests in constant time
(every token is compared, whatever matched), so neither the file nor the timing of an answer
gives a secret away. A malformed file is refused whole, naming its line: a node never runs with
half of its tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, NoReturn

import attrs

from navistore.keys import InvalidKey, normalize_prefix

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9 and 3.10 (PyPy 3.9)
    import tomli as tomllib

__all__ = [
    "ADMIN",
    "ALL_PERMISSIONS",
    "EVERY_KEY",
    "METRICS",
    "MIN_SECRET_LENGTH",
    "PEER",
    "PERMISSIONS",
    "READ",
    "WRITE",
    "Caller",
    "Token",
    "TokenFileError",
    "TokenSet",
    "load_tokens",
    "parse_permissions",
    "parse_tokens",
]

READ, WRITE, ADMIN, PEER = "read", "write", "admin", "peer"
#: Scraping ``/_metrics``: what a Prometheus server needs, and nothing more. ``admin`` grants
#: it too.
METRICS = "metrics"
#: Every permission, in the order the documentation lists them.
PERMISSIONS = (READ, WRITE, ADMIN, PEER, METRICS)
ALL_PERMISSIONS = frozenset(PERMISSIONS)


def _granted(allow: frozenset[str]) -> frozenset[str]:
    """The permissions ``allow`` grants: itself, and ``metrics`` with ``admin``."""
    return allow | {METRICS} if ADMIN in allow else allow


#: The prefixes of a caller that may reach every key.
EVERY_KEY = ("/",)

#: The shortest secret accepted: anything shorter can be guessed.
MIN_SECRET_LENGTH = 16

_FIELDS = frozenset({"name", "secret", "sha256", "allow", "prefixes"})
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}\Z")
_TOKEN_TABLE = re.compile(r"^[ \t]*\[\[[ \t]*token[ \t]*\]\]", re.MULTILINE)


class TokenFileError(ValueError):
    """The tokens file cannot be used; the message names the file and the line."""


def digest_of(secret: str) -> bytes:
    """The SHA-256 digest a secret is known by."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _covers(prefixes: Sequence[str], key: str) -> bool:
    return any(key.startswith(prefix) for prefix in prefixes)


def _narrowest(prefixes: Iterable[str]) -> tuple[str, ...]:
    """The prefixes without those another one already covers, sorted."""
    ordered = sorted(set(prefixes))
    kept: list[str] = []
    for prefix in ordered:
        if not _covers(kept, prefix):
            kept.append(prefix)
    return tuple(kept)


@attrs.frozen
class Caller:
    """Who asks, as far as permissions go: a token, or what the node grants without one.

    :ivar name: the token's name, or ``anonymous`` (no token, ``--anonymous``), ``protected``
        (a loopback caller of a node without tokens) or ``open`` (``--open``); it appears in the
        audit log, never a secret.
    :ivar allow: the permissions.
    :ivar prefixes: where the caller may read and write keys (``("/",)``: every key).
    """

    name: str
    allow: frozenset[str]
    prefixes: tuple[str, ...] = EVERY_KEY
    #: May do anything anywhere (a node without tokens, an all-powerful token): the request path
    #: skips the checks for it.
    unrestricted: bool = attrs.field(init=False, repr=False)

    @unrestricted.default
    def _unrestricted(self) -> bool:
        return _granted(self.allow) >= ALL_PERMISSIONS and "/" in self.prefixes

    def may(self, permission: str) -> bool:
        """Whether the caller holds ``permission`` (``admin`` holds ``metrics`` too)."""
        return permission in self.allow or (permission == METRICS and ADMIN in self.allow)

    def covers(self, key: str) -> bool:
        """Whether ``key`` (or a canonical prefix) lies inside the caller's prefixes."""
        return self.prefixes is EVERY_KEY or _covers(self.prefixes, key)

    @property
    def everywhere(self) -> bool:
        """Whether the caller reaches every key."""
        return "/" in self.prefixes

    def visible(self, prefix: str) -> tuple[str, ...]:
        """The parts of the canonical ``prefix`` the caller may see, as disjoint prefixes in key
        order: ``prefix`` itself when it lies inside the caller's prefixes, else the caller's
        prefixes that lie inside it (none: the caller sees nothing there)."""
        if self.covers(prefix):
            return (prefix,)
        return tuple(mine for mine in self.prefixes if mine.startswith(prefix))


@attrs.frozen
class Token:
    """One token of the tokens file (its secret known only by its digest)."""

    name: str
    digest: bytes = attrs.field(repr=False)
    allow: frozenset[str]
    prefixes: tuple[str, ...] = EVERY_KEY

    def caller(self) -> Caller:
        """The caller a request carrying this token is."""
        return Caller(self.name, self.allow, self.prefixes)


@attrs.frozen
class TokenSet:
    """The tokens a node accepts, looked up by secret in constant time."""

    tokens: tuple[Token, ...] = ()
    source: str = ""

    def find(self, secret: str) -> Token | None:
        """The token whose secret this is, or None.

        Every token's digest is compared, with ``hmac.compare_digest``, whether or not an
        earlier one matched, so the time taken says nothing about which (or whether) one did.
        """
        wanted = digest_of(secret)
        found: Token | None = None
        for token in self.tokens:
            if hmac.compare_digest(token.digest, wanted) and found is None:
                found = token
        return found

    def __len__(self) -> int:
        return len(self.tokens)


def parse_permissions(text: str | Iterable[str], where: str = "permissions") -> frozenset[str]:
    """Permissions from a comma-separated text (``read,write``) or a list; ``none`` is none.

    :raises ValueError: an unknown permission, naming it.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = {str(item).strip().lower() for item in items} - {"", "none"}
    unknown = sorted(names - ALL_PERMISSIONS)
    if unknown:
        raise ValueError(
            f"{where}: unknown permission(s) {', '.join(unknown)}; known: {', '.join(PERMISSIONS)}"
        )
    return frozenset(names)


def _line_of(text: str, block_starts: list[int], index: int, field: str | None) -> int:
    """The line (from 1) of the ``index``-th ``[[token]]`` table, or of its ``field`` in it."""
    if index >= len(block_starts):
        return 1
    start = block_starts[index]
    end = block_starts[index + 1] if index + 1 < len(block_starts) else len(text)
    position = start
    if field is not None:
        pattern = re.compile(rf"^[ \t]*{re.escape(field)}[ \t]*=", re.MULTILINE)
        found = pattern.search(text, start, end)
        if found:
            position = found.start()
    return text.count("\n", 0, position) + 1


def _token(entry: Any, index: int, fail: Callable[[int, str | None, str], NoReturn]) -> Token:
    if not isinstance(entry, dict):
        fail(index, None, "each [[token]] must be a table")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        fail(index, unknown[0], f"unknown field(s) {', '.join(unknown)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip() or not name.isprintable():
        fail(index, "name", "name must be a non-empty printable text")
    if ("secret" in entry) == ("sha256" in entry):
        fail(index, None, f"token {name!r}: give exactly one of secret or sha256")
    if "secret" in entry:
        secret = entry["secret"]
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
            fail(
                index,
                "secret",
                f"token {name!r}: a secret is text of at least {MIN_SECRET_LENGTH} characters",
            )
        digest = digest_of(secret)
    else:
        hexdigest = entry["sha256"]
        if not isinstance(hexdigest, str) or not _HEX_DIGEST.match(hexdigest.lower()):
            fail(index, "sha256", f"token {name!r}: sha256 must be 64 hexadecimal digits")
        digest = bytes.fromhex(hexdigest)
    allow = entry.get("allow")
    if not isinstance(allow, list) or not allow or not all(isinstance(a, str) for a in allow):
        fail(index, "allow", f"token {name!r}: allow must be a list of permissions")
    try:
        permissions = parse_permissions(allow, f"token {name!r}")
    except ValueError as exc:
        fail(index, "allow", str(exc))
    prefixes = entry.get("prefixes", ["/"])
    if not isinstance(prefixes, list) or not prefixes:
        fail(index, "prefixes", f"token {name!r}: prefixes must be a non-empty list")
    canonical = []
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix.endswith("/"):
            fail(
                index,
                "prefixes",
                f"token {name!r}: prefix {prefix!r} must end with '/' (e.g. '/app/'), so that "
                "it never covers a sibling such as '/apple'",
            )
        try:
            canonical.append(normalize_prefix(prefix, max_bytes=None))
        except InvalidKey as exc:
            fail(index, "prefixes", f"token {name!r}: {exc}")
    return Token(name, digest, permissions, _narrowest(canonical))


def parse_tokens(text: str, source: str = "tokens file") -> TokenSet:
    """Parse the tokens file's text; refuse the whole file at the first fault.

    :raises TokenFileError: ``<source>:<line>: <what is wrong>``.
    """
    block_starts = [found.start() for found in _TOKEN_TABLE.finditer(text)]

    def fail(index: int, field: str | None, message: str) -> NoReturn:
        line = _line_of(text, block_starts, index, field)
        raise TokenFileError(f"{source}:{line}: {message}")

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        line = found.group(1) if found else "1"
        raise TokenFileError(f"{source}:{line}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"token"})
    if unknown:
        raise TokenFileError(
            f"{source}:1: unknown table(s) {', '.join(unknown)}; the file holds [[token]] tables"
        )
    entries = document.get("token", [])
    if not isinstance(entries, list):
        raise TokenFileError(f"{source}:1: token must be an array of tables ([[token]])")
    tokens: list[Token] = []
    for index, entry in enumerate(entries):
        token = _token(entry, index, fail)
        if any(other.name == token.name for other in tokens):
            fail(index, "name", f"token {token.name!r} is named twice")
        if any(hmac.compare_digest(other.digest, token.digest) for other in tokens):
            fail(index, None, f"token {token.name!r} has the same secret as another token")
        tokens.append(token)
    return TokenSet(tuple(tokens), source)


def load_tokens(path: str | Path) -> TokenSet:
    """Read and parse the tokens file at ``path``.

    :raises TokenFileError: it cannot be read, or it is malformed.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{path}: cannot be read: {exc}") from None
    return parse_tokens(text, str(path))

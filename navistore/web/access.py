"""Who asks, and whether they may: tokens, protected mode, browsers, and the audit log.

Every request is checked here before any work is done (:meth:`AccessPolicy.caller`, then
:meth:`AccessPolicy.check`):

1. **Who asks** (:meth:`AccessPolicy.caller`). With a tokens file, a request carries
   ``Authorization: Bearer <secret>`` and is that token; one without is ``anonymous`` (with the
   ``--anonymous`` permissions, none by default); a secret the node does not know is 401.
   Without a tokens file the node is in *protected mode*: it answers only callers on loopback
   (127.0.0.0/8, ::1, unix sockets) whose ``Host`` is a loopback name (or one allowed with
   ``--allowed-host``, against DNS rebinding), and refuses the rest with 403 ``protected_mode``;
   ``--open`` serves everyone.
2. **What the route needs** (:func:`need_of`, the one table of :data:`ENDPOINT_PERMISSIONS`):
   ``read`` for keys, listings and feeds (which then show only the caller's prefixes),
   ``write`` for writes of keys inside the caller's prefixes, ``admin`` for node-level endpoints
   and a recursive delete of ``/``, ``peer`` for replication and the backend RPC, ``metrics``
   (or ``admin``) for ``/_metrics``; ``/_health`` and ``/_ready`` need nothing.
3. **Browsers**: a state-changing request from a web page of another origin (``Origin`` not
   allowed with ``--cors-origin``, or ``Sec-Fetch-Site: cross-site``) is 403 ``cross_origin``;
   allowed origins get CORS answers, preflights included.

Writes and admin actions are written to the audit log, one JSON line each, when it is on.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterable
from typing import IO, Callable
from urllib.parse import urlsplit

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.server import Request

from navistore.tokens import (
    ADMIN,
    ALL_PERMISSIONS,
    METRICS,
    PEER,
    READ,
    WRITE,
    Caller,
    TokenSet,
)
from navistore.web.errors import ApiError

__all__ = [
    "ENDPOINT_PERMISSIONS",
    "AccessPolicy",
    "AuditLog",
    "Need",
    "admitted_caller",
    "caller_of",
    "describe_policy",
    "need_of",
]

#: The permission each server endpoint needs (None: anyone the node answers at all).
#: An endpoint missing from this table needs ``admin``: a new endpoint is closed until listed.
ENDPOINT_PERMISSIONS: dict[str, str | None] = {
    "_health": None,
    "_ready": None,
    "_metrics": METRICS,
    "_openapi.json": None,
    "_ui": None,  # the page holds no data; its API calls carry the person's token
    "_keys": READ,
    "_changes": READ,
    "_conflicts": READ,
    "listkeys": READ,
    "_bulk": WRITE,
    "_txn": WRITE,
    "_export": READ,
    "_import": WRITE,
    "_backup": ADMIN,
    "reset": ADMIN,
    "_peers": ADMIN,
    "_replication_slaves": ADMIN,
    "_replicate": PEER,
    "_backend_get": PEER,
    "_backend_apply": PEER,
    "_backend_scan": PEER,
    "_backend_changes": PEER,
    "_backend_last_seq": PEER,
    "_backend_purge": PEER,
    "_backend_reset": PEER,
    "_backend_meta": PEER,
}

#: Methods that change nothing, which a web page of another origin may send.
_SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")
#: What a browser may send and read across origins, once the origin is allowed.
_CORS_METHODS = b"GET, HEAD, PUT, POST, DELETE, OPTIONS"
_CORS_HEADERS = b"Authorization, Content-Type, If-Match, If-None-Match, Last-Event-ID"
_CORS_EXPOSED = (
    b"ETag, Last-Modified, X-Navistore-Seq, X-Navistore-Source, X-Navistore-Stale-Seconds"
)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})
_ATTRIBUTE = "_navistore_caller"
#: Who asks a node without tokens: anyone (``--open``), or a caller on this machine.
_OPEN = Caller("open", ALL_PERMISSIONS)
_PROTECTED = Caller("protected", ALL_PERMISSIONS)


@attrs.frozen
class Need:
    """What a request needs.

    :ivar permission: the permission (None: none; anyone the node answers at all may).
    :ivar key: a key (or a prefix deleted) that must lie inside the caller's prefixes; None
        for endpoints, and for listings and feeds, which show only the caller's prefixes.
    :ivar changes: the request changes the node (a write, or ``GET /reset``): the browser rules
        apply to it, and the audit log records it.
    """

    permission: str | None
    key: str | None = None
    changes: bool = False


def need_of(
    method: bytes, path: str, *, endpoint: str | None, prefix: bool, recursive: bool
) -> Need:
    """What a request needs, from its method and its decoded path.

    :param endpoint: the endpoint's name when the path names one, else None (a key or prefix).
    :param prefix: the path names a prefix (a listing, or a recursive delete).
    :param recursive: ``?recursive=true``.
    """
    changes = method not in _SAFE_METHODS
    if endpoint is not None:
        permission = ENDPOINT_PERMISSIONS.get(endpoint, ADMIN)
        return Need(permission, None, changes or endpoint == "reset")
    if not changes:
        return Need(READ, None if prefix else path)
    if prefix and recursive and path == "/":
        return Need(ADMIN, None, True)
    return Need(WRITE, path, True)


def admitted_caller(request: object) -> Caller | None:
    """The caller ``request`` was admitted as, or None if it was refused or never checked (the
    access log names callers, and must not name a refused one as anyone)."""
    caller: Caller | None = getattr(request, _ATTRIBUTE, None)
    return caller


def caller_of(request: Request) -> Caller:
    """The caller :meth:`AccessPolicy.check` admitted ``request`` as (open when nothing checked
    it: a handler called directly, in tests)."""
    caller: Caller | None = getattr(request, _ATTRIBUTE, None)
    return caller if caller is not None else _OPEN


def _is_loopback_address(address: object) -> bool:
    if isinstance(address, UNIXAddress):
        return True
    if isinstance(address, (IPv4Address, IPv6Address)):
        try:
            return ipaddress.ip_address(address.host.split("%", 1)[0]).is_loopback
        except ValueError:
            return False
    return False


def _host_name(header: bytes | None) -> str | None:
    """The host of a ``Host`` header, lower-cased, without port or brackets."""
    if not header:
        return None
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else None
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _is_loopback_name(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin_of(text: str) -> str | None:
    """``scheme://host[:port]`` of an origin or URL, lower-cased; None for ``null``."""
    parts = urlsplit(text.strip())
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


class AuditLog:
    """Writes one JSON line per write or admin action: who, from where, what, the status."""

    def __init__(self, stream: IO[str], clock: Callable[[], float] = time.time) -> None:
        self._stream = stream
        self._clock = clock

    def record(self, request: Request, caller: Caller, target: str) -> None:
        """Log ``request`` once its answer is done (its status known, or its client gone)."""
        started = self._clock()

        def done(result: object) -> object:
            address = request.getClientAddress()
            entry = {
                "time": round(started, 3),
                "caller": caller.name,
                "from": getattr(address, "host", None) or str(getattr(address, "name", "")),
                "method": request.method.decode("latin-1"),
                "target": target,
                "status": request.code,
            }
            self._stream.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._stream.flush()
            return None

        request.notifyFinish().addBoth(done)

    def close(self) -> None:
        """Close the log's file (at shutdown)."""
        self._stream.close()


class AccessPolicy:
    """Who may do what on one node; see the module docstring.

    :param tokens: the tokens file's tokens, or None for a node without tokens (protected
        mode, or open with ``open_mode``).
    :param anonymous: what a request without a token may do when there are tokens.
    :param open_mode: without tokens, serve every caller (``--open``).
    :param allowed_hosts: more ``Host`` names protected mode accepts from loopback callers.
    :param cors_origins: the web origins whose pages may send state-changing requests.
    :param audit: where writes and admin actions are logged, or None.
    """

    def __init__(
        self,
        *,
        tokens: TokenSet | None = None,
        anonymous: Iterable[str] = (),
        open_mode: bool = False,
        allowed_hosts: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
        audit: AuditLog | None = None,
    ) -> None:
        self.tokens = tokens
        self.anonymous = Caller("anonymous", frozenset(anonymous))
        self.open_mode = open_mode
        self.allowed_hosts = frozenset(host.lower().strip("[]") for host in allowed_hosts)
        origins = (_origin_of(origin) for origin in cors_origins)
        self.cors_origins = frozenset(origin for origin in origins if origin is not None)
        self.audit = audit
        self._known_loopback: dict[tuple[object, bytes | None], bool] = {}

    @classmethod
    def open(cls) -> AccessPolicy:
        """A policy that serves everyone everything (``--open``; tests)."""
        return cls(open_mode=True)

    @property
    def protected(self) -> bool:
        """Whether the node is in protected mode (no tokens, not open)."""
        return self.tokens is None and not self.open_mode

    # -- who asks -----------------------------------------------------------------------------

    def caller(self, request: Request, *, secret: str | None = None) -> Caller:
        """Who ``request`` comes from; raise the 401 or 403 that refuses it outright.

        :param secret: a token secret the request carries in another API's way (Consul's
            ``X-Consul-Token``), used when it has no ``Authorization`` header.
        """
        if self.tokens is not None:
            header = request.getHeader(b"Authorization")
            if header is None and not secret:
                return self.anonymous
            if header is None:
                token = self.tokens.find(secret or "")
            else:
                scheme, _, sent = header.decode("latin-1").strip().partition(" ")
                token = self.tokens.find(sent.strip()) if scheme.lower() == "bearer" else None
            if token is None:
                raise self._unauthorized("the token is not one this node knows")
            return token.caller()
        if self.open_mode:
            return _OPEN
        if not self._from_loopback(request):
            raise ApiError(
                403,
                "protected_mode",
                "this node has no tokens, so it answers only requests from this machine; "
                "give it a tokens file (--tokens FILE) to serve the network, or --open to "
                "serve everyone without tokens",
            )
        return _PROTECTED

    def _from_loopback(self, request: Request) -> bool:
        address = request.getClientAddress()
        raw_host = request.getHeader(b"Host")
        # Decided once per (client host, Host header): parsing both costs more than a GET.
        seen = (getattr(address, "host", None) or type(address).__name__, raw_host)
        known = self._known_loopback.get(seen)
        if known is None:
            host = _host_name(raw_host)
            known = _is_loopback_address(address) and (
                host is None  # HTTP/1.0 without Host: no browser sends that
                or _is_loopback_name(host)
                or host in self.allowed_hosts
            )
            if len(self._known_loopback) >= 4096:
                self._known_loopback.clear()
            self._known_loopback[seen] = known
        return known

    @staticmethod
    def _unauthorized(message: str) -> ApiError:
        return ApiError(
            401,
            "unauthorized",
            message,
            None,
            {b"WWW-Authenticate": b'Bearer realm="navistore"'},
        )

    # -- whether they may ---------------------------------------------------------------------

    @staticmethod
    def remember(request: Request, caller: Caller) -> None:
        """Keep ``caller`` with ``request`` for its handlers (:func:`caller_of`)."""
        setattr(request, _ATTRIBUTE, caller)

    def check(self, request: Request, caller: Caller, need: Need) -> None:
        """Check that ``caller`` may make ``request``, which needs ``need``; remember the caller
        for the handlers (:func:`caller_of`) and audit the request if it changes the node.

        :raises ApiError: 401 for an anonymous caller lacking the permission, 403 ``forbidden``
            for a permission or a key another caller lacks, 403 ``cross_origin``.
        """
        if need.changes:
            self.refuse_cross_origin(request)
            if self.audit is not None:  # refused or not, with the status it gets
                self.audit.record(request, caller, need.key or request.path.decode("latin-1"))
        setattr(request, _ATTRIBUTE, caller)
        permission = need.permission
        if permission is not None and not caller.may(permission):
            if caller is self.anonymous:
                raise self._unauthorized(f"this needs the {permission!r} permission: send a token")
            raise ApiError(
                403,
                "forbidden",
                f"{caller.name} may not do this: it needs the {permission!r} permission",
                {"caller": caller.name, "permission": permission},
            )
        if need.key is not None and not caller.covers(need.key):
            raise ApiError(
                403,
                "forbidden",
                f"{caller.name} may not reach {need.key!r}: it is outside its prefixes",
                {"caller": caller.name, "key": need.key, "prefixes": list(caller.prefixes)},
            )

    # -- browsers -----------------------------------------------------------------------------

    def _own_origin(self, request: Request) -> str | None:
        host = request.getHeader(b"Host")
        if not host:
            return None
        scheme = "https" if request.isSecure() else "http"
        return f"{scheme}://{host.decode('latin-1').strip().lower()}"

    def _allowed_origin(self, request: Request) -> str | None:
        """The request's ``Origin`` when it may act here, else None."""
        raw = request.getHeader(b"Origin")
        if raw is None:
            return None
        origin = _origin_of(raw.decode("latin-1"))
        if origin is not None and (
            origin in self.cors_origins or origin == self._own_origin(request)
        ):
            return origin
        return None

    def allow_origin(self, request: Request) -> None:
        """Give an allowed web origin the CORS headers that let its page read the answer."""
        if not self.cors_origins:
            return
        origin = self._allowed_origin(request)
        if origin is not None and origin in self.cors_origins:
            headers = request.responseHeaders
            headers.setRawHeaders(b"Access-Control-Allow-Origin", [origin.encode("latin-1")])
            headers.addRawHeader(b"Vary", b"Origin")
            headers.setRawHeaders(b"Access-Control-Expose-Headers", [_CORS_EXPOSED])

    def refuse_cross_origin(self, request: Request) -> None:
        """Refuse a change sent by a web page of an origin that is not allowed."""
        if request.getHeader(b"Origin") is not None:
            if self._allowed_origin(request) is None:
                raise self._cross_origin()
        elif (request.getHeader(b"Sec-Fetch-Site") or b"").lower() == b"cross-site":
            raise self._cross_origin()

    @staticmethod
    def _cross_origin() -> ApiError:
        return ApiError(
            403,
            "cross_origin",
            "a web page of another origin may not change this node; allow its origin with "
            "--cors-origin if it should",
        )

    def preflight(self, request: Request) -> dict[bytes, bytes]:
        """The headers answering a CORS preflight (``OPTIONS`` with an allowed ``Origin``);
        403 ``cross_origin`` for an origin not allowed."""
        origin = self._allowed_origin(request)
        if origin is None:
            raise self._cross_origin()
        return {
            b"Access-Control-Allow-Origin": origin.encode("latin-1"),
            b"Access-Control-Allow-Methods": _CORS_METHODS,
            b"Access-Control-Allow-Headers": _CORS_HEADERS,
            b"Access-Control-Max-Age": b"600",
            b"Vary": b"Origin",
        }


def describe_policy(policy: AccessPolicy) -> str:
    """One line saying how the node decides who may do what (for the start-up log)."""
    if policy.tokens is not None:
        anonymous = ",".join(sorted(policy.anonymous.allow)) or "nothing"
        return f"{len(policy.tokens)} token(s) from {policy.tokens.source}; anonymous: {anonymous}"
    if policy.open_mode:
        return "OPEN: every caller may read, write and administer this node (--open)"
    return "protected mode: only callers on this machine are answered (no --tokens)"

"""``twistd navistore``: the command-line options and the service they make.

Run a node with ``twistd -n navistore --port tcp:8888 --backend sqlite:navistore.db``. ``--port``
takes any Twisted server endpoint string and may be given several times. The plugin that makes
``twistd`` find this module is ``twisted/plugins/navistore_plugin.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.python import usage
from twisted.python.failure import Failure

from navistore import version_line
from navistore.backend import BackendURLError, known_schemes, parse_backend_url
from navistore.clock import DEFAULT_MAX_DRIFT_MS
from navistore.daemon import NavistoreService
from navistore.keys import DEFAULT_MAX_KEY_BYTES
from navistore.node import DEFAULT_BACKEND, DEFAULT_ENDPOINTS, NodeConfig
from navistore.peer_urls import InvalidPeer, normalize_peer_url
from navistore.replication.gc import DEFAULT_RETENTION
from navistore.tokens import MIN_SECRET_LENGTH, TokenFileError, load_tokens, parse_permissions
from navistore.watch_hub import DEFAULT_MAX_WATCHERS
from navistore.web import DEFAULT_LIMITS, DEFAULT_MAX_VALUE_SIZE, ConnectionLimits
from navistore.web.send_budget import DEFAULT_SEND_BUFFER

__all__ = ["Options", "check_backend_url", "makeService", "node_config"]

#: Exit status of a process whose node could not start after twistd began running it.
STARTUP_FAILED = 1

#: Exit status of ``twistd navistore`` (and ``nhttpserver``) given options it refuses.
USAGE_ERROR = 1


def _positive_int(text: str) -> int:
    """Coerce an option to an integer of at least 1, or say why not."""
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise ValueError(f"{number} is not positive")
    return number


_positive_int.coerceDoc = "A whole number of bytes, at least 1."  # type: ignore[attr-defined]


def _seconds(text: str) -> float:
    """Coerce an option to a number of seconds, at least 0."""
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not seconds >= 0:
        raise ValueError(f"{text} is not a number of seconds >= 0")
    return seconds


_seconds.coerceDoc = "A number of seconds, at least 0."  # type: ignore[attr-defined]


def _positive_seconds(text: str) -> float:
    """Coerce an option to a number of seconds above 0."""
    seconds = _seconds(text)
    if seconds == 0:
        raise ValueError("0 is not a number of seconds > 0")
    return seconds


_positive_seconds.coerceDoc = "A number of seconds above 0."  # type: ignore[attr-defined]


def _count(text: str) -> int:
    """Coerce an option to a count of at least 1."""
    return _positive_int(text)


_count.coerceDoc = "A whole number, at least 1."  # type: ignore[attr-defined]


def check_backend_url(url: str) -> None:
    """Refuse a backend URL that cannot name a backend: bad syntax or an unknown scheme.

    This runs while the options are parsed, so a mistyped URL is a usage error reported before
    anything starts. The backend's own options are checked when it is made, at start.

    :raises usage.UsageError: with the reason and, for an unknown scheme, the known ones.
    """
    try:
        scheme = parse_backend_url(url).scheme
    except BackendURLError as exc:
        raise usage.UsageError(f"--backend: {exc}") from None
    known = known_schemes()
    if scheme not in known:
        raise usage.UsageError(
            f"--backend: no backend for scheme {scheme!r} in {url!r}; known schemes: "
            + ", ".join(known)
        )


class Options(usage.Options):
    """The options of ``twistd navistore``."""

    def opt_version(self) -> None:
        """Print Navistore's version (and Twisted's, Python's) and exit."""
        print(version_line())
        sys.exit(0)

    synopsis = "[--port ENDPOINT]... [--backend URL] [--peer URL]... [options]"
    longdesc = (
        "Run a Navistore node: a replicated HTTP key/value store. Endpoints are Twisted "
        "server endpoint strings (tcp:8888, tcp:8888:interface=127.0.0.1, "
        "ssl:8443:privateKey=key.pem, unix:/run/navistore.sock). Backends are URLs: "
        "memory:, sqlite:navistore.db (relative to the working directory), "
        "sqlite:///var/lib/navistore/store.db, sqlite:store.db?synchronous=full."
    )

    optParameters = [
        [
            "backend",
            "b",
            DEFAULT_BACKEND,
            "Where the data lives, as a backend URL.",
        ],
        [
            "max-value-size",
            None,
            DEFAULT_MAX_VALUE_SIZE,
            "The largest value (request body) accepted, in bytes.",
            _positive_int,
        ],
        [
            "max-key-bytes",
            None,
            DEFAULT_MAX_KEY_BYTES,
            "The longest key accepted, in bytes of UTF-8.",
            _positive_int,
        ],
        [
            "max-watchers",
            None,
            DEFAULT_MAX_WATCHERS,
            "The most concurrent watches (long-polls, event streams, ?wait); more get 503.",
            _positive_int,
        ],
        [
            "tombstone-retention",
            None,
            DEFAULT_RETENTION,
            "Seconds a delete's tombstone is kept at least (and until every peer has it).",
            _seconds,
        ],
        [
            "tokens",
            None,
            None,
            "The tokens file (TOML) saying who may do what; without it the node answers only "
            "this machine (protected mode). SIGHUP reloads it.",
        ],
        [
            "anonymous",
            None,
            None,
            "What a request without a token may do, with --tokens: permissions among read, "
            "write, admin, peer, comma-separated (default: none).",
        ],
        [
            "audit-log",
            None,
            None,
            "Log every write and admin action to this file, one JSON line each.",
        ],
        [
            "peer-token-file",
            None,
            None,
            "A file holding the secret this node presents to its peers, clone source and "
            "upstream (or set $NAVISTORE_PEER_TOKEN; --peer-token shows it in ps).",
        ],
        ["peer-token", None, None, "The peer secret itself (visible to ps: prefer the file)."],
        [
            "peer-ca",
            None,
            None,
            "Certificates (PEM) https peers must present one signed by (default: the system's).",
        ],
        [
            "peer-cert",
            None,
            None,
            "A client certificate (PEM) presented to https peers, for mutual TLS.",
        ],
        ["peer-key", None, None, "The private key (PEM) of --peer-cert."],
        [
            "max-clock-drift",
            None,
            DEFAULT_MAX_DRIFT_MS / 1000,
            "Seconds a replicated record's stamp may lie ahead of this node's clock.",
            _seconds,
        ],
        [
            "header-timeout",
            None,
            DEFAULT_LIMITS.header_timeout,
            "Seconds from a request's first byte to the end of its headers; later: 408.",
            _positive_seconds,
        ],
        [
            "min-body-rate",
            None,
            DEFAULT_LIMITS.min_body_rate,
            "Bytes a second a request body must average after its first "
            f"{DEFAULT_LIMITS.body_grace:g} s; slower: 408.",
            _positive_int,
        ],
        [
            "idle-timeout",
            None,
            DEFAULT_LIMITS.idle_timeout,
            "Seconds a connection may sit with nothing moving either way before it is closed.",
            _positive_seconds,
        ],
        [
            "max-connections",
            None,
            None,
            "The most client connections at once (default: the file-descriptor limit less a "
            "reserve); the longest idle one makes room, else 503.",
            _count,
        ],
        [
            "max-send-buffer",
            None,
            DEFAULT_SEND_BUFFER,
            "Bytes that clients not reading their answers may hold together; past it large "
            "reads wait.",
            _positive_int,
        ],
    ]

    optFlags = [
        ["read-fallback", None, "Before answering 404, ask the peers for the key."],
        [
            "serve-backend",
            None,
            "Serve this node's storage as the http:// backend of one other process "
            "(a dedicated node: that process's reset wipes it).",
        ],
        [
            "open",
            None,
            "Serve every caller without tokens, from any host (the classic LAN mode); "
            "logged as a warning at start.",
        ],
    ]

    compData = usage.Completions(optActions={"backend": usage.CompleteFiles("*.db")})

    def __init__(self) -> None:
        super().__init__()
        self["port"] = []
        self["peer"] = []
        self["allowed-host"] = []
        self["cors-origin"] = []

    def opt_allowed_host(self, host: str) -> None:
        """In protected mode, accept this Host name too from callers on this machine
        (repeatable; loopback names are always accepted)."""
        self["allowed-host"].append(host.strip().lower())

    def opt_cors_origin(self, origin: str) -> None:
        """Let web pages of this origin (https://ui.example:8443) change the node and read its
        answers (repeatable); other origins' writes are refused."""
        if "://" not in origin:
            raise usage.UsageError(f"--cors-origin: {origin!r} is not an origin (scheme://host)")
        self["cors-origin"].append(origin.rstrip("/"))

    def opt_port(self, endpoint: str) -> None:
        """Listen on this Twisted endpoint string (repeatable; default tcp:8888)."""
        self["port"].append(endpoint)

    opt_p = opt_port

    def opt_peer(self, url: str) -> None:
        """Replicate every write to the node at this URL, e.g. http://10.0.0.2:8888
        (repeatable; added to the peers this node already keeps)."""
        try:
            self["peer"].append(normalize_peer_url(url))
        except InvalidPeer as exc:
            raise usage.UsageError(f"--peer: {exc}") from None

    def opt_upstream(self, url: str) -> None:
        """Be a read-through cache of the node at this URL: reads are served from local
        copies or fetched from it, writes are forwarded to it."""
        try:
            self["upstream"] = normalize_peer_url(url)
        except InvalidPeer as exc:
            raise usage.UsageError(f"--upstream: {exc}") from None

    def opt_clone_from(self, url: str) -> None:
        """Pull the whole state of the node at this URL, then keep in step with it."""
        try:
            self["clone-from"] = normalize_peer_url(url)
        except InvalidPeer as exc:
            raise usage.UsageError(f"--clone-from: {exc}") from None

    def parseOptions(self, options: Any = None) -> None:
        """Parse like usage.Options; a usage error under twistd also makes the process fail.

        twistd before Twisted 26.10 (so every Twisted on Python 3.9 and PyPy 3.9) prints a usage
        error and then exits 0. When twistd parses these options as its ``navistore`` command
        (``parent`` is then twistd's own options), the process exits USAGE_ERROR once twistd has
        printed why; parsed on their own (tests, tools) they just raise, as before.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError:
            if self.parent is not None:
                _exit_after_twistd(USAGE_ERROR)
            raise

    def postOptions(self) -> None:
        """Fill in the default endpoint and refuse a backend URL that names no backend."""
        if not self["port"]:
            self["port"] = list(DEFAULT_ENDPOINTS)
        self.setdefault("clone-from", None)
        self.setdefault("upstream", None)
        if self["upstream"] is not None and (
            self["peer"] or self["clone-from"] or self["read-fallback"]
        ):
            raise usage.UsageError(
                "--upstream makes a cache node, which has no peers of its own: it cannot be "
                "combined with --peer, --clone-from or --read-fallback"
            )
        check_backend_url(self["backend"])
        self["peer-token"] = _peer_token(self)
        if self["tokens"] is not None:
            try:
                load_tokens(self["tokens"])
            except TokenFileError as exc:
                raise usage.UsageError(f"--tokens: {exc}") from None
        try:
            self["anonymous"] = parse_permissions(self["anonymous"] or "", "--anonymous")
            node_config(self)
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None


#: The environment variable a peer secret may come from (not visible in ``ps``).
PEER_TOKEN_ENV = "NAVISTORE_PEER_TOKEN"


def _peer_token(options: Options) -> str | None:
    """The peer secret from ``--peer-token``, ``--peer-token-file`` or the environment."""
    given = [name for name in ("peer-token", "peer-token-file") if options[name] is not None]
    if len(given) > 1:
        raise usage.UsageError("give either --peer-token or --peer-token-file, not both")
    if options["peer-token-file"] is not None:
        try:
            secret = Path(options["peer-token-file"]).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise usage.UsageError(f"--peer-token-file: {exc}") from None
    else:
        secret = options["peer-token"] or os.environ.get(PEER_TOKEN_ENV) or ""
    if secret and len(secret) < MIN_SECRET_LENGTH:
        raise usage.UsageError(f"the peer secret must be at least {MIN_SECRET_LENGTH} characters")
    return secret or None


def _exit_after_twistd(status: int) -> None:
    """Make the process exit with ``status`` once twistd has finished its own clean-up.

    A service cannot choose twistd's exit status: once the reactor runs, twistd exits 0 whatever
    happened. At interpreter exit (after twistd removed its pidfile and stopped its logging),
    this ends the process with ``status`` instead.
    """

    def exit_now() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to do
                stream.flush()
        os._exit(status)

    atexit.register(exit_now)


def _stop_process(reactor: Any) -> Callable[[Failure], None]:
    """What to do when the node cannot start after twistd began running it: stop, exit 1."""

    def stop(_failure: Failure) -> None:
        _exit_after_twistd(STARTUP_FAILED)
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    return stop


def node_config(options: Options) -> NodeConfig:
    """The node that parsed options describe."""
    return NodeConfig(
        backend_url=options["backend"],
        endpoints=options["port"],
        max_value_size=options["max-value-size"],
        max_key_bytes=options["max-key-bytes"],
        max_watchers=options["max-watchers"],
        tombstone_retention=options["tombstone-retention"],
        peers=options["peer"],
        clone_from=options.get("clone-from"),
        upstream=options.get("upstream"),
        read_fallback=bool(options["read-fallback"]),
        serve_backend=bool(options["serve-backend"]),
        tokens_file=options["tokens"],
        anonymous=options["anonymous"] or frozenset(),
        open_mode=bool(options["open"]),
        allowed_hosts=options["allowed-host"],
        cors_origins=options["cors-origin"],
        audit_log=options["audit-log"],
        peer_token=options.get("peer-token"),
        peer_ca=options["peer-ca"],
        peer_cert=options["peer-cert"],
        peer_key=options["peer-key"],
        max_clock_drift=options["max-clock-drift"],
        limits=ConnectionLimits(
            header_timeout=options["header-timeout"],
            min_body_rate=options["min-body-rate"],
            idle_timeout=options["idle-timeout"],
        ),
        max_connections=options["max-connections"],
        max_send_buffer=options["max-send-buffer"],
    )


def makeService(options: Options) -> MultiService:
    """Make the node the options describe, on the reactor twistd runs."""
    from twisted.internet import reactor

    return NavistoreService(
        node_config(options), reactor=reactor, on_startup_failure=_stop_process(reactor)
    )

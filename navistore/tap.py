"""``twistd navistore``: the command-line options and the service they make.

Run a node with ``twistd -n navistore --port tcp:8888 --backend sqlite:navistore.db``. ``--port``
takes any Twisted server endpoint string (or a port number) and may be given several times;
``--config FILE`` reads the options from a TOML file first (:mod:`navistore.config_file`).
Everything that can be checked without binding a port or opening the backend is checked while
the options are parsed, so that a mistake is one line and exit status 1, not a traceback after
the node has bound its ports. The plugin that makes ``twistd`` find this module is
``twisted/plugins/navistore_plugin.py``.
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
from navistore.backend import BackendURLError, check_backend
from navistore.backend.record_cache import DEFAULT_RECORD_CACHE_BYTES
from navistore.clock import DEFAULT_MAX_DRIFT_MS
from navistore.compat import COMPAT_APIS
from navistore.config_file import ConfigFileError, config_path, merge_arguments, read_config
from navistore.conflicts import DEFAULT_RETENTION_MS
from navistore.daemon import STARTUP_REPORTED, NavistoreService
from navistore.keys import DEFAULT_MAX_KEY_BYTES
from navistore.logs import log_json_under_twistd
from navistore.node import DEFAULT_BACKEND, DEFAULT_ENDPOINTS, NodeConfig, PeerTLS
from navistore.peer_urls import InvalidPeer, normalize_peer_url
from navistore.replication.gc import DEFAULT_INTERVAL, DEFAULT_RETENTION
from navistore.tokens import MIN_SECRET_LENGTH, TokenFileError, load_tokens, parse_permissions
from navistore.watch_hub import DEFAULT_MAX_WATCHERS
from navistore.web import DEFAULT_LIMITS, DEFAULT_MAX_VALUE_SIZE, ConnectionLimits
from navistore.web.send_budget import DEFAULT_SEND_BUFFER

__all__ = [
    "REPEATABLE",
    "Options",
    "check_backend_url",
    "check_endpoint",
    "makeService",
    "node_config",
]

#: Exit status of a process whose node could not start after twistd began running it.
STARTUP_FAILED = 1

#: Exit status of ``twistd navistore`` (and ``nhttpserver``) given options it refuses.
USAGE_ERROR = 1


def _whole_number(text: str, least: int) -> int:
    """Coerce an option to an integer of at least ``least`` (0 or 1), or say why not."""
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if number < least:
        raise ValueError(f"{number} is {'not positive' if least else 'negative'}")
    return number


def _positive_int(text: str) -> int:
    """Coerce an option to an integer of at least 1, or say why not."""
    return _whole_number(text, 1)


_positive_int.coerceDoc = "A whole number of bytes, at least 1."  # type: ignore[attr-defined]


def _bytes_or_none(text: str) -> int:
    """Coerce an option to a number of bytes, at least 0 (0: none at all)."""
    return _whole_number(text, 0)


_bytes_or_none.coerceDoc = "A whole number of bytes; 0 for none."  # type: ignore[attr-defined]


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


def _api_names(text: str) -> tuple[str, ...]:
    """``--compat``: API names separated by commas, or ``none``."""
    if text.strip().lower() == "none":
        return ()
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in COMPAT_APIS]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not one of {', '.join(COMPAT_APIS)} (or none)")
    return names


_api_names.coerceDoc = "Names separated by commas (etcd, consul), or none."  # type: ignore[attr-defined]


def _count(text: str) -> int:
    """Coerce an option to a count of at least 1."""
    return _positive_int(text)


_count.coerceDoc = "A whole number, at least 1."  # type: ignore[attr-defined]


def check_backend_url(url: str) -> None:
    """Refuse a backend URL that cannot name a working backend: bad syntax, an unknown scheme,
    an option or value the backend refuses, or (sqlite) a file this process cannot write.

    This runs while the options are parsed, so the mistake is reported before anything binds;
    nothing is opened (:func:`navistore.backend.check_backend`).

    :raises usage.UsageError: with the reason and, for an unknown scheme, the known ones.
    """
    try:
        check_backend(url)
    except BackendURLError as exc:
        raise usage.UsageError(f"--backend: {exc}") from None


def check_endpoint(text: str) -> str:
    """The endpoint string ``--port`` names (a bare number is ``tcp:N``), checked as Twisted
    parses it (unknown type, bad argument, a TLS key file missing) without binding anything.

    :raises usage.UsageError: naming the endpoint and what is wrong with it.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    description = text.strip()
    if description.isdigit():
        if not 0 <= int(description) <= 65535:
            raise usage.UsageError(f"--port {text!r}: not a TCP port number (0 to 65535)")
        description = f"tcp:{int(description)}"
    try:
        serverFromString(reactor, description)
    except Exception as exc:  # each endpoint parser raises its own kinds
        raise usage.UsageError(f"--port {text!r}: {exc}") from None
    return description


def _check_writable_file(path: str | None, option: str) -> None:
    """Refuse a file this process could neither append to nor create."""
    if path is None or path == "-":
        return
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if os.path.isdir(target):
        raise usage.UsageError(f"--{option}: {path} is a directory")
    if os.path.exists(target):
        if not os.access(target, os.W_OK):
            raise usage.UsageError(f"--{option}: {path} is not writable")
    elif not os.path.isdir(directory):
        raise usage.UsageError(f"--{option}: the directory {directory} does not exist")
    elif not os.access(directory, os.W_OK | os.X_OK):
        raise usage.UsageError(f"--{option}: cannot create {path} (directory not writable)")


def _named(name: str, coerce: Callable[[str], Any]) -> Callable[[str], Any]:
    """``coerce``, whose refusals name the option (usage.Options' own message does not)."""

    def named(text: str) -> Any:
        try:
            return coerce(text)
        except ValueError as exc:
            raise ValueError(f"--{name}: {exc}") from None

    named.coerceDoc = coerce.coerceDoc  # type: ignore[attr-defined]
    return named


#: The options that may be given several times (a list in a config file).
REPEATABLE = ("port", "peer", "allowed-host", "cors-origin")

#: Log formats of --log-format.
LOG_FORMATS = ("text", "json")

_TYPE_ENFORCEMENT = "Parameter type enforcement failed: "


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

    optParameters: list[list[Any]] = [
        [
            "backend",
            None,
            DEFAULT_BACKEND,
            "Where the data lives, as a backend URL.",
        ],
        [
            "compat",
            None,
            COMPAT_APIS,
            "Other stores' APIs to serve beside the native one, separated by commas: etcd "
            "(the v2 keys API at /v2/, /version, /health), consul (the KV API at /v1/), or none.",
            _api_names,
        ],
        [
            "record-cache-size",
            None,
            DEFAULT_RECORD_CACHE_BYTES,
            "Bytes of live records a sqlite node keeps in memory for reads (0: none).",
            _bytes_or_none,
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
            "The most concurrent watches (long-polls, event streams, ?wait); more get 503. "
            "At most the connection limit less a tenth.",
            _count,
        ],
        [
            "tombstone-retention",
            None,
            DEFAULT_RETENTION,
            "Seconds a delete's tombstone is kept at least (and until every peer has it).",
            _seconds,
        ],
        [
            "conflict-retention",
            None,
            DEFAULT_RETENTION_MS / 1000,
            "Seconds the loser of a concurrent write is kept (GET /<key>?conflicts=true), "
            "counted from the losing write; the same on every node.",
            _seconds,
        ],
        [
            "tombstone-gc-interval",
            None,
            DEFAULT_INTERVAL,
            "Seconds between tombstone collections (the first runs a minute after start, or "
            "sooner with a shorter interval).",
            _positive_seconds,
        ],
        [
            "access-log",
            None,
            None,
            "Log every request to this file (- for standard output), in the combined log "
            "format, or as JSON lines with --log-format json.",
        ],
        [
            "log-format",
            None,
            "text",
            "text or json: the format of the access log and of the node's own log (JSON: one "
            "object a line, for log collectors).",
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
            "write, admin, peer, metrics, comma-separated (default: none).",
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

    def opt_config(self, path: str) -> None:
        """Read options from this TOML file first (keys are these long options' names);
        options given here override it. See contrib/navistore.toml."""
        # Read by parseOptions before the other options; here only when given twice.
        raise usage.UsageError("--config may be given once")

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
        """Listen on this Twisted endpoint string, or TCP port number (repeatable; default
        tcp:8888)."""
        self["port"].append(check_endpoint(endpoint))

    opt_P = opt_port

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

    #: Set on the throwaway instances that check one config-file key at a time.
    _checking_one = False

    def parseOptions(self, options: Any = None) -> None:
        """Parse like usage.Options, after the ``--config`` file's options (which these
        override); a usage error under twistd is one line and exit status 1.

        Under twistd (``parent`` is then twistd's own options), a refusal is printed as one
        line on stderr and the process exits USAGE_ERROR, rather than twistd's whole help
        (and, before Twisted 26.10, exit status 0). Parsed on their own (tests, tools), the
        options raise :class:`usage.UsageError`.
        """
        arguments = sys.argv[1:] if options is None else list(options)
        try:
            path, rest = config_path(arguments)
            if path is not None:
                rest = self._with_config_file(path, rest)
                self["config"] = path
            super().parseOptions(rest)
        except (usage.UsageError, ConfigFileError) as exc:
            if self.parent is not None:
                _refuse(exc)
            raise usage.UsageError(_plain(exc)) from None

    def _with_config_file(self, path: str, command_line: list[str]) -> list[str]:
        """The arguments a config file stands for, checked key by key (so a refusal names
        the file and line), followed by the command line's."""
        names = [name for name in self.longOpt if name.rstrip("=") not in _NOT_KEYS]
        file_options = read_config(
            path,
            parameters=[name[:-1] for name in names if name.endswith("=")],
            flags=[name for name in names if not name.endswith("=")],
            repeatable=REPEATABLE,
        )
        for option in file_options:
            probe = type(self)()
            probe._checking_one = True
            try:
                probe.parseOptions(option.arguments)
            except usage.UsageError as exc:
                raise ConfigFileError(f"{option.where}: {_plain(exc)}") from None
        return merge_arguments(
            file_options, command_line, repeatable=REPEATABLE, short={"P": "port"}
        )

    def postOptions(self) -> None:
        """Fill in the defaults and check everything that can be checked before binding: the
        backend URL and its options, the endpoints (checked as given), files to read or
        write, the peer secret, the tokens file and how the options combine."""
        if self._checking_one:
            return
        if not self["port"]:
            self["port"] = list(DEFAULT_ENDPOINTS)
        self.setdefault("clone-from", None)
        self.setdefault("upstream", None)
        self.setdefault("config", None)
        if self["upstream"] is not None and (
            self["peer"] or self["clone-from"] or self["read-fallback"]
        ):
            raise usage.UsageError(
                "--upstream makes a cache node, which has no peers of its own: it cannot be "
                "combined with --peer, --clone-from or --read-fallback"
            )
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(
                f"--log-format: {self['log-format']!r} is not one of {', '.join(LOG_FORMATS)}"
            )
        check_backend_url(self["backend"])
        _check_writable_file(self["audit-log"], "audit-log")
        _check_writable_file(self["access-log"], "access-log")
        self["peer-token"] = _peer_token(self)
        if self["tokens"] is not None:
            try:
                load_tokens(self["tokens"])
            except TokenFileError as exc:
                raise usage.UsageError(f"--tokens: {exc}") from None
        try:
            self["anonymous"] = parse_permissions(self["anonymous"] or "", "--anonymous")
            config = node_config(self)
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None
        if self["log-format"] == "json" and self.parent is not None:
            log_json_under_twistd(self.parent)
        if config.peer_ca is not None or config.peer_cert is not None:
            try:
                PeerTLS(config)
            except Exception as exc:  # OSError, or OpenSSL's own errors for a bad PEM
                raise usage.UsageError(f"--peer-ca/--peer-cert/--peer-key: {exc}") from None


# Every coercer's refusal names its option (usage.Options' own message would not).
Options.optParameters = [
    [*entry[:4], _named(entry[0], entry[4])] if len(entry) > 4 else entry
    for entry in Options.optParameters
]

#: Long options that are no config-file keys.
_NOT_KEYS = ("help", "version", "config")

#: Short options that were others' before, and what to say when one is given.
_MOVED_SHORT = {
    "-p": "-p is not an option of twistd navistore: use -P or --port for a port "
    "(nhttpserver's -p is --pidfile, as twistd's own --pidfile is)",
    "-b": "-b is not an option of twistd navistore: use --backend "
    "(nhttpserver's -b is --background)",
}


def _plain(error: Exception) -> str:
    """A refusal's message without usage.Options' prefix, with a hint for moved flags."""
    message = str(error)
    if message.startswith(_TYPE_ENFORCEMENT):
        message = message[len(_TYPE_ENFORCEMENT) :]
    for flag, hint in _MOVED_SHORT.items():
        if message == f"option {flag} not recognized":
            return hint
    return message


def _program() -> str:
    """What the user typed: ``nhttpserver``, or ``twistd navistore``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "twistd"
    return name if name.startswith("nhttpserver") else "twistd navistore"


def _refuse(error: Exception) -> None:
    """Print a refusal of the options as one line and exit USAGE_ERROR."""
    program = _program()
    print(f"{program}: error: {_plain(error)} (see {program} --help)", file=sys.stderr)
    sys.stderr.flush()
    sys.exit(USAGE_ERROR)


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
        record_cache_bytes=options["record-cache-size"],
        tombstone_retention=options["tombstone-retention"],
        conflict_retention=options["conflict-retention"],
        tombstone_gc_interval=options["tombstone-gc-interval"],
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
        access_log=options["access-log"],
        log_format=options["log-format"],
        compat=options["compat"],
    )


def makeService(options: Options) -> MultiService:
    """Make the node the options describe, on the reactor twistd runs."""
    from twisted.internet import reactor

    sys.excepthook = _quiet_when_reported(sys.excepthook)
    return NavistoreService(
        node_config(options), reactor=reactor, on_startup_failure=_stop_process(reactor)
    )


def _quiet_when_reported(previous: Callable[..., Any]) -> Callable[..., Any]:
    """An excepthook that prints nothing for a startup failure the node has logged already.

    A failure to start (a busy port, a database that cannot be opened) is raised out of
    twistd, which removes its pidfile and tells a waiting parent; the interpreter then exits 1.
    Its traceback would only repeat, in 30-odd lines, the one line the node logged.
    """

    def hook(kind: type[BaseException], value: BaseException, traceback: Any) -> None:
        if getattr(value, STARTUP_REPORTED, False):
            return
        previous(kind, value, traceback)

    return hook

"""``postgresql://`` backend URLs, and opening a connection the backend can use.

The URL is libpq's (``postgresql://user:password@host:port/dbname?option=value``, also spelled
``postgres://``), restricted to the options listed in :data:`LIBPQ_OPTIONS`; it is parsed here
into keyword arguments for ``psycopg.connect`` rather than handed over as text, so that an
unknown or misspelled option fails the start of the node instead of the first request, and so
that the password never appears in a log line or an error (see :attr:`Target.display`).

psycopg is imported only when a connection is opened or a URL checked, so that this module (and
the registry that names it) imports everywhere, psycopg or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import attrs

from navistore.backend import BackendURL, BackendURLError
from navistore.backend import postgresql_schema as schema
from navistore.errors import StorageFailure

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_KEEPALIVES",
    "INTEGER_OPTIONS",
    "LIBPQ_OPTIONS",
    "SSL_MODES",
    "Target",
    "import_psycopg",
    "open_connection",
    "parse_target",
]

#: The libpq connection parameters a URL may set (passed on as they are, checked here first).
LIBPQ_OPTIONS = (
    "application_name",
    "connect_timeout",
    "host",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "options",
    "passfile",
    "port",
    "sslcert",
    "sslkey",
    "sslmode",
    "sslrootcert",
    "target_session_attrs",
    "tcp_user_timeout",
)
#: Those of them that are whole numbers of seconds (milliseconds for tcp_user_timeout) or flags.
INTEGER_OPTIONS = (
    "connect_timeout",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "port",
    "tcp_user_timeout",
)
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

#: How long opening a connection may take unless the URL says (libpq's default is for ever).
DEFAULT_CONNECT_TIMEOUT = "10"
#: TCP keepalives unless the URL says otherwise: a server that vanished without closing the
#: connection (a crash of its machine, a cut network) is noticed within about a minute instead
#: of the system's default two hours, and the call waiting on it fails rather than hangs.
DEFAULT_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


@attrs.frozen
class Target:
    """Where a backend connects.

    :ivar connect: the keyword arguments of ``psycopg.connect`` (password included).
    :ivar display: the URL without its password, for logs, errors and ``repr``.
    """

    connect: dict[str, str]
    display: str


def parse_target(url: BackendURL) -> Target:
    """Check a ``postgresql://`` URL and turn it into a :class:`Target`, without connecting.

    :raises BackendURLError: unknown option, bad value, no database name.
    """
    attrs.evolve(url, text=_redacted(url)).refuse_unknown_options(LIBPQ_OPTIONS)
    text = url.text.split("?", 1)[0]
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise BackendURLError(f"{_redacted(url)}: {exc}") from None
    if parts.scheme.lower() not in ("postgresql", "postgres") or not text[
        len(parts.scheme) :
    ].startswith("://"):
        raise BackendURLError(
            f"{_redacted(url)}: expected postgresql://user:password@host:port/dbname"
        )
    database = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not database or "/" in database:
        raise BackendURLError(
            f"{_redacted(url)}: name one database, e.g. postgresql://navistore@localhost/navistore"
        )
    connect: dict[str, str] = {"dbname": database, "application_name": "navistore"}
    connect["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    connect.update(DEFAULT_KEEPALIVES)
    if parts.username:
        connect["user"] = unquote(parts.username)
    if parts.password is not None:
        connect["password"] = unquote(parts.password)
    if parts.hostname:
        connect["host"] = unquote(parts.hostname)
    if port is not None:
        connect["port"] = str(port)
    for name, value in url.options.items():
        if name in INTEGER_OPTIONS and not (value.isdigit() and len(value) <= 9):
            raise BackendURLError(f"{_redacted(url)}: option {name}={value!r} is not a number")
        if name == "sslmode" and value not in SSL_MODES:
            raise BackendURLError(
                f"{_redacted(url)}: option sslmode={value!r} is not one of {', '.join(SSL_MODES)}"
            )
        if "\x00" in value:
            raise BackendURLError(f"{_redacted(url)}: option {name} holds a NUL character")
        connect[name] = value
    user = f"{connect['user']}@" if "user" in connect else ""
    where = connect.get("host", "")
    if "port" in connect:
        where = f"{where}:{connect['port']}"
    return Target(connect, f"postgresql://{user}{where}/{database}")


def _redacted(url: BackendURL) -> str:
    """The URL as given, its password replaced by ``***``."""
    text = url.text
    scheme, separator, rest = text.partition("://")
    authority, slash, tail = rest.partition("/")
    if separator and "@" in authority:
        credentials, _, host = authority.rpartition("@")
        if ":" in credentials:
            credentials = credentials.split(":", 1)[0] + ":***"
        return f"{scheme}://{credentials}@{host}{slash}{tail}"
    return text


def import_psycopg() -> Any:
    """Import psycopg 3, or say why it cannot be used here (:class:`BackendURLError`): not
    installed, no libpq for its pure-Python build, or an interpreter that build cannot run on."""
    try:
        import psycopg
    except ImportError as exc:  # not installed, or no libpq for its pure-Python build
        raise BackendURLError(
            "the postgresql backend needs psycopg 3 and libpq: pip install 'navistore[postgresql]'"
            f" ({exc})"
        ) from None
    if psycopg.pq.__impl__ == "python" and not _ctypes_holds_weak_references():
        raise BackendURLError(
            "the postgresql backend cannot run on this interpreter: psycopg's pure-Python build"
            " (the only one for PyPy) hands ctypes a weak reference, which this interpreter's"
            " ctypes refuses (PyPy 3.9: 'cannot create weak reference to weakref object');"
            " run a node with the postgresql backend on CPython"
        )
    return psycopg


def _ctypes_holds_weak_references() -> bool:
    """Whether ``ctypes.py_object`` takes a weak reference, as psycopg's ctypes wrapper of libpq
    does for every connection (PyPy 3.9's ctypes refuses it, so every connect would fail)."""
    import ctypes
    import weakref

    class Probe:
        pass

    probe = Probe()
    try:
        ctypes.py_object(weakref.ref(probe))
    except TypeError:
        return False
    return True


def open_connection(connection: psycopg.Connection[Any]) -> None:
    """Prepare a new connection and bring the schema up to date (the pool's ``cp_openfun``).

    The connection runs in autocommit mode: a write batch is one statement, so one round trip
    and its own transaction, without a ``BEGIN`` and a ``COMMIT`` of their own. The database
    must be UTF-8 (keys are Unicode and sort by their UTF-8 bytes). ``synchronous_commit`` is
    kept as the server has it unless it is ``off``, which would acknowledge commits not yet on
    disk: then it is turned ``on`` for this session. A failure closes the connection (adbapi
    would drop it unclosed) and reports a StorageFailure; the next call connects again.
    """
    import psycopg

    try:
        connection.autocommit = True
        cursor = connection.cursor()
        cursor.execute(
            "SELECT current_setting('server_encoding'), current_setting('synchronous_commit')"
        )
        row = cursor.fetchone()
        assert row is not None
        encoding, synchronous_commit = row
        if str(encoding).upper() != "UTF8":
            raise StorageFailure(
                f"the database's encoding is {encoding}, not UTF8: create it with ENCODING 'UTF8'"
            )
        if synchronous_commit == "off":
            cursor.execute("SET synchronous_commit = on")
        with connection.transaction():
            schema.migrate(cursor)
        cursor.close()
    except BaseException as exc:
        connection.close()
        if isinstance(exc, psycopg.Error):
            raise StorageFailure(f"cannot open the PostgreSQL database: {exc}") from exc
        raise

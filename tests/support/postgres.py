"""A real PostgreSQL server for the tests, started and stopped by the test session.

:class:`PostgresServer` runs Debian's PostgreSQL (``apt-get install postgresql``; its binaries
are in ``/usr/lib/postgresql/<version>/bin``, not on PATH) with a data directory of its own in
a temporary directory, listening on 127.0.0.1 on a free port, with its unix socket in that
directory too, so that it meets no other server. ``initdb`` and ``pg_ctl`` refuse to run as
root, so as root they run as the ``postgres`` user (``runuser``), who owns the directory.

The cluster is made the way a production one should not be, on purpose:

- its default collation is ICU's ``en-US``, where ``'B' < 'a'`` is false: keys and stamps that
  sorted by the database's collation rather than by byte order would fail the tests;
- ``fsync=off``: the tests kill navistore processes, never the server, so what they check is
  what the backend acknowledges after a commit, which fsync does not change; and it keeps
  hundreds of CREATE DATABASEs fast.

A superuser ``postgres`` and a login role ``navistore`` (password :data:`PASSWORD`) exist;
:meth:`PostgresServer.create_database` gives each test a database of its own, owned by
``navistore``, as the README tells an operator to make one.

The fixtures, :func:`postgres_server` (one server per test session, or per xdist worker) and
:func:`postgres_url` (a fresh database per test), are used from test modules with
``pytest_plugins = ["support.postgres"]``. When the binaries or psycopg cannot be had, they skip
the test naming what is missing, and fail it instead when ``CI`` is set.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from support.processes import pid_alive

__all__ = [
    "PASSWORD",
    "ROLE",
    "PostgresServer",
    "find_binaries",
    "postgres_backend",
    "postgres_server",
    "postgres_url",
    "unavailable",
]

ROLE = "navistore"
PASSWORD = "s3cret:@/pw"  # URL-significant characters, percent-encoded in every URL
SUPERUSER_PASSWORD = "superuser"
#: How long the server may take to start or stop.
DEADLINE = 60.0


def unavailable(reason: str) -> None:
    """Skip the test naming what is missing; fail it when ``CI`` is set (CI has everything)."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


def find_binaries() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: the newest Debian one, else PATH's."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: (
            int(Path(path).parent.parent.name) if Path(path).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None or shutil.which("initdb", path=str(Path(pg_ctl).parent)) is None:
        return None
    return Path(pg_ctl).resolve().parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, on 127.0.0.1:``port``."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.root = Path(tempfile.mkdtemp(prefix="navistore-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.pid = 0
        #: The ``navistore`` role's password.
        self.password = PASSWORD
        self._as_postgres: list[str] = []
        self._databases = itertools.count(1)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as_postgres = ["runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *arguments: str) -> None:
        command = [*self._as_postgres, str(self.binaries / tool), *arguments]
        done = subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=DEADLINE, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        """initdb, then start the server on a free port (trying another if one is taken)."""
        password_file = self.root / "superuser-password"
        password_file.write_text(SUPERUSER_PASSWORD + "\n")
        if self._as_postgres:
            shutil.chown(password_file, "postgres", "postgres")
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username=postgres",
            f"--pwfile={password_file}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--locale-provider=icu",
            "--icu-locale=en-US",
        )
        for attempt in range(5):
            self.port = _free_port()
            try:
                self.start_server()
                break
            except RuntimeError:
                if attempt == 4:
                    raise
        with self.connect() as connection:
            from psycopg import sql

            create = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
            connection.execute(create.format(sql.Identifier(ROLE), sql.Literal(PASSWORD)))

    def connect(self, database: str = "postgres", user: str = "postgres") -> Any:
        """A psycopg connection (autocommit) as the superuser, for setting up and looking."""
        import psycopg

        password = SUPERUSER_PASSWORD if user == "postgres" else PASSWORD
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=user,
            password=password,
            dbname=database,
            autocommit=True,
            connect_timeout=10,
        )

    def url(self, database: str, scheme: str = "postgresql", *, password: bool = True) -> str:
        """The backend URL of ``database`` as the ``navistore`` role, its password encoded
        (or left out, for a client that takes it from ``PGPASSWORD``)."""
        from urllib.parse import quote

        secret = f":{quote(PASSWORD, safe='')}" if password else ""
        return f"{scheme}://{ROLE}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty UTF-8 database owned by ``navistore``; its name."""
        name = f"test_{os.getpid()}_{next(self._databases)}"
        with self.connect() as connection:
            connection.execute(f"CREATE DATABASE {name} OWNER {ROLE} TEMPLATE template0")
        return name

    @staticmethod
    def database_of(url: str) -> str:
        """The database name at the end of a backend URL this server made."""
        return url.rsplit("/", 1)[1]

    def rows(self, database: str, sql: str, *params: Any) -> list[Any]:
        """The rows of ``sql`` run as the superuser in ``database`` on a connection of its own
        (blocking: tests call it through ``deferToThread``)."""
        with self.connect(database) as connection:
            cursor = connection.execute(sql, params or None)
            return list(cursor.fetchall()) if cursor.description else []

    def drop_database(self, name: str) -> None:
        with self.connect() as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def alive(self) -> bool:
        """Whether the server process exists (and is no zombie: it is not our child)."""
        return pid_alive(self.pid)

    def stop(self) -> None:
        """Stop the server by its PID and remove its directory."""
        try:
            self.stop_server()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def stop_server(self) -> None:
        """Stop the server by its PID (fast shutdown, then SIGKILL); the data stays."""
        if not self.pid or not self.alive():
            return
        os.kill(self.pid, signal.SIGINT)
        end = time.monotonic() + DEADLINE
        while self.alive() and time.monotonic() < end:
            time.sleep(0.05)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)

    def start_server(self) -> None:
        """Start the server on its data directory and port (again, after stop_server)."""
        settings = (
            f"-p {self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={self.root} -c fsync=off -c max_connections=200"
        )
        data, log = str(self.data), str(self.log)
        self._run("pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", settings, "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (each xdist worker has its own)."""
    from navistore.backend import BackendURLError
    from navistore.backend.postgresql_url import import_psycopg

    try:
        import_psycopg()
    except BackendURLError as exc:
        if "cannot run on this interpreter" in str(exc):
            # Not a missing tool: a platform the backend refuses (tests/test_postgresql_url.py
            # checks that refusal), so not applicable, even in CI.
            pytest.skip(f"not applicable: {exc}")
        unavailable(str(exc))
    binaries = find_binaries()
    if binaries is None:
        unavailable("no PostgreSQL binaries (initdb, pg_ctl): apt-get install postgresql")
    assert binaries is not None
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        unavailable("running as root without runuser, which initdb and pg_ctl need")
    try:
        server = PostgresServer(binaries)
    except LookupError:
        unavailable("running as root but there is no postgres user to run the server as")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh database of the test's own, dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest_twisted.async_yield_fixture
async def postgres_backend(postgres_url: str) -> AsyncIterator[Any]:
    """A PostgresBackend over a fresh database, closed after the test."""
    from navistore.backend import open_backend

    opened = open_backend(postgres_url)
    yield opened
    await opened.close()

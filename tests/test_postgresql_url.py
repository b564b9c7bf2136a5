"""``postgresql://`` URLs (navistore.backend.postgresql_url): what is accepted, what is refused
before anything connects, and that the module imports without psycopg (PyPy without libpq)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from navistore.backend import BackendURLError, check_backend, known_schemes, parse_backend_url
from navistore.backend.postgresql_url import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVES,
    parse_target,
)


def test_both_schemes_are_known() -> None:
    """``postgresql`` and ``postgres`` are built-in schemes of the registry."""
    assert {"postgresql", "postgres"} <= set(known_schemes())


@pytest.mark.parametrize(
    ("url", "connect", "display"),
    [
        pytest.param(
            "postgresql://nav:p%40ss%3Aw%2Fd@db.example:6543/store",
            {"user": "nav", "password": "p@ss:w/d", "host": "db.example", "port": "6543"},
            "postgresql://nav@db.example:6543/store",
            id="encoded-password",
        ),
        pytest.param(
            "postgres://nav@[::1]/store?sslmode=verify-full&connect_timeout=3&keepalives=0",
            {
                "user": "nav",
                "host": "::1",
                "sslmode": "verify-full",
                "connect_timeout": "3",
                "keepalives": "0",
            },
            "postgresql://nav@::1/store",
            id="ipv6-options",
        ),
        pytest.param(
            "postgresql:///store?host=/var/run/postgresql&port=5433",
            {"host": "/var/run/postgresql", "port": "5433"},
            "postgresql:///var/run/postgresql:5433/store",
            id="unix-socket",
        ),
        pytest.param(
            "postgresql://localhost/my%20store?application_name=node-a",
            {"host": "localhost", "application_name": "node-a"},
            "postgresql://localhost/my store",
            id="encoded-database",
        ),
    ],
)
def test_urls_become_connection_parameters(url: str, connect: dict[str, str], display: str) -> None:
    """A URL becomes psycopg's keyword arguments, percent-decoded, with a bounded connect
    timeout and TCP keepalives unless the URL sets them; its display form never holds the
    password."""
    target = parse_target(parse_backend_url(url))
    expected = {"application_name": "navistore", "connect_timeout": DEFAULT_CONNECT_TIMEOUT}
    expected.update(DEFAULT_KEEPALIVES)
    expected.update(connect, dbname=target.connect["dbname"])
    assert target.connect == expected
    assert target.display == display
    assert target.connect.get("password", "p@ss") not in target.display


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("postgresql://host/db?sslmode=sometimes", "sslmode"),
        ("postgresql://host/db?pool=3", r"unknown option\(s\) pool"),
        ("postgresql://host/db?connect_timeout=soon", "not a number"),
        ("postgresql://host:port/db", "Port could not be cast"),
        ("postgresql://host", "name one database"),
        ("postgresql://host/", "name one database"),
        ("postgresql://host/a/b", "name one database"),
        ("postgresql:db", "expected postgresql://"),
    ],
)
def test_bad_urls_are_refused_before_connecting(url: str, complaint: str) -> None:
    """check_backend refuses a URL the backend could not use, at option-parsing time, saying
    what is wrong."""
    with pytest.raises(BackendURLError, match=complaint):
        check_backend(url)


def test_refusals_do_not_show_the_password() -> None:
    """The message refusing a URL hides its password."""
    with pytest.raises(BackendURLError) as refused:
        check_backend("postgresql://nav:hunter2x@host/db?bogus=1")
    assert "hunter2x" not in str(refused.value)
    assert "nav:***@host" in str(refused.value)


def test_without_psycopg_the_module_imports_and_the_url_is_refused() -> None:
    """Where psycopg cannot be imported (not installed, or PyPy without libpq), the backend
    modules still import, and a postgresql URL is refused with how to install it."""
    program = (
        "import sys; sys.modules['psycopg'] = None\n"
        "import navistore.backend.postgresql\n"
        "from navistore.backend import BackendURLError, check_backend\n"
        "try:\n"
        "    check_backend('postgresql://nav@localhost/store')\n"
        "except BackendURLError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'navistore[postgresql]'" in done.stdout, done.stdout + done.stderr


def test_an_interpreter_whose_ctypes_psycopg_cannot_use_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where psycopg's pure-Python build cannot connect (PyPy 3.9's ctypes refuses the weak
    reference it holds each connection by), a postgresql URL is refused at once, saying to use
    CPython, rather than every call failing with a TypeError from inside psycopg."""
    import psycopg

    from navistore.backend import postgresql_url

    monkeypatch.setattr(psycopg.pq, "__impl__", "python")
    monkeypatch.setattr(postgresql_url, "_ctypes_holds_weak_references", lambda: False)
    with pytest.raises(BackendURLError, match="run a node with the postgresql backend on CPython"):
        check_backend("postgresql://nav@localhost/store")


def test_the_weak_reference_probe_matches_this_interpreter() -> None:
    """The probe says yes on CPython, whose ctypes takes a weak reference, and no on PyPy 3.9."""
    from navistore.backend.postgresql_url import _ctypes_holds_weak_references

    expected = not (sys.implementation.name == "pypy" and sys.version_info < (3, 10))
    assert _ctypes_holds_weak_references() is expected

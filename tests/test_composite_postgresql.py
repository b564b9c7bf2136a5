"""The composite backends over a real PostgreSQL server (tests/support/postgres.py starts one
for the session): the whole compliance suite through a cache tier and over two databases as
shards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable

import pytest

from navistore import interfaces
from navistore.backend import open_backend
from navistore.backend.record_cache import ENTRY_OVERHEAD
from navistore.testing import BackendComplianceTests

if TYPE_CHECKING:
    from support.postgres import PostgresServer

pytest_plugins = ["support.postgres"]

#: A cache that holds about three small records, so that the suite evicts all the time.
TINY = 3 * ENTRY_OVERHEAD


def cache_url(postgres_url: str) -> str:
    """A cache tier over ``postgres_url``: following the database's reports of other nodes'
    writes when the backend makes them, else forgetting everything every minute (longer than
    any test, so the suite sees the cache's own exactness)."""
    reports = getattr(interfaces, "IExternalWrites", None)
    from navistore.backend.postgresql import PostgresBackend

    if reports is not None and reports.implementedBy(PostgresBackend):
        return f"cache:{TINY}:{postgres_url}"
    return f"cache:{TINY},max-age=60:{postgres_url}"


class TestCacheOverPostgresCompliance(BackendComplianceTests):
    """``cache:SIZE:postgresql://...``: the whole suite through a tiny cache tier."""

    persistent = True

    @pytest.fixture
    def make_backend(self, postgres_url: str) -> Any:
        return open_backend(cache_url(postgres_url))

    @pytest.fixture
    def reopen_backend(self, postgres_url: str) -> Callable[[Any], Any]:
        return lambda old: open_backend(cache_url(postgres_url))


@pytest.fixture
def two_databases(postgres_server: PostgresServer) -> Iterator[str]:
    """A ``shards:`` URL over two fresh databases, dropped after the test."""
    names = [postgres_server.create_database() for _ in range(2)]
    yield "shards:" + ";".join(postgres_server.url(name) for name in names)
    for name in names:
        postgres_server.drop_database(name)


class TestShardsOfPostgresCompliance(BackendComplianceTests):
    """``shards:postgresql://...;postgresql://...``: the whole suite over two databases."""

    persistent = True

    @pytest.fixture
    def make_backend(self, two_databases: str) -> Any:
        return open_backend(two_databases)

    @pytest.fixture
    def reopen_backend(self, two_databases: str) -> Callable[[Any], Any]:
        return lambda old: open_backend(two_databases)

"""The composite backends (``cache:`` and ``shards:``) through the whole compliance suite.

Each is opened by its URL, as a node opens it, over memory and sqlite members; the PostgreSQL
ones are in tests/test_composite_postgresql.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from navistore.backend import open_backend
from navistore.backend.record_cache import ENTRY_OVERHEAD
from navistore.testing import BackendComplianceTests

#: A cache that holds about three small records, so that the suite evicts all the time.
TINY = 3 * ENTRY_OVERHEAD


def three_sqlite_files(directory: Path) -> str:
    """A ``shards:`` URL over three sqlite files in ``directory``."""
    return "shards:" + ";".join(f"sqlite:{directory / f'shard-{n}.db'}" for n in range(3))


class TestCacheOverMemoryCompliance(BackendComplianceTests):
    """``cache:SIZE:memory:``: the contract holds through a tiny cache tier."""

    persistent = False

    @pytest.fixture
    def make_backend(self) -> Any:
        return open_backend(f"cache:{TINY}:memory:")


class TestCacheOverSqliteCompliance(BackendComplianceTests):
    """``cache:SIZE:sqlite:...``: the contract holds, reopening included."""

    persistent = True

    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> Any:
        return open_backend(f"cache:{TINY}:sqlite:{tmp_path / 'store.db'}?synchronous=normal")

    @pytest.fixture
    def reopen_backend(self, tmp_path: Path) -> Callable[[Any], Any]:
        url = f"cache:{TINY}:sqlite:{tmp_path / 'store.db'}?synchronous=normal"
        return lambda old: open_backend(url)


class TestShardsOfMemoryCompliance(BackendComplianceTests):
    """``shards:memory:;memory:;memory:``: three members in RAM."""

    persistent = False

    @pytest.fixture
    def make_backend(self) -> Any:
        return open_backend("shards:memory:;memory:;memory:")


class TestShardsOfSqliteCompliance(BackendComplianceTests):
    """``shards:`` of three sqlite files, reopening included (the seq counter continues)."""

    persistent = True

    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> Any:
        return open_backend(three_sqlite_files(tmp_path))

    @pytest.fixture
    def reopen_backend(self, tmp_path: Path) -> Callable[[Any], Any]:
        return lambda old: open_backend(three_sqlite_files(tmp_path))


class TestCacheOverShardsCompliance(BackendComplianceTests):
    """``cache:SIZE:shards:...``: a tiny cache tier over three sqlite shards."""

    persistent = True

    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> Any:
        return open_backend(f"cache:{TINY}:{three_sqlite_files(tmp_path)}")

    @pytest.fixture
    def reopen_backend(self, tmp_path: Path) -> Callable[[Any], Any]:
        return lambda old: open_backend(f"cache:{TINY}:{three_sqlite_files(tmp_path)}")


class TestShardsOfCachesCompliance(BackendComplianceTests):
    """``shards:cache:...;cache:...``: shards whose members are cached sqlite files."""

    persistent = True

    @staticmethod
    def url(directory: Path) -> str:
        return "shards:" + ";".join(
            f"cache:{TINY}:sqlite:{directory / f'shard-{n}.db'}" for n in range(2)
        )

    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> Any:
        return open_backend(self.url(tmp_path))

    @pytest.fixture
    def reopen_backend(self, tmp_path: Path) -> Callable[[Any], Any]:
        return lambda old: open_backend(self.url(tmp_path))

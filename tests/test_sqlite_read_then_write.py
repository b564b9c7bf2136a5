"""The sqlite backend's write path for a sqlite without UPSERT (before 3.24): it reads each
stored record and decides in Python. The library here has UPSERT, so these tests switch it off
and hold that path to the same contract as the other: the compliance suite and the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from hypothesis.stateful import run_state_machine_as_test
from test_model import BackendModel, SqliteOpener, model_settings
from twisted.internet.threads import deferToThread

from navistore.backend import sqlite_schema
from navistore.backend.sqlite import SqliteBackend
from navistore.clock import Stamp
from navistore.record import Record
from navistore.testing import BackendComplianceTests


@pytest.fixture
def without_upsert(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Switch UPSERT off; the list grows by one per batch the read-then-write path writes, so
    that a test can tell that path ran."""
    batches: list[int] = []
    real = sqlite_schema._read_then_write_batch

    def counted(txn: Any, batch: Any) -> Any:
        batches.append(len(batch))
        return real(txn, batch)

    monkeypatch.setattr(sqlite_schema, "UPSERT", False)
    monkeypatch.setattr(sqlite_schema, "_read_then_write_batch", counted)
    return batches


class TestSqliteWithoutUpsertCompliance(BackendComplianceTests):
    """The IStorageBackend compliance suite against sqlite writing without UPSERT."""

    persistent = True

    @pytest.fixture
    def make_backend(self, tmp_path: Path, without_upsert: list[int]) -> SqliteBackend:
        return SqliteBackend(tmp_path / "store.db")

    @pytest.fixture
    def reopen_backend(self, tmp_path: Path) -> Callable[[Any], SqliteBackend]:
        return lambda old: SqliteBackend(tmp_path / "store.db")


@pytest_twisted.ensureDeferred
async def test_the_switch_takes_the_other_path(tmp_path: Path, without_upsert: list[int]) -> None:
    """With UPSERT off, applies go through the read-then-write path, one batch per commit."""
    store = SqliteBackend(tmp_path / "store.db")
    try:
        stamp = Stamp(1, 0, "0123456789abcdef")
        stored = await store.apply(Record("/a", b"a", "text/plain", stamp))
        assert stored is not None and stored.seq == 1
        assert await store.apply(Record("/a", b"b", "text/plain", stamp)) is None
    finally:
        await store.close()
    assert without_upsert == [1, 1]


@pytest_twisted.ensureDeferred
async def test_sqlite_without_upsert_matches_the_model(
    tmp_path: Path, without_upsert: list[int]
) -> None:
    """Without UPSERT the sqlite backend agrees with the model after every step, as with it."""
    await deferToThread(
        run_state_machine_as_test,
        lambda: BackendModel(SqliteOpener(tmp_path)),
        settings=model_settings(max_examples=50, steps=30),
    )
    assert without_upsert

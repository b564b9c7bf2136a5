"""The shipped IStorageBackend compliance suite, and the Hypothesis model check, against a real
PostgreSQL server (tests/support/postgres.py starts one for the session)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable

import pytest
import pytest_twisted
from hypothesis.stateful import run_state_machine_as_test
from test_model import BackendModel, model_settings, on_reactor
from twisted.internet.threads import deferToThread

from navistore.backend import open_backend
from navistore.backend.postgresql import PostgresBackend
from navistore.testing import BackendComplianceTests

if TYPE_CHECKING:
    from support.postgres import PostgresServer

pytest_plugins = ["support.postgres"]


class TestPostgresCompliance(BackendComplianceTests):
    """The whole compliance suite against PostgreSQL; each test has a fresh database."""

    persistent = True

    @pytest.fixture
    def make_backend(self, postgres_url: str) -> PostgresBackend:
        backend = open_backend(postgres_url)
        assert isinstance(backend, PostgresBackend)
        return backend

    @pytest.fixture
    def reopen_backend(self, postgres_url: str) -> Callable[[Any], Any]:
        return lambda old: open_backend(postgres_url)


class PostgresOpener:
    """A database of its own per example (state machine run), dropped at the end of the test;
    opened again over the same database for the model's ``reopen`` rule."""

    numbers = itertools.count()

    def __init__(self, server: PostgresServer, made: list[str]) -> None:
        self.name = server.create_database()
        made.append(self.name)
        self.url = server.url(self.name)

    def open(self) -> Any:
        return on_reactor(open_backend, self.url)


@pytest.fixture
def model_databases(postgres_server: PostgresServer) -> Iterator[list[str]]:
    """The databases the model test makes, dropped afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        postgres_server.drop_database(name)


@pytest_twisted.ensureDeferred
async def test_postgresql_backend_matches_the_model(
    postgres_server: PostgresServer, model_databases: list[str]
) -> None:
    """The PostgreSQL backend agrees with the model after every step of random applies (live
    and tombstone, under every kind of expectation, pipelined ones included), purges, resets,
    meta writes and reopening: what was committed is what a new connection reads."""
    await deferToThread(
        run_state_machine_as_test,
        lambda: BackendModel(PostgresOpener(postgres_server, model_databases)),
        settings=model_settings(max_examples=25, steps=30),
    )

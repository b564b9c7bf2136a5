"""The storage backend contract as a test suite every backend runs.

:class:`BackendComplianceTests` checks, clause by clause, the contract written in the docstrings of
:class:`~navistore.interfaces.IStorageBackend` (and of the optional
:class:`~navistore.interfaces.IImmediateReads`, :class:`~navistore.interfaces.IPrefixChanges` and
:class:`~navistore.interfaces.ISizedReads`).
It is a pytest mixin built on pytest-twisted: every backend in this repository subclasses it, and
so does any third-party backend, so that "works with Navistore" means the same thing for all of
them.

Each clause is a mixin of its own module, so that a clause and the tables of examples it uses can
be read (and a failing test found) in one short file; :class:`BackendComplianceTests` combines
them all, and is the only class a backend author needs:

* :mod:`~navistore.testing.compliance.support`: the fixtures every mixin shares, the data
  builders and the helpers that observe a backend;
* :mod:`~navistore.testing.compliance.interface`: the interface is provided, a fresh backend is
  empty;
* :mod:`~navistore.testing.compliance.apply`: last writer wins, seqs on store;
* :mod:`~navistore.testing.compliance.expectations`: ABSENT, stamp and ANY expectations;
* :mod:`~navistore.testing.compliance.tombstones`: deletes as tombstones;
* :mod:`~navistore.testing.compliance.scan`: prefix listing and paging;
* :mod:`~navistore.testing.compliance.changes`: the change feed;
* :mod:`~navistore.testing.compliance.seq`: seqs strictly increase and are never reused;
* :mod:`~navistore.testing.compliance.values`: values, keys, content types and chains round-trip;
* :mod:`~navistore.testing.compliance.reset_meta`: ``reset`` and meta data;
* :mod:`~navistore.testing.compliance.purge`: purging tombstones;
* :mod:`~navistore.testing.compliance.malformed`: malformed records are refused;
* :mod:`~navistore.testing.compliance.concurrency`: calls issued at once;
* :mod:`~navistore.testing.compliance.lifecycle`: ``close``, and persistence across reopening;
* :mod:`~navistore.testing.compliance.immediate_reads`: ``peek``, for backends providing
  IImmediateReads (skipped as not applicable for the others);
* :mod:`~navistore.testing.compliance.prefix_changes`: ``changes_under``, for backends
  providing IPrefixChanges (skipped as not applicable for the others);
* :mod:`~navistore.testing.compliance.sized_reads`: pages cut by bytes, for backends providing
  ISizedReads (skipped as not applicable for the others);
* :mod:`~navistore.testing.compliance.atomic`: ``apply_all``, for backends providing
  IAtomicApply (skipped as not applicable for the others);
* :mod:`~navistore.testing.compliance.expiring`: deadlines and flags round-trip, and
  ``expiring`` for backends providing IExpiringRecords (skipped as not applicable for the
  others);
* :mod:`~navistore.testing.compliance.replaces`: what the writer had seen (``replaces``)
  round-trips.

The helpers :func:`make_stamp`, :func:`make_record` and :func:`make_tombstone` build deterministic
test data; backend authors may use them in their own backend-specific tests.
"""

from __future__ import annotations

from typing import ClassVar

from navistore.testing.compliance.apply import ApplyContract
from navistore.testing.compliance.atomic import AtomicApplyContract
from navistore.testing.compliance.changes import ChangesContract
from navistore.testing.compliance.concurrency import ConcurrencyContract
from navistore.testing.compliance.expectations import ExpectationContract
from navistore.testing.compliance.expiring import ExpiringContract
from navistore.testing.compliance.immediate_reads import ImmediateReadsContract
from navistore.testing.compliance.interface import InterfaceContract
from navistore.testing.compliance.lifecycle import LifecycleContract
from navistore.testing.compliance.malformed import MalformedRecordContract
from navistore.testing.compliance.prefix_changes import PrefixChangesContract
from navistore.testing.compliance.purge import PurgeContract
from navistore.testing.compliance.replaces import ReplacesContract
from navistore.testing.compliance.reset_meta import ResetAndMetaContract
from navistore.testing.compliance.scan import ScanContract
from navistore.testing.compliance.seq import SeqContract
from navistore.testing.compliance.sized_reads import SizedReadsContract
from navistore.testing.compliance.support import (
    NODE_A,
    NODE_B,
    BackendFixtures,
    Reopener,
    make_record,
    make_stamp,
    make_tombstone,
)
from navistore.testing.compliance.tombstones import TombstoneContract
from navistore.testing.compliance.values import ValuesContract

__all__ = [
    "NODE_A",
    "NODE_B",
    "BackendComplianceTests",
    "Reopener",
    "make_record",
    "make_stamp",
    "make_tombstone",
]


class BackendComplianceTests(
    InterfaceContract,
    ApplyContract,
    ExpectationContract,
    TombstoneContract,
    ScanContract,
    ChangesContract,
    SeqContract,
    ValuesContract,
    ResetAndMetaContract,
    PurgeContract,
    MalformedRecordContract,
    ConcurrencyContract,
    LifecycleContract,
    ImmediateReadsContract,
    PrefixChangesContract,
    SizedReadsContract,
    ExpiringContract,
    ReplacesContract,
    AtomicApplyContract,
    BackendFixtures,
):
    """The :class:`~navistore.interfaces.IStorageBackend` contract, as pytest-twisted tests.

    Subclass it in a module named ``test_*.py`` with a class named ``Test*`` and override the
    ``make_backend`` fixture; pytest then runs every contract test against your backend::

        import pytest

        from navistore.testing import BackendComplianceTests
        from mybackend import MyBackend


        class TestMyBackend(BackendComplianceTests):
            persistent = True  # the default; a RAM-only backend says False

            @pytest.fixture
            def make_backend(self, tmp_path):
                # A fresh, empty backend. Plain, yield and pytest_twisted async fixtures all
                # work, and the fixture may return a Deferred of the backend.
                return MyBackend(tmp_path / "store")

            @pytest.fixture
            def reopen_backend(self, tmp_path):
                # Only for persistent backends: a callable taking the old (already closed)
                # backend and returning a new one over the same storage, or a Deferred of it.
                return lambda old: MyBackend(tmp_path / "store")

    A backend that must be opened asynchronously uses a pytest-twisted async fixture; its code
    after ``yield`` runs once the suite has closed the backend::

            @pytest_twisted.async_yield_fixture
            async def make_backend(self, database_url):
                backend = await MyBackend.connect(database_url)
                yield backend
                await drop_tables(database_url)

    What the suite does with them:

    * It makes a fresh backend per test from ``make_backend`` and closes it (and every backend
      it reopened) when the test ends, tolerating one the test closed already. Cleanup after
      that (removing files, stopping a server) belongs in ``make_backend``'s own teardown.
    * ``persistent`` must equal the backend's own ``persistent`` attribute (a test checks it).
      When it is False the persistence tests are reported as skipped with ``not applicable``;
      when it is True and ``reopen_backend`` is not overridden, they fail and say so.
    * A persistence test closes the backend before calling the reopen callable, so the
      callable may reopen files or connections the old one held.
    * The tests of ``peek`` run only against a backend providing the optional
      :class:`~navistore.interfaces.IImmediateReads`, those of ``changes_under`` only
      against one providing the optional :class:`~navistore.interfaces.IPrefixChanges`, and
      those of pages cut by bytes only against one providing
      :class:`~navistore.interfaces.ISizedReads`; for any other they are reported as skipped
      with ``not applicable``.

    The contract, in brief: every method returns a Deferred and reports failures as errbacks;
    ``apply`` is last-writer-wins by stamp with an optional expectation (ANY, ABSENT or a stamp),
    atomic per call; a backend assigns node-local ``seq`` numbers that start at 1, strictly
    increase and are never reused, not after ``purge_tombstones``, ``reset`` or reopening;
    ``reset`` removes records and tombstones but keeps meta data and the seq counter; keys sort
    in code point order; values are arbitrary bytes.
    """

    #: Whether data survives closing and reopening the storage; False skips persistence tests.
    persistent: ClassVar[bool] = True

"""The contract's first clauses: the backend declares the interface, and starts empty.

These come first because every other clause relies on them: a backend that does not provide
:class:`~navistore.interfaces.IStorageBackend`, whose methods do not return Deferreds, or whose
fresh instance is not empty would make every later failure hard to read.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from navistore.interfaces import IStorageBackend
from navistore.testing.compliance.support import (
    _CALLS,
    BackendFixtures,
)

__all__ = ["InterfaceContract"]


class InterfaceContract(BackendFixtures):
    """The backend provides IStorageBackend, declares ``kind`` and ``persistent`` truthfully,
    returns a Deferred from every method, and starts empty."""

    # -- the interface itself -----------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_provides_storage_interface(self, backend: IStorageBackend) -> None:
        """The backend provides IStorageBackend with every method and attribute it declares."""
        assert verifyObject(IStorageBackend, backend)

    @pytest_twisted.ensureDeferred
    async def test_declares_kind_and_persistence(self, backend: IStorageBackend) -> None:
        """``kind`` is a short name, and ``persistent`` agrees with the suite's declaration.

        The suite's ``persistent = False`` skips the persistence tests, so it may only be said of
        a backend that itself admits to losing its data.
        """
        assert isinstance(backend.kind, str)
        assert backend.kind
        assert backend.persistent is self.persistent

    @pytest.mark.parametrize(
        ("method", "arguments"), [*_CALLS, pytest.param("close", (), id="close")]
    )
    @pytest_twisted.ensureDeferred
    async def test_every_method_returns_a_deferred(
        self, backend: IStorageBackend, method: str, arguments: tuple[Any, ...]
    ) -> None:
        """Every method returns a Deferred (rather than a value or a coroutine)."""
        result = getattr(backend, method)(*arguments)
        assert isinstance(result, Deferred)
        await result

    # -- empty backend ----------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_get_missing_key_is_none(self, backend: IStorageBackend) -> None:
        """``get`` of a key never stored fires with None."""
        assert await backend.get("/never/stored") is None

    @pytest_twisted.ensureDeferred
    async def test_fresh_backend_is_empty(self, backend: IStorageBackend) -> None:
        """A fresh backend scans nothing, has no changes and a ``last_seq`` of 0."""
        assert await backend.scan("/", include_deleted=True) == []
        assert await backend.changes(0) == []
        assert await backend.last_seq() == 0

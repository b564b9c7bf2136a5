"""Malformed records are refused with InvalidRecord, as an errback, storing nothing.

A backend is the last line before storage, and records reach it from peers as well as from the
Store; one malformed key or value type written to disk would break every later read of it.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import pytest_twisted  # type: ignore[import-untyped]

from navistore.errors import InvalidRecord
from navistore.interfaces import IStorageBackend
from navistore.record import Record
from navistore.testing.compliance.support import (
    NODE_B,
    BackendFixtures,
    _failure,
    _snapshot,
    _store,
    make_record,
)

__all__ = ["MalformedRecordContract"]

_VALID = make_record("/k", b"v", 1000, counter=5, node_id=NODE_B)


def _malformed(**changes: Any) -> Record:
    """Return a valid record with ``changes`` made, bypassing type checks on purpose."""
    return attrs.evolve(_VALID, **changes)


#: Malformed records, each with the key ``/k`` where a key makes sense.
_MALFORMED = [
    pytest.param(_malformed(key="k"), id="no-leading-slash"),
    pytest.param(_malformed(key="/k/"), id="trailing-slash"),
    pytest.param(_malformed(key="/a//k"), id="empty-segment"),
    pytest.param(_malformed(key="/a/../k"), id="dot-dot"),
    pytest.param(_malformed(key=""), id="empty-key"),
    pytest.param(_malformed(key="/k\x00"), id="nul-in-key"),
    pytest.param(_malformed(value="text"), id="str-value"),
    pytest.param(_malformed(content_type=None), id="no-content-type"),
    pytest.param(_malformed(stamp=str(_VALID.stamp)), id="stamp-as-text"),
    pytest.param(_malformed(deleted=1), id="deleted-not-bool"),
    pytest.param(_malformed(deleted=True, content_type=""), id="tombstone-with-value"),
    pytest.param(_malformed(deleted=True, value=b""), id="tombstone-with-content-type"),
    pytest.param({"key": "/k", "value": b"v"}, id="not-a-record"),
    pytest.param(_malformed(chain=["00000000000000aa"]), id="chain-not-a-tuple"),
    pytest.param(_malformed(chain=("not-a-node-id",)), id="chain-with-bad-node-id"),
    pytest.param(_malformed(expires_ms=-1), id="negative-deadline"),
    pytest.param(_malformed(expires_ms="soon"), id="deadline-as-text"),
    pytest.param(_malformed(flags=-1), id="negative-flags"),
    pytest.param(_malformed(flags=2**64), id="flags-over-64-bits"),
    pytest.param(
        _malformed(deleted=True, value=b"", content_type="", flags=1), id="tombstone-flags"
    ),
]


class MalformedRecordContract(BackendFixtures):
    """Each kind of malformed record fails with InvalidRecord and leaves the backend exactly
    as it was, even over an existing record of the same key."""

    @pytest.mark.parametrize("record", _MALFORMED)
    @pytest_twisted.ensureDeferred
    async def test_malformed_record_fails_with_invalid_record(
        self, backend: IStorageBackend, record: Any
    ) -> None:
        """A malformed record fails with InvalidRecord as an errback and stores nothing, not
        even over an existing record of the same key."""
        await _store(backend, make_record("/k", b"existing", 10), make_record("/other"))
        before = await _snapshot(backend)
        await _failure(lambda: backend.apply(record), InvalidRecord)
        assert await _snapshot(backend) == before

"""A minimal, complete storage backend, written the way a third-party author would write one.

It keeps everything in dicts and rewrites one JSON file after every change, so it survives closing
and reopening (though not a power failure in the middle of a write: the file is replaced
atomically, but not fsynced). It uses only Navistore's public API: the interface and its helpers,
records, keys and the record codec of ``navistore.protocol.records``.
``tests/test_writing_a_backend.py`` runs the compliance suite against it, both from this
repository and from an installed copy of Navistore.

A package shipping it would register the scheme ``minimal`` in its ``pyproject.toml``::

    [project.entry-points."navistore.backends"]
    minimal = "minimal_backend:open_minimal"
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from navistore.interfaces import (
    ANY,
    BackendClosed,
    Expectation,
    InvalidRecord,
    IStorageBackend,
    expectation_holds,
    supersedes,
)
from navistore.keys import key_in_prefix
from navistore.protocol.records import record_from_json, record_to_json
from navistore.record import Record, check_record

if TYPE_CHECKING:
    from navistore.backend import BackendURL

__all__ = ["MinimalBackend", "open_minimal"]


@implementer(IStorageBackend)
class MinimalBackend:
    """Records and meta data in dicts, saved to ``path`` as JSON after every change."""

    kind = "minimal"
    persistent = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._records: dict[str, Record] = {}
        self._meta: dict[str, str] = {}
        self._last_seq = 0
        self._closed = False
        if self._path.exists():
            saved = json.loads(self._path.read_text(encoding="utf-8"))
            self._records = {r["key"]: record_from_json(r) for r in saved["records"]}
            self._meta = saved["meta"]
            self._last_seq = saved["last_seq"]

    def _save(self) -> None:
        state = {
            "records": [record_to_json(record) for record in self._records.values()],
            "meta": self._meta,
            # Saved on its own: purging or resetting must not let a seq be handed out twice.
            "last_seq": self._last_seq,
        }
        scratch = self._path.with_name(self._path.name + ".tmp")
        scratch.write_text(json.dumps(state), encoding="utf-8")
        os.replace(scratch, self._path)

    def get(self, key: str) -> Deferred[Record | None]:
        if self._closed:
            return fail(BackendClosed("get"))
        return succeed(self._records.get(key))

    def apply(self, record: Record, expect: Expectation = ANY) -> Deferred[Record | None]:
        if self._closed:
            return fail(BackendClosed("apply"))
        try:
            check_record(record)
        except InvalidRecord as error:
            return fail(error)
        stored = self._records.get(record.key)
        if not supersedes(record, stored) or not expectation_holds(stored, expect):
            return succeed(None)
        self._last_seq += 1
        self._records[record.key] = record.with_seq(self._last_seq)
        self._save()
        return succeed(self._records[record.key])

    def scan(
        self,
        prefix: str = "/",
        after: str | None = None,
        limit: int = 1000,
        include_deleted: bool = False,
    ) -> Deferred[list[Record]]:
        if self._closed:
            return fail(BackendClosed("scan"))
        found = [
            self._records[key]
            for key in sorted(self._records)
            if key_in_prefix(key, prefix)
            and (after is None or key > after)
            and (include_deleted or not self._records[key].deleted)
        ]
        return succeed(found[:limit])

    def changes(self, since: int = 0, limit: int = 1000) -> Deferred[list[Record]]:
        if self._closed:
            return fail(BackendClosed("changes"))
        newer = [record for record in self._records.values() if (record.seq or 0) > since]
        newer.sort(key=lambda record: record.seq or 0)
        return succeed(newer[:limit])

    def last_seq(self) -> Deferred[int]:
        if self._closed:
            return fail(BackendClosed("last_seq"))
        return succeed(self._last_seq)

    def purge_tombstones(self, before_seq: int) -> Deferred[int]:
        if self._closed:
            return fail(BackendClosed("purge_tombstones"))
        doomed = [
            key
            for key, record in self._records.items()
            if record.deleted and (record.seq or 0) < before_seq
        ]
        for key in doomed:
            del self._records[key]
        if doomed:
            self._save()
        return succeed(len(doomed))

    def reset(self) -> Deferred[None]:
        if self._closed:
            return fail(BackendClosed("reset"))
        self._records.clear()
        self._save()
        return succeed(None)

    def get_meta(self, name: str) -> Deferred[str | None]:
        if self._closed:
            return fail(BackendClosed("get_meta"))
        return succeed(self._meta.get(name))

    def set_meta(self, name: str, value: str) -> Deferred[None]:
        if self._closed:
            return fail(BackendClosed("set_meta"))
        self._meta[name] = value
        self._save()
        return succeed(None)

    def close(self) -> Deferred[None]:
        # Every change is saved before its Deferred fires, so there is no pending work.
        self._closed = True
        return succeed(None)


def open_minimal(url: BackendURL) -> MinimalBackend:
    """The entry point's object: make a backend for ``minimal:/path/to/store.json``."""
    url.refuse_unknown_options(())
    return MinimalBackend(url.location)

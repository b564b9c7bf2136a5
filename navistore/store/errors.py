"""What the Store refuses, as errors with stable codes (the API's ``error`` names)."""

from __future__ import annotations

from typing import Any

from navistore.record import Record

__all__ = ["Conflict", "NotFound", "PreconditionFailed", "RefusedRecord", "StoreError"]


class StoreError(Exception):
    """A request the Store refuses; ``code`` is the stable error name the API reports.

    :ivar detail: what an error answer's ``detail`` carries (None: nothing more to say).
    """

    code = "store_error"
    detail: Any = None


class NotFound(StoreError):
    """The key does not exist (never written, or deleted)."""

    code = "not_found"

    def __init__(self, key: str) -> None:
        super().__init__(f"no key {key!r}")
        self.key = key
        self.detail = {"key": key}


class Conflict(StoreError):
    """A create-only write found the key already there."""

    code = "conflict"

    def __init__(self, key: str, current: Record) -> None:
        super().__init__(f"key {key!r} already exists (version {current.stamp})")
        self.key = key
        self.current = current
        self.detail = {"key": key, "version": current.stamp.encode()}


class PreconditionFailed(StoreError):
    """An ``If-Match`` / ``If-None-Match`` condition does not hold for the stored key."""

    code = "precondition_failed"

    def __init__(self, key: str, condition: str, current: Record | None) -> None:
        state = "is absent" if current is None else f"is at version {current.stamp}"
        super().__init__(f"condition {condition} failed: key {key!r} {state}")
        self.key = key
        self.current = current
        version = None if current is None else current.stamp.encode()
        self.detail = {"key": key, "version": version}


class RefusedRecord(StoreError):
    """A record received from another node breaks this node's rules (its key grammar and length,
    the reserved names, its value limit); the whole batch it came in is refused."""

    code = "refused_record"

    def __init__(self, index: int, key: str, reason: str) -> None:
        super().__init__(f"record {index} ({key[:200]!r}) is refused: {reason}")
        self.detail = {"index": index, "key": key[:200], "reason": reason}

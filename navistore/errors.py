"""The typed errors a storage backend reports, as errbacks of the Deferreds it returns.

They live apart from :mod:`navistore.interfaces` so that pure data modules can raise them without
importing the interface.
"""

from __future__ import annotations

__all__ = ["BackendClosed", "BackendError", "InvalidRecord", "StorageFailure"]


class BackendError(Exception):
    """Base class of every error a backend reports.

    ``code`` is the API's error name when such an error reaches a client: a backend that fails
    makes the node unavailable (503), whatever the backend's own exception says.
    """

    code = "backend_unavailable"


class BackendClosed(BackendError):
    """The backend was closed; no call may use it any more."""

    def __init__(self, operation: str = "call") -> None:
        super().__init__(f"the backend is closed; {operation}() cannot run")
        self.operation = operation


class InvalidRecord(BackendError, ValueError):
    """A record handed to ``apply`` is malformed; nothing was stored."""

    code = "invalid_record"


class StorageFailure(BackendError):
    """The underlying storage failed (disk full, I/O error, lost connection).

    The operation did not take effect: a failed ``apply`` stored nothing.
    """

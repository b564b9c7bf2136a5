"""The node's Store, and what its calls answer or refuse.

- :mod:`~navistore.store.core`: :class:`Store`, the one object the web layer and replication
  talk to;
- :mod:`~navistore.store.errors`: what it refuses (:class:`NotFound`, :class:`Conflict`,
  :class:`PreconditionFailed`), with stable codes;
- :mod:`~navistore.store.pages`: what it answers (:class:`WriteResult`, :class:`KeysPage`,
  :class:`ChangesPage`);
- :mod:`~navistore.store.horizon` and :mod:`~navistore.store.feed`: the tombstone purge horizon,
  and reading the change feed without a silent gap (:class:`ResyncRequired`).
"""

from navistore.store.core import MATCH_ANY, NODE_ID_META, ChangeListener, Store
from navistore.store.errors import (
    Conflict,
    NotFound,
    PreconditionFailed,
    RefusedRecord,
    StoreError,
)
from navistore.store.horizon import PURGED_BEFORE_META
from navistore.store.pages import Change, ChangesPage, KeysPage, WriteResult

__all__ = [
    "MATCH_ANY",
    "NODE_ID_META",
    "PURGED_BEFORE_META",
    "Change",
    "ChangeListener",
    "ChangesPage",
    "Conflict",
    "KeysPage",
    "NotFound",
    "PreconditionFailed",
    "RefusedRecord",
    "Store",
    "StoreError",
    "WriteResult",
]

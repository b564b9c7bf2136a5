"""Reading the change feed without a silent gap: the purge horizon check and resync.

Once tombstones are purged (:meth:`~navistore.store.Store.purge_tombstones`), a reader resuming
after a seq below the purge horizon could miss a delete. :func:`check_horizon` and
:func:`read_changes` turn that into :class:`ResyncRequired` instead of a silent gap, like etcd v2's
"event index cleared" (error 401), but with the seq to restart from. Every feed uses them: the
HTTP feeds and watches, replication's pull endpoint, the tombstone collector's readers.
"""

from __future__ import annotations

from typing import Any, Union

from navistore.store.core import Store
from navistore.store.pages import ChangesPage

__all__ = ["Prefixes", "ResyncRequired", "check_horizon", "needs_resync", "read_changes"]

#: A canonical prefix, or several (a change under any of them counts; none: nothing does).
Prefixes = Union[str, tuple[str, ...]]


class ResyncRequired(Exception):
    """The reader's position is older than the purge horizon: deletes after it may be gone.

    :ivar since: the seq the reader asked to resume after.
    :ivar last_seq: the node's newest seq: re-read the state, then watch after it.
    :ivar purged_before: tombstones with a seq below this may have been purged.
    """

    code = "resync_required"

    def __init__(self, since: int, last_seq: int, purged_before: int) -> None:
        super().__init__(
            f"changes after seq {since} are no longer complete here (tombstones below seq "
            f"{purged_before} were purged): re-read the state (e.g. /_keys) and watch from "
            f"last_seq {last_seq}"
        )
        self.since = since
        self.last_seq = last_seq
        self.purged_before = purged_before

    @property
    def detail(self) -> dict[str, Any]:
        """Where to continue from, for the error answer."""
        return {"last_seq": self.last_seq, "purged_before": self.purged_before}


def needs_resync(
    since: int, purged_before: int, *, full_read: bool = True, started_at: int | None = None
) -> bool:
    """Tell whether resuming after seq ``since`` could miss a purged tombstone.

    Every purged tombstone has a seq below ``purged_before``, so ``since >= purged_before - 1``
    misses none. With ``full_read``, ``since == 0`` is never refused: the feed from 0 lists every
    live key at its latest seq, which is the state itself (a reader must replace its copy with
    it, not merge into it); that is what a resync would read anyway. A reader paging through
    that full read passes back, as ``started_at``, the horizon its first page reported: while
    the horizon has not moved since, nothing it is still to read was purged.
    """
    if full_read and since == 0:
        return False
    if started_at is not None and started_at == purged_before:
        return False
    return since + 1 < purged_before


async def check_horizon(
    store: Store, since: int, *, full_read: bool = True, started_at: int | None = None
) -> int:
    """Return the purge horizon, or raise :class:`ResyncRequired` if reading after ``since``
    could miss a purged delete."""
    horizon = await store.purged_before()
    if needs_resync(since, horizon, full_read=full_read, started_at=started_at):
        raise ResyncRequired(since, await store.last_seq(), horizon)
    return horizon


async def read_changes(
    store: Store, since: int, *, limit: int, prefix: Prefixes, started_at: int | None = None
) -> tuple[ChangesPage, int]:
    """Read a page of the change feed with the purge horizon, or raise
    :class:`ResyncRequired` for a gap.

    The horizon is checked *after* the read: a purge raises it before removing anything, so a
    page read while a purge ran is refused rather than returned with a hole in it.
    """
    page = await store.changes(since, limit=limit, prefix=prefix)
    horizon = await check_horizon(store, since, started_at=started_at)
    return page, horizon

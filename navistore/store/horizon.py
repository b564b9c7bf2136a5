"""The purge horizon: below which seq tombstones may have been purged.

A reader of the change feed that resumes after seq ``since`` misses no delete as long as
``since >= horizon - 1``; below that it must re-read the state (resync). The horizon only ever
rises: purging tombstones raises it before removing anything, and so does a reset, whose records
vanish without tombstones.
"""

from __future__ import annotations

from navistore.interfaces import IStorageBackend

__all__ = ["PURGED_BEFORE_META", "PurgeHorizon"]

#: The horizon lives in the backend's meta data under this name.
PURGED_BEFORE_META = "tombstones.purged_before"


class PurgeHorizon:
    """The horizon of one backend, kept in memory once read and durably in its meta data.

    The node's Store is the only one purging its backend, so the value in memory is the truth.
    """

    def __init__(self, backend: IStorageBackend) -> None:
        self._backend = backend
        self._value: int | None = None

    async def current(self) -> int:
        """Tombstones with a seq below this may be gone (0: none ever purged)."""
        if self._value is None:
            text = await self._backend.get_meta(PURGED_BEFORE_META)
            if self._value is None:  # a raise meanwhile knows better
                self._value = int(text) if text else 0
        return self._value

    async def raise_to(self, before_seq: int) -> None:
        """Move the horizon up to ``before_seq`` (in memory, then durably); never down.

        In memory first, so a reader that checks it after reading can never take a purged gap
        for "nothing changed"; a crash before the meta data is written only makes the horizon
        cautious (a purge that did not happen is redone), never wrong.
        """
        horizon = max(await self.current(), before_seq)
        if horizon != self._value:
            self._value = horizon
            await self._backend.set_meta(PURGED_BEFORE_META, str(horizon))

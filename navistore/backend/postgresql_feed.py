"""The change feed under a prefix (:class:`~navistore.interfaces.IPrefixChanges`) in PostgreSQL.

Two indexes can find the changes under a prefix: the key index (every key under the prefix is
read: cheap for a narrow prefix, whatever the length of the log) and the seq index (the log is
walked after ``since`` until enough keys under the prefix came by: cheap when ``since`` is
recent or the prefix wide). The planner cannot know which reads fewer rows (it only estimates
how many keys a prefix holds), so :func:`changes_under` finds out as the sqlite backend does:
it walks the log in windows that double in length and, before each, counts the keys under the
prefix up to the window's length; as soon as fewer keys than the window lie under the prefix,
it reads those instead. Each query is written so that only the intended index serves it: the
key-index read is fenced by ``OFFSET 0`` (the planner cannot push the seq condition into it),
and the walks compare ``key || ''``, an expression no index covers.

Everything runs in one read-only REPEATABLE READ transaction: one snapshot, so the page is the
feed as of one moment even while other sessions write.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from navistore.backend.postgresql_schema import COLUMNS as _COLUMNS
from navistore.backend.postgresql_schema import read_state, select_records
from navistore.interfaces import stored_size
from navistore.record import Record

if TYPE_CHECKING:
    from twisted.enterprise import adbapi

__all__ = ["PREFIX_SCAN_BUDGET", "changes_under", "changes_under_sql"]

#: How many changes the first window of the walk holds (and how many keys under a prefix make it
#: wide enough to walk at all), as in the sqlite backend.
PREFIX_SCAN_BUDGET = 10_000


def changes_under_sql(shape: str, bounded: bool) -> str:
    """One of the queries :func:`changes_under` chooses from (``bounded``: the prefix has an
    upper bound, ``key < %s`` after ``key >= %s``).

    - ``count``: how many keys lie under the prefix, counting at most ``%s`` of them (the key
      index alone).
    - ``keys``: the first ``%s`` changes after ``%s`` under the prefix, through the key index.
    - ``tail``: the same, walking the log after ``%s`` through the seq index.
    - ``window``: ``tail`` up to seq ``%s`` only.
    - ``window_end``: the seq of the change ``%s`` places after the first one after ``%s``.
    """
    within = "key >= %s AND key < %s" if bounded else "key >= %s"
    if shape == "count":
        return f"SELECT count(*) FROM (SELECT 1 FROM records WHERE {within} LIMIT %s) AS under"
    if shape == "keys":
        return (
            f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS} FROM records WHERE {within}"
            " ORDER BY key OFFSET 0) AS under WHERE seq > %s ORDER BY seq LIMIT %s"
        )
    walked = within.replace("key", "(key || '')")
    if shape == "tail":
        return f"SELECT {_COLUMNS} FROM records WHERE seq > %s AND {walked} ORDER BY seq LIMIT %s"
    if shape == "window":
        return (
            f"SELECT {_COLUMNS} FROM records WHERE seq > %s AND seq <= %s AND {walked}"
            " ORDER BY seq LIMIT %s"
        )
    if shape == "window_end":
        return "SELECT seq FROM records WHERE seq > %s ORDER BY seq OFFSET %s LIMIT 1"
    raise ValueError(f"no query shape {shape!r}")


def changes_under(
    txn: adbapi.Transaction,
    prefix: str,
    bound: str | None,
    since: int,
    limit: int,
    max_bytes: int | None = None,
    *,
    budget: int = PREFIX_SCAN_BUDGET,
) -> list[Record]:
    """The changes after ``since`` under ``prefix`` (keys in ``[prefix, bound)``), first
    ``limit``, in seq order, as ``changes`` filtered by prefix would list them, for the cost
    of the keys under the prefix or of the changes it passes, whichever is fewer (within twice
    either); ``max_bytes`` cuts the page by size."""
    if limit <= 0:
        return []
    txn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        found = _changes_under(txn, prefix, bound, since, limit, max_bytes, budget)
    except BaseException:
        with contextlib.suppress(Exception):  # a broken connection: adbapi drops it anyway
            txn.execute("ROLLBACK")
        raise
    txn.execute("COMMIT")
    return found


def _changes_under(
    txn: adbapi.Transaction,
    prefix: str,
    bound: str | None,
    since: int,
    limit: int,
    max_bytes: int | None,
    budget: int,
) -> list[Record]:
    bounded = bound is not None
    within: tuple[Any, ...] = (prefix,) if bound is None else (prefix, bound)
    # At least the number of changes after ``since`` (rewritten keys leave holes in the seqs).
    if read_state(txn, "last_seq") - since <= limit:
        tail = (since, *within, limit)
        return select_records(txn, changes_under_sql("tail", bounded), tail, "seq", max_bytes)
    found: list[Record] = []
    window = max(budget, 4 * limit)
    while True:
        txn.execute(changes_under_sql("count", bounded), (*within, window))
        under = int(txn.fetchall()[0][0])
        wanted = limit - len(found)
        left = None if max_bytes is None else max_bytes - sum(map(stored_size, found))
        if under < window:
            keys = (*within, since, wanted)
            found.extend(select_records(txn, changes_under_sql("keys", bounded), keys, "seq", left))
            return found
        txn.execute(changes_under_sql("window_end", bounded), (since, window - 1))
        rows = txn.fetchall()
        if not rows:  # the log after ``since`` is shorter than the window: walk all of it
            tail = (since, *within, wanted)
            found.extend(select_records(txn, changes_under_sql("tail", bounded), tail, "seq", left))
            return found
        window_end = int(rows[0][0])
        walk = (since, window_end, *within, wanted)
        found.extend(select_records(txn, changes_under_sql("window", bounded), walk, "seq", left))
        if len(found) == limit:
            return found
        if max_bytes is not None and sum(map(stored_size, found)) >= max_bytes:
            return found
        since = window_end
        window *= 2

"""An online, consistent copy of a sqlite node's database, with sqlite's backup API.

:func:`take_backup` runs on a thread of its own (it blocks for as long as the copy takes): a
connection of its own reads the database while the node goes on writing (WAL mode lets a reader
and the writer run together), and ``Connection.backup`` copies every page in one step, inside
one read transaction, so the copy is the database as of one commit: every write acknowledged
before the copy began, none half. The copy is written next to the database (same file system:
no surprise about space elsewhere, and the OS's page cache serves the stream that follows) and
turned into a self-contained file (``journal_mode=DELETE``: no ``-wal`` beside it), which a
node opens like any database.

A copy carries the node's identity: its node id, its seq counter, its peers and their cursors.
That is right to replace the node it came from (lost disk, bad upgrade), and wrong for a second
node beside it: two nodes with one id would each take the other's writes for its own. A new
replica starts empty with ``--clone-from``.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile

import attrs

__all__ = ["Backup", "describe_database", "take_backup"]


@attrs.frozen
class Backup:
    """A copy taken: where it is, its size, and the node id and newest seq it holds."""

    path: str
    size: int
    node_id: str | None
    last_seq: int | None


def describe_database(connection: sqlite3.Connection) -> tuple[str | None, int | None]:
    """The node id and newest seq a Navistore database holds (None where it has none)."""
    node_id = last_seq = None
    try:
        row = connection.execute("SELECT value FROM meta WHERE name = 'node_id'").fetchone()
        node_id = None if row is None else str(row[0])
        row = connection.execute(
            "SELECT value FROM backend_state WHERE name = 'last_seq'"
        ).fetchone()
        last_seq = None if row is None else int(row[0])
    except sqlite3.Error:
        pass
    return node_id, last_seq


def take_backup(database: str) -> Backup:
    """Copy ``database`` into a new temporary file beside it; blocks (run it on a thread).

    The caller owns the copy (and removes it); a failure removes it here.
    """
    directory, name = os.path.split(os.path.abspath(database))
    handle, path = tempfile.mkstemp(prefix=f".{name}.backup-", suffix=".tmp", dir=directory)
    os.close(handle)
    try:
        source = sqlite3.connect(database, timeout=5.0)
        try:
            target = sqlite3.connect(path)
            try:
                # pages=-1 (the default): every page in one step, one read transaction on the
                # source; a backup in several steps restarts whenever the node writes between
                # two of them, so under steady writes it would never end.
                source.backup(target)
                target.execute("PRAGMA journal_mode = DELETE").fetchall()
                node_id, last_seq = describe_database(target)
            finally:
                target.close()
        finally:
            source.close()
        return Backup(path, os.path.getsize(path), node_id, last_seq)
    except BaseException:
        os.unlink(path)
        raise

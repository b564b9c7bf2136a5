"""What a prefix-filtered change feed costs in sqlite, per way of finding it, and what an index on
``(key, seq)`` would cost every write.

Run from the repository root: ``.venv/bin/python bench/bench_prefix_feed.py [--keys N]``
(default 400,000 keys; under a minute). It builds one database of N keys, each written once,
whose change log interleaves them:

* ``/nothing/`` matches no key;
* ``/few/`` matches 100 keys spread over the whole log;
* ``/half/`` matches 50 % of the keys, spread over the whole log but its first and last 10 %;
* ``/early/`` matches 10 % of the keys, all written first (the oldest 10 % of the log);
* ``/late/`` matches 10 % of the keys, all written last (the newest 10 % of the log): a walk
  through the log from ``since=0`` passes 90 % of it before the first.

For each prefix, from ``since=0``, from ``since=N/10`` (the end of ``/early/``: nothing under it
changed after, a quiet wide prefix) and from ``since=last_seq-10``, it times one page of 1000
changes (the feed's default page; the best of several runs, on a warm page cache) found

* ``log, Python``: as ``Store.changes`` did before ``IPrefixChanges``: ``changes()`` page by
  page, every record decoded and its key tested in Python, the whole log after ``since`` when
  the prefix has fewer matches than a page;
* ``key index``: through the index of ``key`` (the primary key): every key under the prefix;
* ``seq walk``: through the index of ``seq``, the key tested by sqlite, up to a full page;
* ``chosen``: ``sqlite_schema.changes_under``, what the backend runs: the walk when the log
  after ``since`` is no longer than a page; else windows of the walk that double in length
  (from 10,000 changes), each after counting the keys under the prefix up to the window's
  length, and the key index as soon as the prefix holds fewer keys than the next window,

each on the database as it is (the key index is ``sqlite_autoindex_records_1``, on ``key``
alone) and with ``CREATE INDEX ... ON records (key, seq)``, which sqlite then uses for the key
range (it holds ``seq``, so the rows outside ``since`` are not read).

Then the other side of an index: writes. On copies of the database with and without the
``(key, seq)`` index it applies records to random existing keys (every write moves a key in
every index) in group commits of 100 and one by one, through ``sqlite_schema.write_batch`` on a
connection of its own with the backend's PRAGMAs, and prints microseconds per record.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from navistore.backend import sqlite_schema as schema
from navistore.clock import Stamp
from navistore.interfaces import ANY
from navistore.keys import prefix_upper_bound
from navistore.record import Record

NODE = "0123456789abcdef"
VALUE = b"x" * 100
PAGE = 1000
RUNS = 5
PREFIXES = ("/nothing/", "/few/", "/half/", "/early/", "/late/")
KEY_SEQ_INDEX = "CREATE INDEX IF NOT EXISTS records_by_key_seq ON records (key, seq)"


def key_of(number: int, keys: int) -> str:
    """The key written at seq ``number + 1`` of a database of ``keys`` keys (see above)."""
    tenth = keys // 10
    if number < tenth:
        return f"/early/{number:09}"
    if number >= keys - tenth:
        return f"/late/{number:09}"
    if number % 8 < 5:  # 5/8 of the 80 % in the middle
        return f"/half/{number:09}"
    if number % max(8, (keys - 2 * tenth) // 100 // 8 * 8) == 5:  # 100 of them, = 5 (mod 8)
        return f"/few/{number:09}"
    return f"/rest/{number:09}"


def connect(path: str) -> sqlite3.Connection:
    """A connection configured as the backend's (WAL, synchronous=normal), schema up to date."""
    connection = sqlite3.connect(path)
    schema.open_connection(connection, "normal", path)
    return connection


def build(path: str, keys: int) -> None:
    connection = connect(path)
    batch = 10_000
    for start in range(0, keys, batch):
        records = [
            (Record(key_of(n, keys), VALUE, "text/plain", Stamp(n + 1, 0, NODE)), ANY)
            for n in range(start, min(keys, start + batch))
        ]
        schema.transact(connection, schema.write_batch, records)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    connection.close()


def copy_with_index(source: str, target: str, with_index: bool) -> None:
    shutil.copyfile(source, target)
    connection = sqlite3.connect(target)
    if with_index:
        connection.execute(KEY_SEQ_INDEX)
    else:
        connection.execute("DROP INDEX IF EXISTS records_by_key_seq")
    connection.commit()
    connection.close()


# -- the ways of reading a page -------------------------------------------------------------

Way = Callable[[sqlite3.Cursor, str, int], list[Record]]


def log_in_python(cursor: sqlite3.Cursor, prefix: str, since: int) -> list[Record]:
    """The loop ``Store.changes`` ran before: pages of the whole feed, filtered in Python."""
    found: list[Record] = []
    while True:
        page = schema.select_records(cursor, schema.CHANGES_SQL, (since, PAGE))
        for record in page:
            assert record.seq is not None
            if record.key.startswith(prefix):
                found.append(record)
                if len(found) == PAGE:
                    return found
            since = record.seq
        if len(page) < PAGE:
            return found


def _shape(shape: str, prefix: str, since: int) -> tuple[str, tuple[object, ...]]:
    bound = prefix_upper_bound(prefix)
    within = (prefix,) if bound is None else (prefix, bound)
    sql = schema.changes_under_sql(shape, bound is not None)
    if shape == "keys":
        return sql, (*within, since, PAGE)
    return sql, (since, *within, PAGE)


def key_index(cursor: sqlite3.Cursor, prefix: str, since: int) -> list[Record]:
    return schema.select_records(cursor, *_shape("keys", prefix, since))


def seq_walk(cursor: sqlite3.Cursor, prefix: str, since: int) -> list[Record]:
    return schema.select_records(cursor, *_shape("tail", prefix, since))


def chosen(cursor: sqlite3.Cursor, prefix: str, since: int) -> list[Record]:
    return schema.changes_under(cursor, prefix, prefix_upper_bound(prefix), since, PAGE)


WAYS: dict[str, Way] = {
    "log, Python": log_in_python,
    "key index": key_index,
    "seq walk": seq_walk,
    "chosen": chosen,
}


def time_page(connection: sqlite3.Connection, way: Way, prefix: str, since: int) -> float:
    best = float("inf")
    runs = 1 if way is log_in_python else RUNS
    expected: list[Record] | None = None
    for _ in range(runs):
        cursor = connection.cursor()
        started = time.perf_counter()
        page = way(cursor, prefix, since)
        best = min(best, time.perf_counter() - started)
        cursor.close()
        assert expected is None or page == expected
        expected = page
    return best


def plans(connection: sqlite3.Connection) -> None:
    for shape in ("count", "keys", "tail", "window", "window_end"):
        sql = schema.changes_under_sql(shape, True)
        rows = connection.execute(f"EXPLAIN QUERY PLAN {sql}", (0,) * sql.count("?"))
        print(f"  {shape:<11}" + "; ".join(row[3] for row in rows))


def reads(paths: dict[str, str], keys: int) -> None:
    print(f"\none page of {PAGE} changes, milliseconds (best of {RUNS}; the Python loop: 1 run)")
    for label, path in paths.items():
        connection = sqlite3.connect(path)
        last = int(schema.read_state(connection.cursor(), "last_seq"))
        print(f"\n{label}; query plans:")
        plans(connection)
        print(f"{'prefix':<10} {'since':>8} {'found':>6}" + "".join(f"{w:>13}" for w in WAYS))
        for prefix in PREFIXES:
            for since in (0, keys // 10, last - 10):
                found = len(chosen(connection.cursor(), prefix, since))
                times = [time_page(connection, way, prefix, since) for way in WAYS.values()]
                print(
                    f"{prefix:<10} {since:>8} {found:>6}"
                    + "".join(f"{seconds * 1000:>13.2f}" for seconds in times)
                )
        connection.close()


# -- writes ---------------------------------------------------------------------------------


def writes(paths: dict[str, str], keys: int) -> None:
    """Writes to random existing keys, in turns on each database so that noise (another
    process, the page cache) falls on both alike."""
    rounds = 9
    print(f"\nwrites to random existing keys, microseconds per record (median of {rounds} rounds)")
    print(f"{'database':<28} {'100 per commit':>15} {'1 per commit':>13}")
    connections = {}
    for label, path in paths.items():
        connection = sqlite3.connect(path)
        for pragma in ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL"):
            connection.execute(pragma).fetchall()
        connections[label] = connection
    rng = random.Random(1)
    wall = keys + 10
    figures: dict[str, list[list[float]]] = {label: [[], []] for label in paths}
    for _ in range(rounds):
        for column, (per_commit, commits) in enumerate(((100, 20), (1, 300))):
            numbers = [rng.randrange(keys) for _ in range(per_commit * commits)]
            for label, connection in connections.items():
                started = time.perf_counter()
                for commit in range(commits):
                    batch = []
                    for number in numbers[commit * per_commit : (commit + 1) * per_commit]:
                        wall += 1
                        record = Record(
                            key_of(number, keys), VALUE, "text/plain", Stamp(wall, 0, NODE)
                        )
                        batch.append((record, ANY))
                    schema.transact(connection, schema.write_batch, batch)
                elapsed = time.perf_counter() - started
                figures[label][column].append(elapsed / len(numbers) * 1e6)
    for label, connection in connections.items():
        connection.close()
        one, many = (statistics.median(column) for column in figures[label])
        print(f"{label:<28} {one:>15.1f} {many:>13.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=400_000)
    keys = parser.parse_args().keys
    python = f"{sys.implementation.name} {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}"
    print(f"prefix-filtered change feed over {keys:,} keys, 100-byte values, {python}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        base = os.path.join(directory, "base.db")
        build(base, keys)
        paths = {
            "key index on key (today)": os.path.join(directory, "key.db"),
            "plus index on (key, seq)": os.path.join(directory, "key_seq.db"),
        }
        for with_index, path in enumerate(paths.values()):
            copy_with_index(base, path, bool(with_index))
        reads(paths, keys)
        writes(paths, keys)
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()

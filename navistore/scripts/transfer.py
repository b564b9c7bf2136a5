"""``navistore export``, ``import`` and ``backup``: a node's data out and in.

::

    navistore export [PREFIX] [-o FILE]        the records under PREFIX as JSON lines, on stdout
                                               (or in FILE, written atomically)
    navistore import [--dry-run] [--partial] FILE|-
                                               apply an export: newer records win, so importing
                                               twice, or an older file, changes nothing
    navistore import --consul FILE|-           the JSON array of ``consul kv export``
    navistore backup FILE                      a copy of a sqlite node's database (atomically)

``export`` reads ``GET /_export`` as it streams and checks its end line: an answer cut short is
exit status 4 (and with ``-o`` nothing is written). ``import`` checks the file first (its header,
its end line and the records it counts: a file cut short is refused unless ``--partial``), then
sends it as ``POST /_import`` requests of about :data:`IMPORT_CHUNK` bytes, each checked whole by
the node before any of its records is applied; an invalid line stops it, naming the file's line
and what earlier requests applied. Since an import is idempotent, running it again once the line
is fixed is safe. ``--dry-run`` has the node check every line and apply none.

``import --consul`` reads ``consul kv export`` (``[{"key", "flags", "value"}]``, values in
base64): ``app/db`` becomes ``/app/db``, folders (a key ending in ``/`` without a value) are
skipped, and flags, which Navistore does not keep yet, are dropped with a warning counting them.
Consul records carry no versions: they are sent as lines without a stamp, so each is a new write
on the node (importing again writes them again, with the same values).

``backup`` downloads ``GET /_backup`` into a temporary file beside FILE, checks its length and
sqlite's ``quick_check``, fsyncs it and renames it over FILE: FILE is either the old one or a
whole, checked copy. A node started on the copy is the node it came from (same node id, same
seq): that replaces a lost node; a second node is a ``--clone-from``.

On a terminal, each shows a progress line on stderr (lines or bytes, the rate, and for a file
of known size the share done and the time left). These requests wait up to
:data:`TRANSFER_TIMEOUT` seconds (or ``--timeout`` if longer) for the node.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import http.client
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, BinaryIO, Callable, TextIO

from navistore.backend.sqlite_backup import describe_database
from navistore.json_documents import parse_json
from navistore.keys import InvalidKey, normalize_key, normalize_prefix
from navistore.protocol.export_format import (
    End,
    InvalidLine,
    entry_line,
    header_line,
    parse_line,
)
from navistore.scripts.node_client import (
    UNAVAILABLE,
    USAGE,
    Answer,
    Failed,
    Node,
    Streams,
    _key,
    _query,
    exit_status,
)

__all__ = [
    "COMMANDS",
    "IMPORT_CHUNK",
    "TRANSFER_TIMEOUT",
    "Progress",
    "add_parsers",
    "atomic_file",
    "consul_lines",
]

#: About the most bytes of lines one ``POST /_import`` carries (a longer line goes alone): well
#: within the node's body limit (64 MiB at least), and small enough for a lively progress line.
IMPORT_CHUNK = 4 * 1024 * 1024
#: The least time (seconds) these commands wait for the node to answer or send more: a backup's
#: first byte comes once the whole copy is taken.
TRANSFER_TIMEOUT = 300.0
#: Bytes read from the node at a time.
_READ = 256 * 1024
#: The longest line read from an import file before giving up on it (the node's limit is lower,
#: with the default value limit, and refuses it with its line number).
_MAX_LINE = 1 << 30


def _is_terminal(stream: object) -> bool:
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError  # pragma: no cover


class Progress:
    """One line on stderr, redrawn at most ten times a second, only when stderr is a terminal:
    lines and bytes so far, the rate, and against a known total a bar and the time left."""

    def __init__(
        self,
        err: TextIO,
        what: str,
        total: int | None = None,
        *,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.err = err
        self.what = what
        self.total = total
        self.enabled = _is_terminal(err) if enabled is None else enabled
        self.lines = 0
        self.bytes = 0
        self._clock = clock
        self._started = clock()
        self._drawn: float | None = None
        self._width = 0

    def advance(self, lines: int, size: int) -> None:
        """``lines`` more lines, ``size`` more bytes."""
        self.lines += lines
        self.bytes += size
        self.draw()

    def text(self) -> str:
        """The line as it stands."""
        elapsed = max(self._clock() - self._started, 1e-3)
        rate = self.bytes / elapsed
        parts = [self.what]
        if self.total:
            share = min(self.bytes / self.total, 1.0)
            filled = int(share * 20)
            parts.append(f"[{'#' * filled}{'.' * (20 - filled)}] {share * 100:5.1f}%")
        if self.lines:
            parts.append(f"{self.lines:,} lines ({self.lines / elapsed:,.0f}/s)")
        done = _size(self.bytes) + (f" of {_size(self.total)}" if self.total else "")
        parts.append(f"{done} ({_size(rate)}/s)")
        if self.total and rate > 0 and self.bytes < self.total:
            parts.append(f"{(self.total - self.bytes) / rate:.0f} s left")
        return "  ".join(parts)

    def draw(self, final: bool = False) -> None:
        """Redraw the line (at once when ``final``)."""
        if not self.enabled:
            return
        now = self._clock()
        if not final and self._drawn is not None and now - self._drawn < 0.1:
            return
        self._drawn = now
        text = self.text()
        self.err.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self.err.flush()

    def finish(self) -> None:
        """Draw the last state and end the line."""
        if self.enabled:
            self.draw(final=True)
            self.err.write("\n")
            self.err.flush()


def _timeout(args: argparse.Namespace) -> float:
    return max(float(args.timeout), TRANSFER_TIMEOUT)


def _request(
    node: Node,
    connection: http.client.HTTPConnection,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    try:
        return node.send(connection, method, target, body, headers)
    except (OSError, http.client.HTTPException) as exc:
        raise Failed(UNAVAILABLE, f"cannot reach {node.url}: {exc}") from None


def _read(node: Node, response: http.client.HTTPResponse, size: int | None = _READ) -> bytes:
    """Up to ``size`` bytes of the answer (None: all of it)."""
    try:
        return response.read(size)
    except (OSError, http.client.HTTPException) as exc:
        raise Failed(UNAVAILABLE, f"the connection to {node.url} failed: {exc}") from None


def _answer(node: Node, response: http.client.HTTPResponse) -> Answer:
    """The whole answer (an error's, or a short JSON one)."""
    content_type = response.getheader("Content-Type") or ""
    return Answer(response.status, content_type, _read(node, response, None))


def _fsync_directory(directory: str) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover (a system without directory handles)
        return
    try:
        os.fsync(handle)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """A file that becomes ``path`` only once the block ends without an exception: written
    beside it, fsynced, renamed over it (the directory fsynced too); removed otherwise."""
    target = os.path.abspath(path)
    directory, name = os.path.split(target)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
    except OSError as exc:
        raise Failed(USAGE, f"cannot write {path}: {exc}") from None
    os.close(handle)
    try:
        # mkstemp makes it private; the file gets the mode a shell's > would give it.
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with open(temporary, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


# -- export ---------------------------------------------------------------------------------------


def _end_of(tail: bytes) -> End | None:
    """The end line, if the last line of an answer is one."""
    last = tail.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    try:
        line = parse_line(last, 2)
    except InvalidLine:
        return None
    return line if isinstance(line, End) else None


def cmd_export(node: Node, args: argparse.Namespace, io: Streams) -> None:
    """Stream ``/_export`` to stdout (or ``-o FILE``), checking that it ends."""
    prefix = _key(args.prefix, normalize_prefix)
    connection = node.connection(_timeout(args))
    progress = Progress(io.err, "export")
    try:
        response = _request(node, connection, "GET", "/_export?" + _query(prefix=prefix))
        if response.status != 200:
            _answer(node, response).fail(f"export {prefix}")
        output = atomic_file(args.output) if args.output else contextlib.nullcontext(io.out)
        with output as out:
            lines, tail = 0, b""
            while True:
                chunk = _read(node, response)
                if not chunk:
                    break
                out.write(chunk)
                count = chunk.count(b"\n")
                lines += count
                tail = (tail + chunk)[-65536:]
                progress.advance(count, len(chunk))
            end = _end_of(tail)
            if end is None or end.records != lines - 2:
                written = f"{args.output} was not written" if args.output else "it is incomplete"
                raise Failed(
                    UNAVAILABLE,
                    f"export {prefix}: the node's answer was cut short after {lines} lines: "
                    f"{written}",
                )
            out.flush()
    finally:
        connection.close()
        progress.finish()
    if progress.enabled:
        print(
            f"navistore: exported {end.records:,} records under {prefix} (up to seq {end.seq})",
            file=io.err,
        )


# -- import ---------------------------------------------------------------------------------------


class _Totals:
    """What the node said it did, summed over the requests of one import."""

    def __init__(self) -> None:
        self.records = self.applied = self.kept = 0
        self.requests = 0

    def add(self, document: Any) -> None:
        self.requests += 1
        if not isinstance(document, dict):
            raise Failed(UNAVAILABLE, "import: the node answered something that is no import")
        for name in ("records", "applied", "kept"):
            value = document.get(name, 0 if name != "records" else None)
            if not isinstance(value, int):
                raise Failed(UNAVAILABLE, "import: the node answered something that is no import")
            setattr(self, name, getattr(self, name) + value)


class _Importer:
    """Sends lines as ``/_import`` requests, each with the header first.

    :param where: how a line is named in messages, given its label (a line number, an entry).
    """

    def __init__(
        self,
        node: Node,
        args: argparse.Namespace,
        header: bytes,
        progress: Progress,
        where: Callable[[Any], str],
    ) -> None:
        self.node = node
        self.args = args
        self.header = header if header.endswith(b"\n") else header + b"\n"
        self.progress = progress
        self.where = where
        self.totals = _Totals()

    def send_all(self, lines: Iterable[tuple[Any, bytes]]) -> _Totals:
        """Send every ``(label, line)``, :data:`IMPORT_CHUNK` bytes a request."""
        chunk: list[tuple[Any, bytes]] = []
        size = 0
        for label, raw in lines:
            if chunk and size + len(raw) > IMPORT_CHUNK:
                self._post(chunk, size)
                chunk, size = [], 0
            chunk.append((label, raw if raw.endswith(b"\n") else raw + b"\n"))
            size += len(raw)
        if chunk or not self.totals.requests:
            self._post(chunk, size)
        return self.totals

    def _post(self, chunk: list[tuple[Any, bytes]], size: int) -> None:
        body = self.header + b"".join(raw for _label, raw in chunk)
        target = "/_import" + ("?dry_run=true" if self.args.dry_run else "")
        connection = self.node.connection(_timeout(self.args))
        try:
            response = _request(
                self.node,
                connection,
                "POST",
                target,
                body,
                {"Content-Type": "application/x-ndjson"},
            )
            answer = _answer(self.node, response)
        finally:
            connection.close()
        if answer.status != 200:
            self._refused(answer, chunk)
        self.totals.add(answer.json())
        self.progress.advance(len(chunk), size)

    def _refused(self, answer: Answer, chunk: list[tuple[Any, bytes]]) -> None:
        try:
            document = parse_json(answer.body)
        except ValueError:
            document = None
        detail = document.get("detail") if isinstance(document, dict) else None
        line = detail.get("line") if isinstance(detail, dict) else None
        if not isinstance(line, int) or not 1 <= line <= len(chunk) + 1:
            answer.fail("import")
        assert isinstance(detail, dict) and isinstance(document, dict)
        where = "the header" if line == 1 else self.where(chunk[line - 2][0])
        reason = detail.get("reason") or document.get("message")
        totals = self.totals
        if totals.requests and not self.args.dry_run:
            before = (
                f"the {totals.records:,} records before {self.where(chunk[0][0])} were imported "
                f"({totals.applied:,} applied, {totals.kept:,} kept as newer), none from there on"
            )
        elif totals.requests:
            before = f"the {totals.records:,} records before {self.where(chunk[0][0])} are valid"
        else:
            before = "nothing was imported"
        raise Failed(
            exit_status(answer.status, document.get("error")),
            f"import: {where}: {reason}; {before}. An import is idempotent: fix the file and "
            "run it again",
        )


def _open_input(name: str, stdin: BinaryIO) -> BinaryIO:
    if name == "-":
        return stdin
    try:
        return open(name, "rb")
    except OSError as exc:
        raise Failed(USAGE, f"cannot read {name}: {exc.strerror}") from None


def _seekable(stream: IO[bytes]) -> bool:
    try:
        return stream.seekable()
    except (OSError, ValueError):
        return False


def _survey(source: BinaryIO) -> tuple[int, End | None]:
    """How many record lines follow the header (non-blank lines but the last), and the end
    line if the last one is; reads to the end of the file (not decoding the lines)."""
    count = 0
    last = b""
    for raw in iter(lambda: source.readline(_MAX_LINE), b""):
        if raw.strip():
            count += 1
            last = raw
    end = _end_of(last) if last else None
    return (count - 1 if end is not None else count), end


def _numbered(source: BinaryIO, first: int) -> Iterator[tuple[int, bytes]]:
    number = first
    for raw in iter(lambda: source.readline(_MAX_LINE), b""):
        yield number, raw
        number += 1


def _import_export(node: Node, args: argparse.Namespace, io: Streams) -> _Totals:
    name = "stdin" if args.file == "-" else args.file
    source = _open_input(args.file, io.stdin)
    try:
        header = source.readline(_MAX_LINE)
        try:
            parse_line(header, 1)
        except InvalidLine as exc:
            hint = " (a consul kv export? use --consul)" if header.lstrip()[:1] == b"[" else ""
            raise Failed(USAGE, f"{name} line 1: {exc.reason}{hint}; nothing was sent") from None
        total: int | None = None
        if _seekable(source):
            start = source.tell()
            records, end = _survey(source)
            total = source.tell()
            source.seek(start)
            if end is None and not args.partial:
                raise Failed(
                    USAGE,
                    f"{name} has no end line: the export was cut short (or written by hand); "
                    "nothing was sent: --partial imports what it holds",
                )
            if end is not None and end.records != records:
                raise Failed(
                    USAGE,
                    f"{name}: its end line counts {end.records:,} records but it holds "
                    f"{records:,} lines: the file was changed or damaged; nothing was sent",
                )
        progress = Progress(io.err, "import", total)
        importer = _Importer(node, args, header, progress, lambda line: f"{name} line {line}")
        progress.advance(1, len(header))
        tail: list[bytes] = [b""]

        def lines() -> Iterator[tuple[int, bytes]]:
            for number, raw in _numbered(source, 2):
                if raw.strip():
                    tail[0] = raw
                yield number, raw

        try:
            totals = importer.send_all(lines())
        finally:
            progress.finish()
        if total is None and _end_of(tail[0]) is None and not args.partial:
            raise Failed(
                UNAVAILABLE,
                f"{name} had no end line: the export was cut short; the {totals.records:,} "
                "records it held were imported",
            )
        return totals
    finally:
        if source is not io.stdin:
            source.close()


def consul_lines(data: bytes, name: str) -> tuple[list[tuple[str, bytes]], int, int]:
    """The import lines of a ``consul kv export``: ``(entry label, line)`` per key, how many
    folders were skipped, how many keys had flags (dropped). A usage error names the first
    entry Navistore cannot take (nothing is sent then)."""
    try:
        document = parse_json(data)
    except ValueError as exc:
        raise Failed(USAGE, f"{name} is not JSON ({exc}); nothing was sent") from None
    if not isinstance(document, list):
        raise Failed(
            USAGE,
            f'{name} is not a consul kv export (a JSON array of {{"key", "flags", "value"}}); '
            "nothing was sent",
        )
    lines: list[tuple[str, bytes]] = []
    folders = flagged = 0
    for index, entry in enumerate(document):
        label = f"entry {index}"
        raw_key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(raw_key, str):
            raise Failed(USAGE, f'{name} {label}: no "key"; nothing was sent')
        label = f"entry {index} ({raw_key})"
        value_text = entry.get("value")
        if value_text is not None and not isinstance(value_text, str):
            raise Failed(USAGE, f'{name} {label}: "value" must be base64 text; nothing was sent')
        if raw_key.endswith("/"):
            if not value_text:
                folders += 1  # a folder: Navistore's prefixes need none
                continue
            raise Failed(
                USAGE,
                f"{name} {label}: a key ending in / holds a value, and a Navistore key never "
                "ends in / (rename it); nothing was sent",
            )
        try:
            value = base64.b64decode(value_text or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Failed(USAGE, f"{name} {label}: the value is not base64 ({exc})") from None
        try:
            key = normalize_key(raw_key if raw_key.startswith("/") else "/" + raw_key)
        except InvalidKey as exc:
            raise Failed(USAGE, f"{name} {label}: {exc}; nothing was sent") from None
        flags = entry.get("flags", 0)
        if flags not in (0, None):
            flagged += 1
        lines.append((label, entry_line(key, value)))
    return lines, folders, flagged


def _import_consul(node: Node, args: argparse.Namespace, io: Streams) -> _Totals:
    name = "stdin" if args.file == "-" else args.file
    source = _open_input(args.file, io.stdin)
    try:
        data = source.read()
    finally:
        if source is not io.stdin:
            source.close()
    lines, folders, flagged = consul_lines(data, name)
    if flagged:
        print(
            f"navistore: import --consul: {flagged:,} key(s) have non-zero flags, which Navistore "
            "does not keep yet: they are imported without them",
            file=io.err,
        )
    if folders:
        print(f"navistore: import --consul: {folders:,} folder(s) skipped", file=io.err)
    header = header_line(node_id=None, seq=None, prefix=None, source="consul")
    total = len(header) + sum(len(line) for _label, line in lines)
    progress = Progress(io.err, "import", total)
    importer = _Importer(node, args, header, progress, lambda label: f"{name} {label}")
    progress.advance(0, len(header))
    try:
        return importer.send_all(lines)
    finally:
        progress.finish()


def cmd_import(node: Node, args: argparse.Namespace, io: Streams) -> None:
    """Apply an export (or a consul kv export) to the node; print what it did."""
    totals = (_import_consul if args.consul else _import_export)(node, args, io)
    if args.json:
        document = {
            "records": totals.records,
            "applied": totals.applied,
            "kept": totals.kept,
            "requests": totals.requests,
            "dry_run": bool(args.dry_run),
        }
        io.out.write(json.dumps(document, indent=2).encode() + b"\n")
    elif args.dry_run:
        io.out.write(f"records: {totals.records} (checked; nothing applied)\n".encode())
    else:
        io.out.write(
            f"records: {totals.records}\napplied: {totals.applied}\nkept: {totals.kept}\n".encode()
        )


# -- backup ---------------------------------------------------------------------------------------


def _check_copy(path: str) -> tuple[str | None, int | None]:
    """sqlite's ``quick_check`` of a downloaded copy, and the node id and seq it holds."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (verdict,) = connection.execute("PRAGMA quick_check").fetchone()
            described = describe_database(connection)
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise Failed(UNAVAILABLE, f"backup: the copy is no sqlite database ({exc})") from None
    if verdict != "ok":
        raise Failed(UNAVAILABLE, f"backup: the copy fails sqlite's quick_check: {verdict}")
    return described


def cmd_backup(node: Node, args: argparse.Namespace, io: Streams) -> None:
    """Download ``/_backup`` into FILE, atomically, checked."""
    connection = node.connection(_timeout(args))
    try:
        response = _request(node, connection, "GET", "/_backup")
        if response.status != 200:
            _answer(node, response).fail("backup")
        length_header = response.getheader("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        progress = Progress(io.err, "backup", length)
        try:
            with atomic_file(args.file) as out:
                received = 0
                while True:
                    chunk = _read(node, response)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    progress.advance(0, len(chunk))
                if length is not None and received != length:
                    raise Failed(
                        UNAVAILABLE,
                        f"backup: the node's answer was cut short at {received:,} of {length:,} "
                        f"bytes: {args.file} was not written",
                    )
                out.flush()
                node_id, seq = _check_copy(out.name)
        finally:
            progress.finish()
    finally:
        connection.close()
    io.out.write(f"{args.file}: node {node_id}, seq {seq}, {received:,} bytes\n".encode())


# -- the command line -----------------------------------------------------------------------------

#: The commands by name.
COMMANDS: dict[str, Callable[[Node, argparse.Namespace, Streams], None]] = {
    "export": cmd_export,
    "import": cmd_import,
    "backup": cmd_backup,
}


def add_parsers(commands: Any) -> None:
    """Add ``export``, ``import`` and ``backup`` to the ``navistore`` sub-commands."""
    export = commands.add_parser(
        "export", help="write every record under a prefix as JSON lines (stdout)"
    )
    export.add_argument("prefix", nargs="?", default="/")
    export.add_argument(
        "-o", "--output", metavar="FILE", help="write FILE (atomically) instead of stdout"
    )
    imports = commands.add_parser("import", help="apply an export (newer records win: idempotent)")
    imports.add_argument("file", metavar="FILE", help="the export (- for stdin)")
    imports.add_argument(
        "--consul", action="store_true", help="FILE is the JSON of consul kv export"
    )
    imports.add_argument(
        "--dry-run", action="store_true", help="have the node check every line, apply none"
    )
    imports.add_argument(
        "--partial", action="store_true", help="import a file that has no end line (cut short)"
    )
    imports.add_argument("--json", action="store_true", help="print the counts as JSON")
    backup = commands.add_parser(
        "backup", help="copy a sqlite node's database into FILE (atomically)"
    )
    backup.add_argument("file", metavar="FILE")

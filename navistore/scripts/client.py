"""``navistore``: the command-line client of a node, for people and shell scripts.

::

    navistore [--url URL] get KEY                 the value, bytes as stored, on stdout
    navistore put KEY [VALUE|-] [--content-type T] [--create]   (no VALUE or -: stdin)
    navistore rm KEY [-r]                         -r: KEY and every sub-document under KEY/
    navistore ls [PREFIX] [--page-size N]         one key per line, every page
    navistore watch [PREFIX] [--since N]          one line per change: <seq> <put|delete> <key>
    navistore peers [--json]                      the node's peers as a table
    navistore health [--json]
    navistore export [PREFIX] [-o FILE]           every record, as JSON lines (backup)
    navistore import [--consul] [--dry-run] FILE  apply an export (or a consul kv export)
    navistore backup FILE                         a copy of a sqlite node's database
    navistore render [--config FILE] [--template SRC:DEST[:CMD]] [--once]   config files

``export``, ``import`` and ``backup`` are :mod:`navistore.scripts.transfer`; ``render`` is
:mod:`navistore.scripts.render`.

The node is ``--url``, else ``$NAVISTORE_URL``, else ``http://127.0.0.1:8888``; the token sent
(``Authorization: Bearer``) is ``--token``, else ``$NAVISTORE_TOKEN`` (prefer the variable: a
command line shows in ``ps``), and ``--cacert`` names the certificates an ``https`` node's must
be signed by (default: the system's). Data goes to
stdout, messages to stderr, and the exit status says what happened:

====  =========================================================================================
0     done
1     not found: ``get`` or ``rm`` of a key that does not exist
2     usage error: bad arguments, an invalid key or prefix, or an ``import`` file that is not
      one (nothing was sent)
3     refused by the node: the key exists (``put --create``), a failed precondition, a value
      too large, or any other 4xx answer
4     the node is unreachable, timed out, or failed (5xx, an unhealthy ``health``, an
      ``export`` or ``backup`` cut short)
5     not allowed: no token or an unknown one (401), or the token lacks the permission or the
      prefix (403; the message names what is missing), or a protected node on another host
130   interrupted (Ctrl-C)
====  =========================================================================================

``watch`` starts from the node's current seq (or ``--since N``) and prints each change under the
prefix once, flushing each line. When the connection is lost it retries with backoff and resumes
where it stopped, so no change is printed twice or skipped; when the node no longer knows
changes that old (tombstones purged), it warns on stderr and continues from where the node
says. A node unreachable when ``watch`` starts is exit status 4; once started, it waits for it.
It talks HTTP with the standard library: one short connection per request, no reactor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

from navistore import version_line
from navistore.keys import normalize_prefix
from navistore.scripts import render, transfer
from navistore.scripts.node_client import (
    DEFAULT_URL,
    ENV_TOKEN,
    ENV_URL,
    INTERRUPTED,
    OK,
    UNAVAILABLE,
    Failed,
    Node,
    Streams,
    _key,
    _path,
    _query,
    exit_status,
)

__all__ = ["DEFAULT_URL", "ENV_TOKEN", "ENV_URL", "Failed", "build_parser", "exit_status", "main"]

#: An empty long-poll answer faster than this means the node does not hold polls: wait.
_MIN_POLL_SECONDS = 0.5
_MAX_BACKOFF_SECONDS = 10.0


# -- commands -------------------------------------------------------------------------------------


def cmd_get(node: Node, args: argparse.Namespace, io: Streams) -> None:
    """Write the value to stdout exactly as stored."""
    key = _key(args.key)
    io.out.write(node.request("GET", _path(key)).expect(f"get {key}").body)


def cmd_put(node: Node, args: argparse.Namespace, io: Streams) -> None:
    """Store the value given, or stdin's bytes for ``-`` or no value."""
    key = _key(args.key)
    value = io.stdin.read() if args.value in (None, "-") else os.fsencode(args.value)
    headers = {"Content-Type": args.content_type} if args.content_type else {}
    answer = node.request("POST" if args.create else "PUT", _path(key), value, headers)
    answer.expect(f"put {key}", 200, 201)


def cmd_rm(node: Node, args: argparse.Namespace, io: Streams) -> None:
    """Delete a key; with ``-r`` also every sub-document (``KEY/...``)."""
    raw = args.key
    if args.recursive and raw.rstrip("/") == "":
        node.request("DELETE", "/?recursive=true").expect("rm -r /")
        return
    key = _key(raw[:-1] if args.recursive and raw.endswith("/") else raw)
    deleted = 0
    if args.recursive:
        answer = node.request("DELETE", _path(key) + "/?recursive=true").expect(f"rm -r {key}/")
        deleted = int(answer.json().get("deleted", 0))
    answer = node.request("DELETE", _path(key))
    if not (answer.status == 404 and deleted):  # sub-documents but no value of its own: done
        answer.expect(f"rm {key}")


def cmd_ls(node: Node, args: argparse.Namespace, io: Streams) -> None:
    """Print every key under the prefix, one per line, reading page after page."""
    prefix = _key(args.prefix, normalize_prefix)
    after: str | None = None
    while True:
        target = "/_keys?" + _query(prefix=prefix, after=after, limit=args.page_size)
        page = node.request("GET", target).expect(f"ls {prefix}").json()
        io.out.write(b"".join(f"{key}\n".encode() for key in page["keys"]))
        io.out.flush()
        after = page.get("next")
        if not after:
            return


def _current_seq(node: Node) -> int:
    answer = node.request("GET", "/_health").expect("watch: reading the node's current seq")
    return int(answer.json()["last_seq"])


def _resync_seq(document: Any) -> int:
    """Where a 410 ``resync_required`` answer says to continue from."""
    detail = document.get("detail") if isinstance(document, dict) else None
    resume = detail.get("last_seq") if isinstance(detail, dict) else None
    if not isinstance(resume, int):
        raise Failed(UNAVAILABLE, "watch: the node asked for a resync without a last_seq")
    return resume


def _poll(node: Node, since: int, prefix: str, wait: int) -> tuple[int, Any]:
    """One long poll: its status (200 or 410) and JSON. A 5xx (an overloaded or stopping
    node) or an answer that is not a feed counts as a lost connection."""
    target = "/_changes?" + _query(feed="longpoll", since=since, prefix=prefix, timeout=wait)
    answer = node.request("GET", target, timeout=wait + node.timeout).expect("watch", 200, 410)
    document = answer.json()
    if answer.status == 200 and not (
        isinstance(document, dict)
        and isinstance(document.get("results"), list)
        and isinstance(document.get("last_seq"), int)
    ):
        raise Failed(UNAVAILABLE, "watch: the node answered something that is not a feed")
    return answer.status, document


def cmd_watch(node: Node, args: argparse.Namespace, io: Streams) -> None:
    """Print every change under the prefix as it happens; never returns by itself.

    ``since`` only moves once a whole answer has been printed, so an answer lost halfway is
    asked for again and nothing is printed twice or skipped.
    """
    prefix = _key(args.prefix, normalize_prefix)
    since = args.since if args.since is not None else _current_seq(node)
    backoff = 0.0
    while True:
        started = time.monotonic()
        try:
            status, document = _poll(node, since, prefix, args.poll_timeout)
        except Failed as exc:
            if exc.status != UNAVAILABLE:
                raise
            if not backoff:
                print(f"navistore: watch: {exc}; retrying", file=io.err, flush=True)
            backoff = min(max(backoff * 2, 0.25), _MAX_BACKOFF_SECONDS)
            time.sleep(backoff)
            continue
        if backoff:
            backoff = 0.0
            print(
                f"navistore: watch: reconnected; resuming after seq {since}",
                file=io.err,
                flush=True,
            )
        if status == 410:
            resume = _resync_seq(document)
            print(
                f"navistore: watch: the node no longer knows every change after seq {since} "
                f"(resync required); some may have been missed; continuing from seq {resume}",
                file=io.err,
                flush=True,
            )
            since = resume
            continue
        for change in document["results"]:
            kind = "delete" if change["deleted"] else "put"
            io.out.write(f"{change['seq']} {kind} {change['key']}\n".encode())
            io.out.flush()
        since = max(since, document["last_seq"])
        waited = time.monotonic() - started
        if not document["results"] and waited < _MIN_POLL_SECONDS:
            time.sleep(_MIN_POLL_SECONDS - waited)


def cmd_peers(node: Node, args: argparse.Namespace, io: Streams) -> None:
    """The node's peers as an aligned table (or the JSON)."""
    answer = node.request("GET", "/_peers").expect("peers")
    peers = answer.json()
    if args.json:
        io.out.write(json.dumps(peers, indent=2).encode() + b"\n")
        return
    columns = ["url", "role", "state", "node_id", "cursor", "lag_changes", "last_error"]
    rows = [[name.upper() for name in columns]]
    rows += [
        ["-" if peer.get(name) is None else str(peer[name]) for name in columns] for peer in peers
    ]
    widths = [max(len(row[index]) for row in rows) for index in range(len(columns))]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        io.out.write(line.encode() + b"\n")


def cmd_health(node: Node, args: argparse.Namespace, io: Streams) -> None:
    """Print the node's health; an unhealthy node exits 4."""
    answer = node.request("GET", "/_health")
    document = answer.json() if answer.content_type.startswith("application/json") else None
    if document is None:
        answer.fail("health")
    if args.json:
        io.out.write(json.dumps(document, indent=2).encode() + b"\n")
    else:
        io.out.write(b"".join(f"{name}: {value}\n".encode() for name, value in document.items()))
    if answer.status != 200:
        raise Failed(exit_status(answer.status), f"health: the node answered {answer.status}")


#: The commands by name.
COMMANDS: dict[str, Callable[[Node, argparse.Namespace, Streams], None]] = {
    "get": cmd_get,
    "put": cmd_put,
    "rm": cmd_rm,
    "ls": cmd_ls,
    "watch": cmd_watch,
    "peers": cmd_peers,
    "health": cmd_health,
}


# -- the command line -----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is not at least 1")
    return number


def build_parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The options and sub-commands; ``--url`` defaults to ``$NAVISTORE_URL``."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="navistore",
        description="A command-line client of a Navistore node.",
        epilog=(
            "exit status: 0 done, 1 not found, 2 usage error, 3 refused by the node "
            "(conflict, precondition, other 4xx), 4 node unreachable or failed (5xx), "
            "5 not allowed (401, 403: no token, or the token lacks a permission), "
            "130 interrupted"
        ),
    )
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument(
        "--url",
        default=env.get(ENV_URL) or DEFAULT_URL,
        help=f"the node (default: ${ENV_URL}, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds a request may take (default 30)"
    )
    parser.add_argument(
        "--token",
        default=env.get(ENV_TOKEN) or None,
        help=f"the token to send (default: ${ENV_TOKEN}; a command line shows in ps)",
    )
    parser.add_argument(
        "--cacert", metavar="FILE", help="certificates (PEM) an https node's must be signed by"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    get = commands.add_parser("get", help="print a value")
    get.add_argument("key")
    put = commands.add_parser("put", help="store a value (from stdin without VALUE or with -)")
    put.add_argument("key")
    put.add_argument("value", nargs="?")
    put.add_argument("--content-type", help="the value's media type")
    put.add_argument("--create", action="store_true", help="fail (3) if the key exists")
    rm = commands.add_parser("rm", help="delete a key")
    rm.add_argument("key")
    rm.add_argument("-r", "--recursive", action="store_true", help="and all its sub-documents")
    ls = commands.add_parser("ls", help="list keys under a prefix")
    ls.add_argument("prefix", nargs="?", default="/")
    ls.add_argument("--page-size", type=_positive_int, default=1000, help=argparse.SUPPRESS)
    watch = commands.add_parser("watch", help="print changes under a prefix as they happen")
    watch.add_argument("prefix", nargs="?", default="/")
    watch.add_argument("--since", type=int, help="start after this seq (default: now)")
    watch.add_argument(
        "--poll-timeout", type=_positive_int, default=30, help="seconds one long poll may wait"
    )
    peers = commands.add_parser("peers", help="show the node's peers")
    peers.add_argument("--json", action="store_true", help="print the JSON")
    health = commands.add_parser("health", help="show the node's health")
    health.add_argument("--json", action="store_true", help="print the JSON")
    transfer.add_parsers(commands)
    render.add_parsers(commands)
    return parser


def run(args: argparse.Namespace, io: Streams) -> None:
    """Run the parsed command (raises :class:`Failed` when it does not succeed)."""
    command = (
        COMMANDS.get(args.command)
        or transfer.COMMANDS.get(args.command)
        or render.COMMANDS[args.command]
    )
    command(Node(args.url, args.timeout, args.token, args.cacert), args, io)
    io.out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse, run, and turn the outcome into an exit status."""
    args = build_parser().parse_args(argv)
    try:
        run(args, Streams(sys.stdin.buffer, sys.stdout.buffer, sys.stderr))
    except Failed as exc:
        print(f"navistore: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``navistore watch / | head -1``): that is how it ends.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return OK
    return OK


if __name__ == "__main__":
    sys.exit(main())

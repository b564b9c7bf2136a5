"""``nhttpserver``: the classic command line, run by Twisted's own runner.

The classic options are translated into a ``twistd`` command line and handed to
:func:`twisted.scripts.twistd.run`, so daemonizing, the pidfile and the log file behave exactly as
they do for ``twistd navistore`` (which is also what ``nhttpserver`` ends up running)::

    nhttpserver -P 8888 -s store.db -l server.log -b -p server.pid
    => twistd --logfile server.log --pidfile server.pid navistore --port tcp:8888 \\
           --backend sqlite:store.db
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from navistore import version_line

__all__ = ["build_parser", "nhttpserver_main", "twistd_argv"]

#: The classic default port and sqlite file.
DEFAULT_PORT = "8888"
DEFAULT_STORAGE_PATH = "navistore.db"


def build_parser() -> argparse.ArgumentParser:
    """The classic ``nhttpserver`` options (``--help`` prints them and exits 0)."""
    parser = argparse.ArgumentParser(
        prog="nhttpserver",
        description=(
            "Run a Navistore node (a replicated HTTP key/value store) with the classic "
            "options. It runs 'twistd navistore'; see 'twistd navistore --help' for more."
        ),
    )
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument(
        "-P",
        "--port",
        default=DEFAULT_PORT,
        help=(
            "the TCP port to listen on, on every interface (default %(default)s); a Twisted "
            "endpoint string such as tcp:8888:interface=127.0.0.1 is accepted too"
        ),
    )
    parser.add_argument(
        "-s",
        "--storage-path",
        metavar="PATH",
        help=f"the sqlite file holding the data (default {DEFAULT_STORAGE_PATH})",
    )
    parser.add_argument(
        "--backend",
        metavar="URL",
        help="a backend URL instead of --storage-path, e.g. memory: or sqlite:///abs/path.db",
    )
    parser.add_argument(
        "-l", "--log-path", metavar="FILE", help="log to FILE (default: standard output)"
    )
    parser.add_argument(
        "-b",
        "--background",
        action="store_true",
        help="run in the background as a daemon (logs to twistd.log unless -l is given)",
    )
    parser.add_argument(
        "-p", "--pidfile", metavar="FILE", help="write the process id to FILE (default: none)"
    )
    parser.add_argument(
        "--peer",
        metavar="URL",
        action="append",
        default=[],
        help="replicate every write to the node at URL (repeatable)",
    )
    parser.add_argument(
        "--clone-from", metavar="URL", help="pull the state of the node at URL, then follow it"
    )
    parser.add_argument(
        "--upstream", metavar="URL", help="be a read-through cache of the node at URL"
    )
    parser.add_argument(
        "--read-fallback", action="store_true", help="ask the peers for a key before a 404"
    )
    parser.add_argument(
        "--tokens",
        metavar="FILE",
        help="the tokens file saying who may do what (without it, or --open, the node answers "
        "only this machine)",
    )
    parser.add_argument(
        "--open",
        action="store_true",
        help="serve every caller without tokens, from any host (the classic LAN mode)",
    )
    return parser


def _endpoint(port: str, parser: argparse.ArgumentParser) -> str:
    """A port number becomes ``tcp:N``; anything else is taken as an endpoint string."""
    if port.isdigit():
        if not 0 <= int(port) <= 65535:
            parser.error(f"argument -P/--port: {port} is not a TCP port number (0 to 65535)")
        return f"tcp:{int(port)}"
    if ":" not in port:
        parser.error(f"argument -P/--port: {port!r} is neither a port number nor an endpoint")
    return port


def _sqlite_url(path: str, parser: argparse.ArgumentParser) -> str:
    """The backend URL of a sqlite file, quoting what a URL would otherwise misread."""
    if not path:
        parser.error("argument -s/--storage-path: the path is empty")
    location = path.replace("%", "%25").replace("?", "%3F")
    # An absolute path takes the documented sqlite:///abs form, which also keeps a leading //.
    return f"sqlite://{location}" if location.startswith("/") else f"sqlite:{location}"


def twistd_argv(argv: Sequence[str]) -> list[str]:
    """Translate classic ``nhttpserver`` arguments into ``twistd`` arguments.

    Without ``-p`` no pidfile is written (twistd would otherwise write ``twistd.pid``).

    :raises SystemExit: on ``--help`` (status 0) or a usage error (status 2), as argparse does.
    """
    parser = build_parser()
    options = parser.parse_args(list(argv))
    if options.backend is not None and options.storage_path is not None:
        parser.error("give either -s/--storage-path or --backend, not both")
    backend = options.backend
    if backend is None:
        path = DEFAULT_STORAGE_PATH if options.storage_path is None else options.storage_path
        backend = _sqlite_url(path, parser)
    arguments: list[str] = []
    if not options.background:
        arguments.append("--nodaemon")
    if options.log_path:
        arguments += ["--logfile", options.log_path]
    arguments += ["--pidfile", options.pidfile or ""]
    arguments += ["navistore", "--port", _endpoint(options.port, parser), "--backend", backend]
    for peer in options.peer:
        arguments += ["--peer", peer]
    if options.clone_from:
        arguments += ["--clone-from", options.clone_from]
    if options.upstream:
        arguments += ["--upstream", options.upstream]
    if options.read_fallback:
        arguments.append("--read-fallback")
    if options.tokens:
        arguments += ["--tokens", options.tokens]
    if options.open:
        arguments.append("--open")
    return arguments


def nhttpserver_main(argv: Sequence[str] | None = None) -> None:
    """Run ``nhttpserver`` with ``argv`` (default: the process arguments) through twistd.

    twistd reads its arguments from ``sys.argv``, so they are put there; the program name stays,
    so that twistd's messages name the command the user typed.
    """
    from twisted.scripts.twistd import run

    arguments = twistd_argv(sys.argv[1:] if argv is None else argv)
    program = sys.argv[0] if sys.argv else "nhttpserver"
    sys.argv = [program, *arguments]
    run()

"""``nhttpserver``: the classic command line, run by Twisted's own runner.

The classic options are translated into a ``twistd`` command line and handed to
:func:`twisted.scripts.twistd.run`, so daemonizing, the pidfile and the log file behave exactly as
they do for ``twistd navistore`` (which is also what ``nhttpserver`` ends up running)::

    nhttpserver -P 8888 -s store.db -l server.log -b -p server.pid
    => twistd --logfile server.log --pidfile server.pid navistore --port tcp:8888 \\
           --backend sqlite:store.db

The five classic short flags (``-P -s -l -b -p``) keep their meaning; every long option of
``twistd navistore`` (``--config``, ``--max-value-size``, ``--tokens``, ...) is accepted too, by
the same name, and handed on as given: the list is read from :class:`navistore.tap.Options`, so
the two command lines cannot drift apart. The port and the sqlite file are handed on only when
given (their defaults are the node's own), so that a ``--config`` file can set them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from twisted.python.usage import UsageError

from navistore import version_line
from navistore.tap import USAGE_ERROR, check_endpoint
from navistore.tap import Options as NavistoreOptions

__all__ = ["build_parser", "nhttpserver_main", "twistd_argv"]

#: The classic default port and sqlite file.
DEFAULT_PORT = "8888"
DEFAULT_STORAGE_PATH = "navistore.db"


#: Options of ``twistd navistore`` that nhttpserver spells its own way (or that are argparse's).
_OWN = ("port", "backend", "help", "version")


class _Parser(argparse.ArgumentParser):
    """argparse, whose refusals are one line and exit status 1, as ``twistd navistore``'s."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _navistore_options() -> list[tuple[str, bool, str]]:
    """Every long option of ``twistd navistore`` but those nhttpserver has its own way: its
    name, whether it takes a value, and its help."""
    options = NavistoreOptions()
    found = []
    for entry in sorted(options.longOpt):
        name = entry.rstrip("=")
        if name in _OWN:
            continue
        doc = " ".join((options.docs.get(name) or "").split())
        found.append((name, entry.endswith("="), doc.replace("%", "%%")))
    return found


def build_parser() -> argparse.ArgumentParser:
    """The ``nhttpserver`` options (``--help`` prints them and exits 0)."""
    parser = _Parser(
        prog="nhttpserver",
        description=(
            "Run a Navistore node (a replicated HTTP key/value store) with the classic "
            "options, and every long option of 'twistd navistore'. It runs 'twistd navistore'."
        ),
    )
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument(
        "-P",
        "--port",
        action="append",
        help=(
            f"the TCP port to listen on, on every interface (default {DEFAULT_PORT}); a Twisted "
            "endpoint string such as tcp:8888:interface=127.0.0.1 is accepted too (repeatable)"
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
    node = parser.add_argument_group("options of twistd navistore (see its --help)")
    for name, takes_value, doc in _navistore_options():
        if takes_value:
            node.add_argument(
                f"--{name}", action="append", metavar="VALUE", dest=_dest(name), help=doc
            )
        else:
            node.add_argument(f"--{name}", action="store_true", dest=_dest(name), help=doc)
    return parser


def _dest(name: str) -> str:
    return "navistore_" + name.replace("-", "_")


def _endpoint(port: str, parser: argparse.ArgumentParser) -> str:
    """A port number becomes ``tcp:N``; anything else is taken as an endpoint string, checked
    as ``twistd navistore --port`` checks it (the same words for the same mistake)."""
    try:
        return check_endpoint(port)
    except UsageError as exc:
        parser.error(str(exc))


def _sqlite_url(path: str, parser: argparse.ArgumentParser) -> str:
    """The backend URL of a sqlite file, quoting what a URL would otherwise misread."""
    if not path:
        parser.error("argument -s/--storage-path: the path is empty")
    location = path.replace("%", "%25").replace("?", "%3F")
    # An absolute path takes the documented sqlite:///abs form, which also keeps a leading //.
    return f"sqlite://{location}" if location.startswith("/") else f"sqlite:{location}"


def twistd_argv(argv: Sequence[str]) -> list[str]:
    """Translate ``nhttpserver`` arguments into ``twistd`` arguments.

    Without ``-p`` no pidfile is written (twistd would otherwise write ``twistd.pid``). The
    options of ``twistd navistore`` are handed on in the order of its ``--help``, each value as
    given: the node checks them.

    :raises SystemExit: on ``--help`` (status 0) or a usage error (status 1).
    """
    parser = build_parser()
    options = parser.parse_args(list(argv))
    if options.backend is not None and options.storage_path is not None:
        parser.error("give either -s/--storage-path or --backend, not both")
    arguments: list[str] = []
    if not options.background:
        arguments.append("--nodaemon")
    if options.log_path:
        arguments += ["--logfile", options.log_path]
    arguments += ["--pidfile", options.pidfile or ""]
    arguments.append("navistore")
    for port in options.port or ():
        arguments += ["--port", _endpoint(port, parser)]
    if options.storage_path is not None:
        arguments += ["--backend", _sqlite_url(options.storage_path, parser)]
    elif options.backend is not None:
        arguments += ["--backend", options.backend]
    for name, takes_value, _doc in _navistore_options():
        given = getattr(options, _dest(name))
        if takes_value:
            for value in given or ():
                arguments += [f"--{name}", value]
        elif given:
            arguments.append(f"--{name}")
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

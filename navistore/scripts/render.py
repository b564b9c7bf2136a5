"""``navistore render``: configuration files from templates, re-rendered when their keys change.

::

    navistore render --config render.toml [--url URL ...] [--once]
    navistore render --template SRC:DEST[:COMMAND] ... [--wait QUIET[:MOST]] [--once]

In the spirit of consul-template and confd: each template (Jinja2, sandboxed; its helpers are in
:mod:`~navistore.scripts.render_templates`) is rendered from the node, written atomically when
its output differs from the file (:mod:`~navistore.scripts.render_files`), and its reload
command run once per burst of changes. Then the renderer follows the feed of exactly what the
templates read and renders again (:mod:`~navistore.scripts.render_watch`). Several ``--url``\\ s
fail over in order (:mod:`~navistore.scripts.render_nodes`).

A failure never replaces a good file: a missing key, a template error or an unreachable node
leaves the destination as it was and is logged (stderr, one line each). With ``--once`` the
renderer renders every template and exits: 0 when all were rendered, else the status of the
first that failed: 1 a key is missing, 2 a template error, a bad configuration or a file that
cannot be written, 4 no node answered, 5 the token may not read a key. Without ``--once`` it
carries on and waits for the node or the key; it stops on SIGTERM (exit status 0) or Ctrl-C,
and SIGHUP reads the template files again.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import Any, Callable

from navistore.scripts.node_client import OK, UNAVAILABLE, USAGE, Failed, Node, Streams
from navistore.scripts.render_config import (
    ConfigError,
    TemplateSpec,
    Wait,
    check_templates,
    load_config,
    parse_template_option,
    parse_wait,
)
from navistore.scripts.render_engine import Renderer
from navistore.scripts.render_nodes import NodeSet
from navistore.scripts.render_watch import watch

__all__ = ["COMMANDS", "add_parsers", "cmd_render"]

#: The longest long poll asked for (the node's own cap).
MAX_POLL_TIMEOUT = 300


def _poll_timeout(text: str) -> int:
    seconds = int(text)
    if not 1 <= seconds <= MAX_POLL_TIMEOUT:
        raise argparse.ArgumentTypeError(f"{seconds} is not between 1 and {MAX_POLL_TIMEOUT}")
    return seconds


def add_parsers(commands: Any) -> None:
    """Add ``render`` to the ``navistore`` sub-commands."""
    render = commands.add_parser(
        "render", help="write files from templates, again whenever the keys they read change"
    )
    render.add_argument("-c", "--config", metavar="FILE", help="a TOML file of [[template]]s")
    render.add_argument(
        "-t",
        "--template",
        action="append",
        default=[],
        metavar="SRC:DEST[:COMMAND]",
        help="a template, its destination and its reload command (repeatable)",
    )
    render.add_argument(
        "--url",
        dest="render_urls",
        action="append",
        default=[],
        metavar="URL",
        help="a node; several fail over in order (default: navistore's --url)",
    )
    render.add_argument("--once", action="store_true", help="render once and exit")
    render.add_argument(
        "--wait",
        metavar="QUIET[:MOST]",
        help="the debounce of templates without their own (default 0: render at once)",
    )
    render.add_argument(
        "--poll-timeout",
        type=_poll_timeout,
        default=30,
        help="seconds one long poll may wait (default 30)",
    )


def _specs(args: argparse.Namespace) -> list[TemplateSpec]:
    default_wait = Wait() if args.wait is None else parse_wait(args.wait, "--wait")
    specs = load_config(args.config, default_wait) if args.config else []
    specs += [parse_template_option(text, default_wait) for text in args.template]
    return check_templates(specs)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(OK)


def _once(renderer: Renderer, nodes: NodeSet, loaded: list[int]) -> dict[int, int]:
    """Render each template once, trying the next node for those a node failed to serve."""
    statuses: dict[int, int] = {}
    node, _position = nodes.connect()
    todo = loaded
    for _ in nodes.nodes:
        statuses.update(renderer.render(todo, node))
        todo = [index for index in todo if statuses[index] == UNAVAILABLE]
        if not todo:
            break
        node = nodes.advance(node)
    return statuses


def cmd_render(node: Node, args: argparse.Namespace, io: Streams) -> None:
    """Render the templates; with ``--once`` exit, else follow the feed for ever."""

    def log(message: str) -> None:
        print(f"navistore render: {message}", file=io.err, flush=True)

    try:
        specs = _specs(args)
    except ConfigError as exc:
        raise Failed(USAGE, f"render: {exc}") from None
    # --url may be repeated, or hold several URLs separated by commas (so may $NAVISTORE_URL).
    given = args.render_urls or [args.url]
    urls = [url.strip() for text in given for url in text.split(",") if url.strip()]
    if not urls:
        raise Failed(USAGE, "render: no --url")
    nodes = NodeSet([Node(url, args.timeout, args.token, args.cacert) for url in urls])
    renderer = Renderer(specs, log)
    failures = renderer.load()
    loaded = [index for index in range(len(specs)) if index not in failures]
    if args.once:
        statuses = dict(failures)
        if loaded:
            statuses.update(_once(renderer, nodes, loaded))
        failed = [index for index in range(len(specs)) if statuses[index] != OK]
        if failed:
            raise Failed(
                statuses[failed[0]],
                f"render: {len(failed)} of {len(specs)} template(s) not rendered; "
                "their files were left as they were",
            )
        return
    if not loaded:
        raise Failed(USAGE, "render: no template could be read")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    watch(renderer, nodes, args.poll_timeout, log)


#: The commands by name.
COMMANDS: dict[str, Callable[[Node, argparse.Namespace, Streams], None]] = {
    "render": cmd_render,
}

"""One render pass of ``navistore render``: templates read from a node, files written, reload
commands run once per pass.

A template that fails (a missing key, a template error, a node that stops answering, a file
that cannot be written) never touches its destination: the old file stays, the failure is
logged, and the pass carries on with the other templates. What each template read is kept even
when it failed, so the renderer goes on watching it (a missing key that appears renders it).
"""

from __future__ import annotations

from typing import Callable

from navistore.scripts.node_client import NOT_FOUND, OK, USAGE, Failed, Node
from navistore.scripts.render_config import TemplateSpec
from navistore.scripts.render_files import log_command, run_command, write_if_changed
from navistore.scripts.render_nodes import NodeSource
from navistore.scripts.render_templates import (
    Dependencies,
    MissingKey,
    Template,
    TemplateError,
    make_environment,
)

__all__ = ["Renderer", "common_prefix"]


def common_prefix(prefixes: set[str]) -> str | None:
    """The one feed prefix covering every dependency (None: nothing to watch). A key is a
    prefix of itself, and a string prefix of keys is a valid feed prefix (``/app/d`` covers
    ``/app/db`` and ``/app/dns``); the feed may then carry a little more than the templates
    read, which the renderer filters out."""
    if not prefixes:
        return None
    first, last = min(prefixes), max(prefixes)  # the sorted ends share what all share
    length = 0
    while length < min(len(first), len(last)) and first[length] == last[length]:
        length += 1
    return first[:length] or "/"


class Renderer:
    """The templates of one run, what each read last time, and how to render them."""

    def __init__(self, specs: list[TemplateSpec], log: Callable[[str], None]) -> None:
        self.specs = specs
        self.log = log
        self.environment = make_environment()
        self.templates: list[Template | None] = [None] * len(specs)
        self.dependencies = [Dependencies() for _ in specs]

    def load(self) -> dict[int, int]:
        """Compile every template; the failures' exit statuses by template index. A template
        that compiled before and fails now (a reload of an edited file) keeps its old
        compiled form, so a bad edit never reaches the file."""
        failures: dict[int, int] = {}
        for index, spec in enumerate(self.specs):
            try:
                self.templates[index] = Template(self.environment, spec.source)
            except TemplateError as exc:
                if self.templates[index] is None:
                    kept = "not rendered (the file is left as it was)"
                    self.log(f"{spec.destination}: {kept}: {exc}")
                else:
                    self.log(f"{spec.destination}: {exc}; the last good template stays in use")
                failures[index] = USAGE
        return failures

    def watch_prefix(self) -> str | None:
        """The feed prefix that covers what every template read."""
        watched: set[str] = set()
        for dependencies in self.dependencies:
            watched |= dependencies.watched()
        return common_prefix(watched)

    def affected(self, keys: list[str]) -> list[int]:
        """The templates a change of any of ``keys`` may change."""
        return [
            index
            for index, dependencies in enumerate(self.dependencies)
            if self.templates[index] is not None and any(map(dependencies.matches, keys))
        ]

    def render_one(self, index: int, node: Node) -> tuple[int, bool]:
        """Render one template from ``node``: its exit status (0 when done) and whether its
        file changed."""
        spec, template = self.specs[index], self.templates[index]
        if template is None:
            return USAGE, False
        dependencies = Dependencies()
        kept = f"{spec.destination}: not rendered (the file is left as it was)"
        try:
            data = template.render(NodeSource(node), dependencies)
        except MissingKey as exc:
            self.dependencies[index] = dependencies
            self.log(f"{kept}: {exc}")
            return NOT_FOUND, False
        except TemplateError as exc:
            self.dependencies[index] = dependencies
            self.log(f"{kept}: {exc}")
            return USAGE, False
        except Failed as exc:
            # Keep watching what it read before and what it reached this time.
            old = self.dependencies[index]
            old.keys |= dependencies.keys
            old.prefixes |= dependencies.prefixes
            self.log(f"{kept}: {exc}")
            return exc.status, False
        self.dependencies[index] = dependencies
        try:
            changed = write_if_changed(spec.destination, data, spec.mode)
        except OSError as exc:
            self.log(f"{kept}: cannot write it: {exc.strerror or exc}")
            return USAGE, False
        if changed:
            self.log(f"{spec.destination}: rendered ({len(data)} bytes)")
        return OK, changed

    def render(self, indices: list[int], node: Node) -> dict[int, int]:
        """Render these templates, then run the commands of those whose file changed, each
        command once (templates sharing a reload command share one run), in template order;
        return the exit status of each template."""
        statuses: dict[int, int] = {}
        commands: dict[str, float] = {}
        for index in indices:
            statuses[index], changed = self.render_one(index, node)
            command = self.specs[index].command
            if changed and command:
                commands[command] = max(
                    commands.get(command, 0.0), self.specs[index].command_timeout
                )
        for command, timeout in commands.items():
            self.log(f"running {command!r}")
            try:
                result = run_command(command, timeout)
            except OSError as exc:
                self.log(f"command {command!r} could not start: {exc.strerror or exc}")
                continue
            log_command(command, result, self.log)
        return statuses

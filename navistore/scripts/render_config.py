"""What ``navistore render`` renders: its templates, from a TOML file or from the command line.

A TOML file holds one ``[[template]]`` table per template::

    [[template]]
    source = "haproxy.cfg.j2"          # relative paths: from the TOML file's directory
    destination = "/etc/haproxy/haproxy.cfg"
    mode = "0640"                       # octal text; default: the existing file's, else 0644
    command = "systemctl reload haproxy"
    command_timeout = "30s"
    wait = "2s:10s"                     # render after 2 s of quiet, at most 10 s after a change

``--template SRC:DEST[:COMMAND]`` gives the same without a file (the command may hold colons).
Everything is checked before anything is read from a node, so a typo is a usage error (exit
status 2), never a half-started renderer.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import attrs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9 and 3.10 (PyPy 3.9)
    import tomli as tomllib

__all__ = [
    "DEFAULT_COMMAND_TIMEOUT",
    "MAX_TEMPLATES",
    "ConfigError",
    "TemplateSpec",
    "Wait",
    "check_templates",
    "load_config",
    "parse_duration",
    "parse_mode",
    "parse_template_option",
    "parse_wait",
]

#: The most templates one renderer holds (each may read many keys; this bounds the renders).
MAX_TEMPLATES = 100
#: The largest TOML file read.
MAX_CONFIG_BYTES = 1024 * 1024
#: How long a reload command may run before its process group is killed, by default.
DEFAULT_COMMAND_TIMEOUT = 30.0
#: The longest wait or timeout accepted: a day (anything longer is a typo).
_MAX_SECONDS = 86400.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_KNOWN_FIELDS = {"source", "destination", "mode", "command", "command_timeout", "wait"}


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the field and why."""


@attrs.frozen
class Wait:
    """A debounce: render once ``quiet`` seconds pass without a change, and at the latest
    ``most`` seconds after the first change of a burst (so a steady stream still renders)."""

    quiet: float = 0.0
    most: float = 0.0


@attrs.frozen
class TemplateSpec:
    """One template: where it comes from, where it goes, and what runs after it changed."""

    source: str
    destination: str
    mode: int | None = None
    command: str | None = None
    wait: Wait = Wait()
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT


def parse_duration(text: object, what: str) -> float:
    """Seconds from ``"2s"``, ``"500ms"``, ``"1.5m"``, ``"1h"`` or a bare number of seconds."""
    if isinstance(text, bool):
        raise ConfigError(f"{what}: {text!r} is not a duration")
    if isinstance(text, (int, float)):
        seconds = float(text)
    elif isinstance(text, str) and (found := _DURATION.match(text)):
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
    else:
        raise ConfigError(f"{what}: {text!r} is not a duration such as 2s, 500ms or 1m")
    if not 0 <= seconds <= _MAX_SECONDS:
        raise ConfigError(f"{what}: {text!r} is not between 0 and 24h")
    return seconds


def parse_wait(text: object, what: str = "wait") -> Wait:
    """A debounce from ``"QUIET:MOST"`` or ``"QUIET"`` (then MOST is four times QUIET, as
    consul-template does); MOST may not be shorter than QUIET."""
    if not isinstance(text, str):
        quiet = parse_duration(text, what)
        return Wait(quiet, quiet * 4)
    quiet_text, _, most_text = text.partition(":")
    quiet = parse_duration(quiet_text, what)
    most = parse_duration(most_text, what) if most_text else quiet * 4
    if most < quiet:
        raise ConfigError(f"{what}: {text!r}: the longest wait is shorter than the quiet one")
    return Wait(quiet, most)


def parse_mode(text: object, what: str = "mode") -> int:
    """A file mode from octal text (``"0640"``, ``"640"``, ``"0o640"``); permission bits only."""
    if not isinstance(text, str) or not re.fullmatch(r"(0o?)?[0-7]{1,4}", text.strip()):
        raise ConfigError(f'{what}: {text!r} is not an octal mode such as "0640"')
    body = text.strip()
    mode = int(body[2:] if body.startswith("0o") else body, 8)
    if mode > 0o7777:
        raise ConfigError(f"{what}: {text!r} is more than permission bits")
    return mode


def _text(table: dict[str, Any], name: str, where: str, required: bool = False) -> str | None:
    value = table.get(name)
    if value is None:
        if required:
            raise ConfigError(f"{where}: {name} is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {name} must be non-empty text, not {value!r}")
    return value


def _template(table: object, where: str, base: str, default_wait: Wait) -> TemplateSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: a [[template]] must be a table")
    unknown = sorted(set(table) - _KNOWN_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    source = _text(table, "source", where, required=True)
    destination = _text(table, "destination", where, required=True)
    assert source is not None and destination is not None
    mode = table.get("mode")
    timeout = table.get("command_timeout")
    return TemplateSpec(
        source=os.path.join(base, source),
        destination=os.path.join(base, destination),
        mode=None if mode is None else parse_mode(mode, f"{where}: mode"),
        command=_text(table, "command", where),
        wait=default_wait if "wait" not in table else parse_wait(table["wait"], f"{where}: wait"),
        command_timeout=DEFAULT_COMMAND_TIMEOUT
        if timeout is None
        else _positive(parse_duration(timeout, f"{where}: command_timeout"), where),
    )


def _positive(seconds: float, where: str) -> float:
    if seconds <= 0:
        raise ConfigError(f"{where}: command_timeout must be more than 0")
    return seconds


def load_config(path: str, default_wait: Wait = Wait()) -> list[TemplateSpec]:
    """The templates of a TOML file; relative paths in it are relative to its directory."""
    try:
        with open(path, "rb") as config:
            raw = config.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    unknown = sorted(set(document) - {"template"})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) or field(s) {', '.join(unknown)}")
    tables = document.get("template", [])
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path}: no [[template]] tables")
    base = os.path.dirname(os.path.abspath(path))
    return [
        _template(table, f"{path}: template {number}", base, default_wait)
        for number, table in enumerate(tables, 1)
    ]


def parse_template_option(text: str, default_wait: Wait = Wait()) -> TemplateSpec:
    """``SRC:DEST[:COMMAND]`` from ``--template`` (the command is everything after DEST)."""
    source, _, rest = text.partition(":")
    destination, _, command = rest.partition(":")
    if not source or not destination:
        raise ConfigError(f"--template {text!r}: expected SRC:DEST[:COMMAND]")
    return TemplateSpec(
        source=source, destination=destination, command=command or None, wait=default_wait
    )


def check_templates(specs: list[TemplateSpec]) -> list[TemplateSpec]:
    """The templates, refused when there are none, too many, or two share a destination
    (they would overwrite each other on every change)."""
    if not specs:
        raise ConfigError("no templates: give --config FILE or --template SRC:DEST[:COMMAND]")
    if len(specs) > MAX_TEMPLATES:
        raise ConfigError(f"{len(specs)} templates: at most {MAX_TEMPLATES}")
    seen: set[str] = set()
    for spec in specs:
        destination = os.path.abspath(spec.destination)
        if destination in seen:
            raise ConfigError(f"two templates write {spec.destination}")
        seen.add(destination)
    return specs

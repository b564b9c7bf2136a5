"""``--config FILE``: a node's options kept in a TOML file, one key per long option.

Every long option of ``twistd navistore`` is a key of the same name, at the top level::

    backend = "sqlite:///var/lib/navistore/store.db"
    port = ["tcp:8888", "unix:/run/navistore.sock"]   # repeatable options take a list
    max-value-size = 1048576                           # numbers as numbers or strings
    read-fallback = true                               # flags are true or false

The file gives defaults and the command line overrides them: a single-valued option given on
both takes the command line's value, and a repeatable one (``port``, ``peer``, ...) given on the
command line replaces the file's whole list. An unknown key, a value of the wrong type or one
the option refuses stops the start with the file and line (TOML parsers give no line for a key,
so it is found in the text).

This module only turns a file into command-line arguments; :mod:`navistore.tap` checks them with
the options themselves, so a key means exactly what its flag means.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9 (PyPy)
    import tomli as tomllib

__all__ = [
    "ConfigFileError",
    "FileOption",
    "config_path",
    "merge_arguments",
    "read_config",
]

#: The largest config file read (a config file is options, not data).
MAX_CONFIG_BYTES = 1024 * 1024


class ConfigFileError(ValueError):
    """The config file cannot be read, is not TOML, or holds a key or value no option takes;
    the message starts with ``FILE:LINE:`` where a line is known."""


class FileOption:
    """One key of a config file, as the command-line arguments it stands for.

    :ivar name: the option's long name (the key).
    :ivar arguments: what the command line would say, e.g. ``["--port", "tcp:1", "--port",
        "tcp:2"]``, or ``[]`` for a flag set to false.
    :ivar where: ``FILE:LINE`` of the key, for messages.
    """

    def __init__(self, name: str, arguments: list[str], where: str) -> None:
        self.name = name
        self.arguments = arguments
        self.where = where

    def __repr__(self) -> str:
        return f"FileOption({self.name!r}, {self.arguments!r}, {self.where!r})"


def config_path(arguments: Sequence[str]) -> tuple[str | None, list[str]]:
    """Find ``--config FILE`` (or ``--config=FILE``) among command-line arguments.

    :returns: the file (None without one) and the other arguments, in order.
    :raises ConfigFileError: ``--config`` without a file, or given twice.
    """
    found: str | None = None
    rest: list[str] = []
    items = iter(arguments)
    for item in items:
        if item == "--":
            rest.append(item)
            rest.extend(items)
            break
        if item == "--config" or item.startswith("--config="):
            if found is not None:
                raise ConfigFileError("--config may be given once")
            if item == "--config":
                found = next(items, None)
                if found is None:
                    raise ConfigFileError("--config needs a file")
            else:
                found = item.split("=", 1)[1]
            if not found:
                raise ConfigFileError("--config needs a file")
            continue
        rest.append(item)
    return found, rest


def _line_of(key: str, lines: list[str]) -> int | None:
    name = re.escape(key)
    pattern = re.compile(rf"""^\s*(?:\[\s*)?(?:{name}|"{name}"|'{name}')\s*[=\]]""")
    for number, line in enumerate(lines, start=1):
        if pattern.match(line):
            return number
    return None


def read_config(
    path: str,
    *,
    parameters: Iterable[str],
    flags: Iterable[str],
    repeatable: Iterable[str],
) -> list[FileOption]:
    """The options a config file holds, as command-line arguments, in file order.

    :param parameters: the long names of options that take a value.
    :param flags: the long names of options that take none (true or false in the file).
    :param repeatable: those of ``parameters`` that may be given several times (a list).
    :raises ConfigFileError: unreadable, not TOML, an unknown key, or a value of the wrong type.
    """
    taking_value, on_off, many = set(parameters), set(flags), set(repeatable)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigFileError(f"{path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes: not a config file")
    try:
        text = raw.decode("utf-8")
        document = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path}: not UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
    lines = text.splitlines()
    found: list[FileOption] = []
    for key, value in document.items():
        line = _line_of(key, lines)
        where = f"{path}:{line}" if line is not None else path
        if key == "config":
            raise ConfigFileError(f"{where}: a config file cannot name another (config)")
        if key not in taking_value and key not in on_off:
            known = sorted(taking_value | on_off)
            near = [name for name in known if name.replace("-", "") == key.replace("_", "")]
            hint = f"; did you mean {near[0]}?" if near else ""
            raise ConfigFileError(f"{where}: unknown option {key!r}{hint}")
        arguments = _arguments(key, value, where, key in on_off, key in many)
        found.append(FileOption(key, arguments, where))
    return found


def _arguments(key: str, value: Any, where: str, flag: bool, repeatable: bool) -> list[str]:
    option = f"--{key}"
    if flag:
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where}: {key} is a flag: true or false, not {value!r}")
        return [option] if value else []
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not repeatable:
        raise ConfigFileError(f"{where}: {key} takes one value, not a list")
    arguments: list[str] = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            kind = "a table" if isinstance(item, dict) else repr(item)
            raise ConfigFileError(f"{where}: {key} takes a string or a number, not {kind}")
        arguments += [option, str(item)]
    return arguments


def merge_arguments(
    file_options: Sequence[FileOption],
    command_line: Sequence[str],
    *,
    repeatable: Iterable[str],
    short: dict[str, str],
) -> list[str]:
    """The arguments to parse: the file's first (so the command line overrides them), without
    the file's repeatable options that the command line gives too (which replace them).

    :param short: short flags and the long option each stands for (``{"P": "port"}``).
    """
    given = _long_names(command_line, short)
    replaced = set(repeatable) & given
    merged: list[str] = []
    for option in file_options:
        if option.name not in replaced:
            merged += option.arguments
    return merged + list(command_line)


def _long_names(arguments: Sequence[str], short: dict[str, str]) -> set[str]:
    """The long names of the options among command-line arguments (values are not looked
    into: a value that looks like an option only makes its option look given)."""
    names: set[str] = set()
    for item in arguments:
        if item == "--":
            break
        if item.startswith("--"):
            names.add(item[2:].split("=", 1)[0])
        elif item.startswith("-") and len(item) > 1 and item[1] in short:
            names.add(short[item[1]])
    return names

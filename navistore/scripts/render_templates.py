"""The templates of ``navistore render``: a sandboxed Jinja2 environment and its helpers.

A template reads the store only through three helpers, the same in every template::

    {{ key("/app/db/host") }}                    the value as text; missing: an error
    {{ key("/app/db/port", default="5432") }}    missing: the default
    {% for name, server in tree("/app/servers/").items() %}   nested dicts, leaves as text
    {% for name in keys("/app/servers/") %}      the keys under the prefix, relative
    {{ key("/app/limits") | fromjson }}          a JSON value as Python data

Each helper records what it read (a key, or a prefix for ``tree`` and ``keys``) in the
template's :class:`Dependencies`, even when the read fails, so the renderer watches exactly
what the template touched: a missing key is watched, and its creation renders the template.
The environment is Jinja2's sandbox with ``StrictUndefined`` (a misspelled variable is an error,
never an empty string), and every read and the output are bounded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Protocol

import attrs
import jinja2
from jinja2.sandbox import SandboxedEnvironment

from navistore.json_documents import NotJSON, parse_json
from navistore.keys import InvalidKey, key_in_prefix, normalize_key, normalize_prefix

__all__ = [
    "MAX_OUTPUT_BYTES",
    "MAX_TEMPLATE_BYTES",
    "Dependencies",
    "MissingKey",
    "Source",
    "Template",
    "TemplateError",
    "make_environment",
]

#: The largest template source read.
MAX_TEMPLATE_BYTES = 1024 * 1024
#: The largest file a template may render (a runaway loop stops here, not at memory's end).
MAX_OUTPUT_BYTES = 16 * 1024 * 1024

_NO_DEFAULT: Any = object()


class MissingKey(LookupError):
    """A template read a key that does not exist, without a default."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the key {key} does not exist (give key(..., default=...) if optional)")
        self.key = key


class TemplateError(ValueError):
    """A template does not parse, or fails while rendering; the message says where."""


class Source(Protocol):
    """Where the helpers read (a node, or a mapping in tests)."""

    def value(self, key: str) -> bytes | None:
        """The value of ``key``, or None when it does not exist."""

    def entries(self, prefix: str, values: bool) -> list[tuple[str, bytes | None]]:
        """Every key under ``prefix`` in key order, with its value when ``values``."""


@attrs.define
class Dependencies:
    """What one render of a template read: keys and prefixes (``/app/`` for ``tree``)."""

    keys: set[str] = attrs.Factory(set)
    prefixes: set[str] = attrs.Factory(set)

    def matches(self, key: str) -> bool:
        """Tell whether a change of ``key`` can change what the template renders."""
        return key in self.keys or any(key_in_prefix(key, prefix) for prefix in self.prefixes)

    def watched(self) -> set[str]:
        """The feed prefixes that cover every dependency (a key is a prefix of itself)."""
        return self.keys | self.prefixes


def _text(key: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TemplateError(f"the value of {key} is not UTF-8 text") from None


def _document_prefix(raw: object, helper: str) -> str:
    if not isinstance(raw, str):
        raise TemplateError(f"{helper}(): the prefix must be text, not {type(raw).__name__}")
    try:
        prefix = normalize_prefix(raw)
    except InvalidKey as exc:
        raise TemplateError(f"{helper}(): {exc}") from None
    return prefix if prefix.endswith("/") else prefix + "/"


class Helpers:
    """``key``, ``tree`` and ``keys`` for one render, recording into ``dependencies``."""

    def __init__(self, source: Source, dependencies: Dependencies) -> None:
        self.source = source
        self.dependencies = dependencies

    def key(self, path: object, default: Any = _NO_DEFAULT) -> Any:
        """The value of a key as text; ``default`` (as given) when it does not exist."""
        if not isinstance(path, str):
            raise TemplateError(f"key(): the key must be text, not {type(path).__name__}")
        try:
            key = normalize_key(path)
        except InvalidKey as exc:
            raise TemplateError(f"key(): {exc}") from None
        self.dependencies.keys.add(key)
        raw = self.source.value(key)
        if raw is None:
            if default is _NO_DEFAULT:
                raise MissingKey(key)
            return default
        return _text(key, raw)

    def tree(self, prefix: object) -> dict[str, Any]:
        """The keys under a prefix as nested dicts (``/a/b/c`` is ``["b"]["c"]`` under
        ``/a/``), leaves as text. A key that also has keys under it is a dict whose ``""``
        entry holds its own value."""
        document = _document_prefix(prefix, "tree")
        self.dependencies.prefixes.add(document)
        root: dict[str, Any] = {}
        for key, raw in self.source.entries(document, True):
            *parents, leaf = key[len(document) :].split("/")
            level = root
            for name in parents:
                child = level.get(name)
                if not isinstance(child, dict):
                    child = level[name] = {} if child is None else {"": child}
                level = child
            value = _text(key, raw or b"")
            if isinstance(level.get(leaf), dict):
                level[leaf][""] = value
            else:
                level[leaf] = value
        return root

    def keys(self, prefix: object) -> list[str]:
        """The keys under a prefix, relative to it, in key order."""
        document = _document_prefix(prefix, "keys")
        self.dependencies.prefixes.add(document)
        return [key[len(document) :] for key, _ in self.source.entries(document, False)]


def fromjson(text: object) -> Any:
    """The ``fromjson`` filter: a JSON text as lists, dicts, strings and numbers."""
    if not isinstance(text, str):
        raise TemplateError(f"fromjson: expected text, not {type(text).__name__}")
    try:
        return parse_json(text)
    except NotJSON as exc:
        raise TemplateError(f"fromjson: not JSON: {exc}") from None


def make_environment() -> SandboxedEnvironment:
    """The sandbox every template runs in: no attribute tricks out of it, undefined names are
    errors, and the output keeps the template's last newline (config files end with one)."""
    environment = SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    environment.filters["fromjson"] = fromjson
    return environment


def _line_of(traceback: TracebackType | None, filename: str) -> int | None:
    """The template line an exception was raised at (Jinja2 rewrites tracebacks to show it)."""
    line = None
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == filename:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


class Template:
    """One template source, compiled once and rendered whenever what it read changes."""

    def __init__(self, environment: SandboxedEnvironment, path: str) -> None:
        self.path = path
        self.filename = os.path.abspath(path)
        try:
            with open(path, "rb") as source:
                raw = source.read(MAX_TEMPLATE_BYTES + 1)
        except OSError as exc:
            raise TemplateError(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_TEMPLATE_BYTES:
            raise TemplateError(f"{path}: larger than {MAX_TEMPLATE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
            code = environment.compile(text, filename=self.filename)
            self.compiled = environment.template_class.from_code(
                environment, code, environment.make_globals(None)
            )
        except UnicodeDecodeError:
            raise TemplateError(f"{path}: not UTF-8 text") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{path}:{exc.lineno}: {exc.message}") from None

    def render(self, source: Source, dependencies: Dependencies) -> bytes:
        """The output as UTF-8 bytes, reading through ``source`` and recording what it read
        in ``dependencies``. Raises :class:`MissingKey`, :class:`TemplateError`, or what the
        source raises when the node cannot be read."""
        helpers = Helpers(source, dependencies)
        context = {"key": helpers.key, "tree": helpers.tree, "keys": helpers.keys}
        size = 0
        parts: list[bytes] = []
        try:
            chunks: Iterator[str] = self.compiled.generate(context)
            for chunk in chunks:
                data = chunk.encode("utf-8", "surrogateescape")
                size += len(data)
                if size > MAX_OUTPUT_BYTES:
                    raise TemplateError(f"{self.path}: output larger than {MAX_OUTPUT_BYTES} bytes")
                parts.append(data)
        except (MissingKey, TemplateError):
            raise
        except (
            jinja2.TemplateError,
            ArithmeticError,
            LookupError,
            TypeError,
            ValueError,
            RecursionError,
        ) as exc:
            line = _line_of(exc.__traceback__, self.filename)
            where = f"{self.path}:{line}" if line else self.path
            raise TemplateError(f"{where}: {type(exc).__name__}: {exc}") from None
        return b"".join(parts)

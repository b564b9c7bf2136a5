"""Parsing JSON from other parties (clients, peers, upstreams) so that no document is a 500.

``json.loads`` recurses once per nesting level and raises ``RecursionError`` at Python's
recursion limit (about 1,000 levels, on CPython and PyPy alike): a body of 100,000 ``[`` would
escape every handler that only expects ``ValueError``. :func:`parse_json` turns that, and every
other parse failure, into :class:`NotJSON`, a ``ValueError`` whose message says why. The
recursion limit is the depth limit: no document the node reads nests more than four levels, and
each is checked against its shape after parsing, so a deeper one is refused there. (Checking the
depth from the text first would cost more than the parse: 7 s for a 64 MiB bulk load.)
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["NotJSON", "parse_json"]


class NotJSON(ValueError):
    """The text is not a JSON document the node can read; the message says why."""


def parse_json(text: bytes | str) -> Any:
    """The document ``text`` holds; :class:`NotJSON` if it holds none, or nests too deeply."""
    try:
        return json.loads(text)
    except RecursionError:
        raise NotJSON("the document is nested too deeply (about 1,000 levels or more)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotJSON(str(exc)) from None

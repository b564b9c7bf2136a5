"""Reading an etcd v2 keys request: the key, and the parameters from the query and the form body.

etcd reads its parameters with Go's ``Request.ParseForm``: the query, and for ``PUT`` and
``POST`` a body of type ``application/x-www-form-urlencoded`` too, the body's value first. The
checks and their order are etcd 3.4's ``parseKeyRequest``, so a bad request gets the same
``errorCode`` and ``cause`` (209 for a bad boolean, 203 for a bad index, 202 for a bad TTL).
"""

from __future__ import annotations

from urllib.parse import parse_qs

import attrs
from twisted.web.server import Request

from navistore.compat.etcd_errors import (
    INDEX_NAN,
    INVALID_FIELD,
    PREV_VALUE_REQUIRED,
    REFRESH_TTL_REQUIRED,
    REFRESH_VALUE,
    TTL_NAN,
    EtcdError,
)
from navistore.web.params import request_body

__all__ = ["MAX_TTL", "KeyRequest", "parse_key_request"]

#: The longest TTL accepted, in seconds (ten years): any more would overflow the deadline of a
#: record in milliseconds long before it meant anything.
MAX_TTL = 10 * 365 * 24 * 3600

_FORM = b"application/x-www-form-urlencoded"

# Go's strconv.ParseBool.
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


@attrs.frozen
class KeyRequest:
    """What a ``/v2/keys`` request asks, parsed and checked.

    :ivar prev_exist: ``prevExist``: True, False, or None when not given.
    :ivar ttl: seconds, or None when not given (or empty).
    :ivar refresh: ``refresh=true``: only the TTL changes.
    """

    value: str = ""
    value_given: bool = False
    dir: bool = False
    recursive: bool = False
    wait: bool = False
    stream: bool = False
    wait_index: int = 0
    prev_value: str | None = None
    prev_index: int = 0
    prev_exist: bool | None = None
    ttl: int | None = None
    refresh: bool = False
    no_value_on_success: bool = False


def _form(request: Request, max_body: int) -> dict[str, list[str]]:
    """The body's values, then the query's, by name (Go's ``r.Form``)."""
    _, _, raw_query = request.uri.partition(b"?")
    parts: list[bytes] = []
    content_type = (request.getHeader(b"Content-Type") or b"").split(b";")[0].strip().lower()
    if request.method in (b"PUT", b"POST") and content_type == _FORM:
        parts.append(request_body(request, max_body))
    parts.append(raw_query)
    form: dict[str, list[str]] = {}
    for part in parts:
        try:
            parsed = parse_qs(part.decode("utf-8"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise EtcdError(210, "the form or the query is not UTF-8", status=400) from None
        for name, values in parsed.items():
            form.setdefault(name, []).extend(values)
    return form


def _bool(form: dict[str, list[str]], name: str, cause: str | None = None) -> bool:
    values = form.get(name)
    if not values:
        return False
    if values[0] in _TRUE:
        return True
    if values[0] in _FALSE:
        return False
    raise EtcdError(INVALID_FIELD, cause or f'invalid value for "{name}"')


def _index(form: dict[str, list[str]], name: str) -> int:
    values = form.get(name)
    if not values:
        return 0
    text = values[0]
    if not text.isdigit() or not text.isascii() or int(text) >= 2**64:
        raise EtcdError(INDEX_NAN, f'invalid value for "{name}"')
    return int(text)


def parse_key_request(request: Request, max_body: int) -> KeyRequest:
    """Parse and check a keys request's parameters, in etcd's order.

    :param max_body: the most bytes a form body may have (413 past it).
    :raises EtcdError: the first parameter etcd would refuse, as etcd answers it.
    """
    form = _form(request, max_body)
    prev_index = _index(form, "prevIndex")
    wait_index = _index(form, "waitIndex")
    recursive = _bool(form, "recursive")
    _bool(form, "sorted")  # listings are always in key order
    wait = _bool(form, "wait")
    is_dir = _bool(form, "dir")
    _bool(form, "quorum")  # every read is this node's (there is no consensus to ask)
    stream = _bool(form, "stream")
    if wait and request.method not in (b"GET", b"HEAD"):
        raise EtcdError(INVALID_FIELD, '"wait" can only be used with GET requests')
    prev_value: str | None = None
    if "prevValue" in form:
        prev_value = form["prevValue"][0]
        if prev_value == "":
            raise EtcdError(PREV_VALUE_REQUIRED, '"prevValue" cannot be empty')
    no_value = _bool(form, "noValueOnSuccess")
    ttl: int | None = None
    ttl_text = form.get("ttl", [""])[0]
    if ttl_text:
        if not ttl_text.isdigit() or not ttl_text.isascii() or int(ttl_text) > MAX_TTL:
            raise EtcdError(TTL_NAN, 'invalid value for "ttl"')
        ttl = int(ttl_text)
    prev_exist: bool | None = None
    if "prevExist" in form:
        prev_exist = _bool(form, "prevExist", "invalid value for prevExist")
    refresh = False
    value_given = "value" in form
    value = form["value"][0] if value_given else ""
    if "refresh" in form:
        refresh = _bool(form, "refresh", "invalid value for refresh")
        if refresh and value_given and value != "":
            raise EtcdError(REFRESH_VALUE, "A value was provided on a refresh")
        if refresh and ttl is None:
            raise EtcdError(REFRESH_TTL_REQUIRED, "No TTL value set")
    return KeyRequest(
        value=value,
        value_given=value_given,
        dir=is_dir,
        recursive=recursive,
        wait=wait,
        stream=stream,
        wait_index=wait_index,
        prev_value=prev_value,
        prev_index=prev_index,
        prev_exist=prev_exist,
        ttl=ttl,
        refresh=refresh,
        no_value_on_success=no_value,
    )

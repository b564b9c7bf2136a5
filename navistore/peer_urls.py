"""Peer URLs: what names another node, in one normal form.

A peer is named by the base URL of its HTTP API, ``http(s)://host:port``, with nothing after the
port. URLs are normalised (lower-case scheme and host, no trailing slash) so that one peer has one
name: the name keys its cursor in meta data, so two spellings of one peer would push twice.

Pure functions, so that the command line, the web layer and replication check URLs alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = [
    "InvalidPeer",
    "host_port",
    "normalize_peer_url",
    "parse_peer_list",
    "unique",
]

_HOST_NAME = re.compile(r"[a-z0-9_~-]+(\.[a-z0-9_~-]+)*\.?\Z")
_IPV6 = re.compile(r"[0-9a-f:.]+\Z")
_LIST_SEPARATORS = re.compile(r"[,\s]+")


class InvalidPeer(ValueError):
    """A peer URL that cannot be a peer: not http(s), no host or port, or this node itself."""

    code = "invalid_peer"


def normalize_peer_url(url: str) -> str:
    """Return the canonical form ``scheme://host:port`` of a peer URL.

    :raises InvalidPeer: not an http(s) URL with a host and an explicit port, or it carries
        credentials, a path, a query or a fragment.
    """
    if not isinstance(url, str):
        raise InvalidPeer(f"a peer URL must be text, not {type(url).__name__}")
    text = url.strip()
    if not text:
        raise InvalidPeer("the peer URL is empty")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidPeer(f"{text!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise InvalidPeer(f"peer URL {text!r} must look like http://host:port (or https://)")
    host = parts.hostname or ""
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    if not host or not (_IPV6 if bracketed else _HOST_NAME).match(host):
        raise InvalidPeer(f"peer URL {text!r} has no valid host name")
    if parts.username is not None or parts.password is not None:
        raise InvalidPeer(f"peer URL {text!r} must not carry credentials")
    if not port:
        raise InvalidPeer(f"peer URL {text!r} needs a port, e.g. {scheme}://{parts.netloc}:8888")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise InvalidPeer(f"peer URL {text!r} must be only scheme://host:port, with no path")
    shown = f"[{host}]" if bracketed else host
    return f"{scheme}://{shown}:{port}"


def host_port(url: str) -> tuple[str, int]:
    """The (host, port) of a normalised peer URL, which is what "the same node" compares."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


def parse_peer_list(text: str) -> list[str]:
    """Parse the classic ``http://a:1,http://b:2`` list (commas or white space) into URLs.

    Duplicates are dropped, order is kept; an empty text is an empty set.

    :raises InvalidPeer: one of the URLs is invalid (the message names it).
    """
    return unique(normalize_peer_url(item) for item in _LIST_SEPARATORS.split(text.strip()) if item)


def unique(urls: Iterable[str]) -> list[str]:
    """``urls`` without repeats, in first-seen order."""
    return list(dict.fromkeys(urls))

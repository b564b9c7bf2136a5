"""What etcd clients probe besides keys: members, machines, stats, ``/version``, ``/health``.

etcdctl reads ``/v2/members`` before every command (unless ``--no-sync``) and then talks to the
client URLs it lists, so the list names this node alone, at the URL the request reached it by:
its indexes are its own (node-local seqs), and a client must not wander to another node in the
middle of a watch. The cluster id is one constant for every Navistore node, because clients
(python-etcd) refuse to go on when the id changes between the nodes they reach.
"""

from __future__ import annotations

import re
import time
from typing import Any

from twisted.web.server import Request

from navistore import __version__
from navistore.web.responses import Response, json_bytes

__all__ = [
    "CLUSTER_ID",
    "ETCD_CLUSTER_VERSION",
    "ETCD_SERVER_VERSION",
    "client_url",
    "health_answer",
    "leader_answer",
    "leader_stats",
    "machines_answer",
    "members_answer",
    "self_stats",
    "version_answer",
]

#: ``X-Etcd-Cluster-Id`` of every Navistore node: "navistor" in hex.
CLUSTER_ID = b"6e61766973746f72"
#: The etcd version the API is modelled on (etcd 3.4's v2 API, as Debian ships it).
ETCD_SERVER_VERSION = "3.4.23"
ETCD_CLUSTER_VERSION = "3.4.0"

_HOST = re.compile(rb"\A(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(:[0-9]{1,5})?\Z")
_JSON = {b"Content-Type": b"application/json"}


def client_url(request: Request, self_urls: tuple[str, ...]) -> str:
    """This node's client URL as ``request`` reached it (its ``Host`` header, when it is a
    plain host and port), else the node's first own URL, else the socket's address."""
    scheme = "https" if request.isSecure() else "http"
    host = (request.getHeader(b"Host") or b"").strip()
    if _HOST.match(host):
        return f"{scheme}://{host.decode('ascii')}"
    if self_urls:
        return self_urls[0]
    address = request.getHost()
    return f"{scheme}://{getattr(address, 'host', '127.0.0.1')}:{getattr(address, 'port', 0)}"


def _json(document: Any, headers: dict[bytes, bytes]) -> Response:
    return Response(200, json_bytes(document) + b"\n", {**headers, **_JSON})


def _member(node_id: str, url: str) -> dict[str, Any]:
    return {"id": node_id, "name": f"navistore-{node_id}", "peerURLs": [url], "clientURLs": [url]}


def members_answer(node_id: str, url: str, headers: dict[bytes, bytes]) -> Response:
    """``GET /v2/members``: this node, its client URL as the client reached it."""
    return _json({"members": [_member(node_id, url)]}, headers)


def leader_answer(node_id: str, url: str, headers: dict[bytes, bytes]) -> Response:
    """``GET /v2/members/leader`` (``etcdctl member list``): this node leads itself."""
    return _json(_member(node_id, url), headers)


def machines_answer(url: str, headers: dict[bytes, bytes]) -> Response:
    """``GET /v2/machines``: the client URLs, comma-separated, as plain text."""
    text = {**headers, b"Content-Type": b"text/plain; charset=utf-8"}
    return Response(200, url.encode("utf-8"), text)


def version_answer(headers: dict[bytes, bytes]) -> Response:
    """``GET /version``: etcd's two versions, and Navistore's in a field clients ignore."""
    document = {
        "etcdserver": ETCD_SERVER_VERSION,
        "etcdcluster": ETCD_CLUSTER_VERSION,
        "navistore": __version__,
    }
    return Response(200, json_bytes(document), {**headers, **_JSON})


def health_answer(healthy: bool, headers: dict[bytes, bytes]) -> Response:
    """``GET /health``: ``{"health":"true"}``, or ``"false"`` with 503 when the store fails."""
    body = json_bytes({"health": "true" if healthy else "false"})
    return Response(200 if healthy else 503, body, {**headers, **_JSON})


def _rfc3339(seconds: float) -> str:
    whole = int(seconds)
    nanos = int((seconds - whole) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{nanos:09d}Z"


def self_stats(node_id: str, started: float, now: float, headers: dict[bytes, bytes]) -> Response:
    """``GET /v2/stats/self``: this node leads itself (there is no consensus to lead)."""
    start = _rfc3339(started)
    document = {
        "name": f"navistore-{node_id}",
        "id": node_id,
        "state": "StateLeader",
        "startTime": start,
        "leaderInfo": {"leader": node_id, "uptime": f"{now - started:.3f}s", "startTime": start},
        "recvAppendRequestCnt": 0,
        "sendAppendRequestCnt": 0,
    }
    return _json(document, headers)


def leader_stats(node_id: str, headers: dict[bytes, bytes]) -> Response:
    """``GET /v2/stats/leader``: no followers (replication peers are not raft followers)."""
    return _json({"leader": node_id, "followers": {}}, headers)

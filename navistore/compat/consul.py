"""Consul's HTTP API, the part configuration clients use: the KV store at ``/v1/kv/``, ``/v1/txn``,
and the status endpoints clients probe before they start (``/v1/status/leader``,
``/v1/agent/self``).

consul-template, envconsul, ``consul kv`` and the Consul client libraries reach a node started
with ``--compat consul`` unchanged, given its address (``CONSUL_HTTP_ADDR``) and a token
(``CONSUL_HTTP_TOKEN``, sent as ``X-Consul-Token``, ``?token=`` or ``Authorization: Bearer``).

Every answer carries ``X-Consul-Index`` (errors and 404s too: clients fail without it),
``X-Consul-KnownLeader: true`` and ``X-Consul-LastContact: 0`` (every node answers on its own:
there is no leader to lose). The index is this node's newest seq
(:func:`~navistore.compat.consul_base.store_index`), so a client moving to another node must
reset it, as Consul's clients do when an answer's index is lower than theirs. Errors are plain
text with Consul's statuses. Sessions, locks, the catalog and the rest of Consul are not here:
``/v1/session/*`` answers a 400 that says so.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.web.server import Request

from navistore import __version__
from navistore.compat.consul_base import (
    DATACENTER,
    INDEX_HEADER,
    ConsulContext,
    ConsulError,
    consul_json,
    store_index,
)
from navistore.compat.consul_kv import ConsulKV
from navistore.compat.consul_txn import ConsulTxn
from navistore.keys import InvalidKey
from navistore.tokens import Caller
from navistore.web.errors import ApiError, as_api_error
from navistore.web.mounts import Mount
from navistore.web.params import query_arg
from navistore.web.responses import Response

__all__ = ["CONSUL_VERSION", "ConsulMount", "consul_mounts"]

#: The Consul version ``/v1/agent/self`` reports: the API this node speaks (clients check it).
CONSUL_VERSION = "1.16.0"
#: The address ``/v1/status/leader`` names when the node knows none of its own.
_DEFAULT_ADDRESS = "127.0.0.1:8300"

_ALWAYS = {b"X-Consul-KnownLeader": b"true", b"X-Consul-LastContact": b"0"}


def consul_mounts(context: ConsulContext) -> dict[str, Mount]:
    """Consul's API, mounted on ``/v1/``."""
    return {"v1": ConsulMount(context)}


class ConsulMount:
    """Every path under ``/v1/``: the KV store, transactions, and the status endpoints."""

    def __init__(self, context: ConsulContext) -> None:
        self.context = context
        self.kv = ConsulKV(context)
        self.txn = ConsulTxn(context)

    def refused(self, request: Request, error: ApiError) -> ApiError:
        """An unknown token: Consul's ``403 ACL not found``, with ``X-Consul-Index``."""
        status = 403 if error.status == 401 else error.status
        message = "ACL not found" if error.status == 401 else error.message
        index = b"%d" % store_index(self.context.store)
        headers = {**error.headers, **_ALWAYS, INDEX_HEADER: index}
        return ApiError(status, error.code, message, error.detail, headers)

    def secret(self, request: Request) -> str | None:
        """Consul's ``X-Consul-Token`` header, else ``?token=`` (``Authorization: Bearer`` is
        read by the node itself)."""
        header = request.getHeader(b"X-Consul-Token")
        if header is not None and header.strip():
            return header.decode("latin-1").strip()
        try:
            token = query_arg(request, "token")
        except ApiError:
            return None
        return token or None

    async def answer(self, request: Request, path: str, caller: Caller) -> Response:
        """Answer one request under ``/v1/``, errors included, with the index headers."""
        try:
            response = await self._route(request, path, caller)
        except CancelledError:
            raise  # the client went away: nothing to answer
        except ConsulError as exc:
            response = exc.response()
        except ApiError as exc:
            response = self._refusal(exc)
        except InvalidKey as exc:
            response = ConsulError(400, f"Invalid key: {exc.reason}").response()
        except Exception as exc:
            error = as_api_error(exc)  # logs what nobody foresaw
            response = ConsulError(error.status, error.message, error.headers).response()
        if INDEX_HEADER not in response.headers:
            response.headers[INDEX_HEADER] = b"%d" % store_index(self.context.store)
        response.headers.update(_ALWAYS)
        return response

    @staticmethod
    def _refusal(error: ApiError) -> Response:
        """A native refusal in Consul's words: a permission refused is Consul's ``403
        Permission denied`` whether or not a token was sent (Consul's anonymous token)."""
        if error.code in ("unauthorized", "forbidden"):
            return ConsulError(403, f"Permission denied: {error.message}").response()
        headers = {name: value for name, value in error.headers.items() if name != b"Allow"}
        return ConsulError(error.status, error.message, headers).response()

    async def _route(self, request: Request, path: str, caller: Caller) -> Response:
        method = b"GET" if request.method == b"HEAD" else request.method
        dc = query_arg(request, "dc")
        if dc and dc != DATACENTER:
            raise ConsulError(
                500, f"No path to datacenter {dc[:100]!r}: this node serves {DATACENTER}"
            )
        if path.startswith("/v1/kv/") or path == "/v1/kv":
            name = path[len("/v1/kv/") :]
            if method == b"GET":
                return await self.kv.get(request, name, caller)
            if method == b"PUT":
                return await self.kv.put(request, name, caller)
            if method == b"DELETE":
                return await self.kv.delete(request, name, caller)
            raise _not_allowed(method)
        if path == "/v1/txn":
            return await self.txn.answer(request, caller)
        if path.startswith("/v1/session/") or path == "/v1/session":
            raise ConsulError(
                400,
                "Navistore has no Consul sessions (nor locks or semaphores built on them): "
                "use ?cas= and /v1/txn for conditional writes",
            )
        endpoint = _STATUS.get(path)
        if endpoint is None:
            raise ConsulError(
                404,
                f"{path[:200]} is not part of Consul's API that Navistore serves "
                "(/v1/kv/, /v1/txn, /v1/status/leader, /v1/status/peers, /v1/agent/self, "
                "/v1/catalog/datacenters)",
            )
        if method != b"GET":
            raise _not_allowed(method)
        return consul_json(endpoint(self))

    # -- the endpoints clients probe ----------------------------------------------------------

    def _address(self) -> str:
        """This node's address as ``host:port`` (the first of its own URLs)."""
        for url in self.context.self_urls:
            rest = url.split("://", 1)[-1].split("/", 1)[0]
            if rest:
                return rest
        return _DEFAULT_ADDRESS

    def _leader(self) -> object:
        return self._address()

    def _peers(self) -> object:
        return [self._address()]

    def _agent_self(self) -> object:
        node = self.context.store.node_id
        return {
            "Config": {
                "Datacenter": DATACENTER,
                "NodeName": node,
                "NodeID": node,
                "Server": True,
                "Version": CONSUL_VERSION,
                "Revision": f"navistore-{__version__}",
            },
            "Member": {"Name": node, "Addr": self._address().rsplit(":", 1)[0], "Status": 1},
            "Meta": {"navistore": __version__},
        }

    def _datacenters(self) -> object:
        return [DATACENTER]


def _not_allowed(method: bytes) -> ConsulError:
    return ConsulError(405, f"method {method.decode('latin-1')} not allowed")


_STATUS = {
    "/v1/status/leader": ConsulMount._leader,
    "/v1/status/peers": ConsulMount._peers,
    "/v1/agent/self": ConsulMount._agent_self,
    "/v1/catalog/datacenters": ConsulMount._datacenters,
}

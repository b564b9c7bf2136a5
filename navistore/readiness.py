"""``GET /_ready``: whether the node can serve correctly now, and if not, why.

``/_health`` says the process answers (liveness: restart it if it does not); ``/_ready`` says a
load balancer may send it clients (readiness). It answers 503 with the reasons until every
check passes:

- ``backend``: the backend answers a cheap read (the Store's health, within
  :data:`BACKEND_PROBE_TIMEOUT` seconds) and its last group commit did not fail; no write is
  made per probe;
- ``clone``: a node cloning (``--clone-from``) has had everything its source had at least once;
- ``upstream``: a cache node (``--upstream``) brought its copies in step with its upstream
  within :data:`UPSTREAM_READY_POLLS` poll intervals (and never less than
  :data:`UPSTREAM_READY_MIN_SECONDS`);
- ``shutdown``: the node is not shutting down (the daemon says so before it stops listening,
  so readiness goes 503 first and stays so while requests drain).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from navistore.cache_node.cache import UpstreamCache
from navistore.interfaces import IBackendStatistics
from navistore.replication.service import ReplicationService
from navistore.store import Store
from navistore.web.responses import Endpoints, Response, json_response

__all__ = [
    "BACKEND_PROBE_TIMEOUT",
    "UPSTREAM_READY_MIN_SECONDS",
    "UPSTREAM_READY_POLLS",
    "Readiness",
]

#: Seconds the backend has to answer the readiness probe's read.
BACKEND_PROBE_TIMEOUT = 2.0

#: A cache node is ready while it reached its upstream within this many poll intervals.
UPSTREAM_READY_POLLS = 3

#: ... and the bound is never shorter than this many seconds (a short interval on a busy host).
UPSTREAM_READY_MIN_SECONDS = 2.0


class Readiness:
    """The readiness checks of one node, and ``/_ready``.

    :param poll_interval: a cache node's poll interval (the upstream bound is a few of them).
    """

    def __init__(
        self,
        store: Store,
        *,
        replication: ReplicationService,
        cache: UpstreamCache | None,
        clock: IReactorTime,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.replication = replication
        self.cache = cache
        self.clock = clock
        #: The most seconds since a cache node last reached its upstream while it is ready.
        self.upstream_bound = max(UPSTREAM_READY_MIN_SECONDS, UPSTREAM_READY_POLLS * poll_interval)
        #: Set once the node is shutting down (:meth:`shutting_down`).
        self.stopping = False

    def shutting_down(self) -> None:
        """The node is shutting down: not ready from now on."""
        self.stopping = True

    def endpoints(self) -> Endpoints:
        """``/_ready`` (``GET`` and ``HEAD``), for ``make_site(extra_endpoints=...)``."""
        return {"_ready": {b"GET": self.answer, b"HEAD": self.answer}}

    async def answer(self, request: Request) -> Response:
        """200 ``{"ready": true}`` when every check passes, else 503 with the reasons."""
        document = await self.check()
        return json_response(document, 200 if document["ready"] else 503)

    async def check(self) -> dict[str, Any]:
        """Run every check: ``{"ready", "status", "node_id", "reasons", "checks"}``."""
        checks: dict[str, dict[str, Any]] = {
            "backend": await self._backend(),
            "clone": self._clone(),
            "upstream": self._upstream(),
            "shutdown": self._shutdown(),
        }
        reasons = [
            {"check": name, "message": outcome["message"]}
            for name, outcome in checks.items()
            if not outcome["ok"]
        ]
        return {
            "ready": not reasons,
            "status": "ready" if not reasons else "not_ready",
            "node_id": self.store.node_id,
            "reasons": reasons,
            "checks": checks,
        }

    async def _backend(self) -> dict[str, Any]:
        kind = str(self.store.backend.kind)
        probe: Deferred[dict[str, object]] = Deferred.fromCoroutine(self.store.health())
        try:
            await probe.addTimeout(BACKEND_PROBE_TIMEOUT, self.clock)
        except TimeoutError:
            return _failed(f"the {kind} backend did not answer in {BACKEND_PROBE_TIMEOUT} s")
        except Exception as exc:
            return _failed(f"the {kind} backend fails: {exc}")
        backend = self.store.backend
        if IBackendStatistics.providedBy(backend):
            error = backend.statistics.commit_error
            if error is not None:
                return _failed(f"the {kind} backend's last commit failed: {error}")
        return _passed(f"the {kind} backend answers")

    def _clone(self) -> dict[str, Any]:
        puller = self.replication.puller
        status = self.replication.clone_status()
        if status is None:
            if self.replication.cloning:
                return _failed("the clone has not started yet")
            return _passed("not a clone")
        if puller is not None and puller.caught_up_once:
            return _passed(f"caught up with {status['url']} once", cursor=status["cursor"])
        return _failed(
            f"cloning from {status['url']}: {status['pulled']} records pulled so far, up to "
            f"its seq {status['cursor']} ({status['state']})",
            cursor=status["cursor"],
            pulled=status["pulled"],
        )

    def _upstream(self) -> dict[str, Any]:
        cache = self.cache
        if cache is None:
            return _passed("not a cache node")
        since = cache.seconds_since_contact()
        bound = self.upstream_bound
        if since is None:
            return _failed(f"the upstream {cache.upstream} has not been reached since start")
        if since > bound:
            return _failed(
                f"the upstream {cache.upstream} was last reached {since:.1f} s ago "
                f"(ready within {bound:g} s)",
                seconds_since_contact=round(since, 3),
            )
        return _passed(
            f"the upstream {cache.upstream} was reached {since:.1f} s ago",
            seconds_since_contact=round(since, 3),
        )

    def _shutdown(self) -> dict[str, Any]:
        if self.stopping:
            return _failed("the node is shutting down")
        return _passed("serving")


def _passed(message: str, **more: Any) -> dict[str, Any]:
    return {"ok": True, "message": message, **more}


def _failed(message: str, **more: Any) -> dict[str, Any]:
    return {"ok": False, "message": message, **more}

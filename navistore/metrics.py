"""``GET /_metrics``: one node's figures in the Prometheus text format, made by prometheus_client.

Nothing here runs in a request's hot path. The parts of a node count what they do in plain
numbers (:mod:`navistore.tally`, the Store's :class:`~navistore.store.core.StoreCounters`, the
watch hub, the pushers, the replica tracker, the cache node); :class:`NodeCollector` reads them
when Prometheus scrapes and turns them into metric families. Each node has its own
:class:`~prometheus_client.CollectorRegistry` (never the global one), so that several nodes in
one process do not collide; the process and platform collectors are registered on it.

What costs at scrape time is bounded: the live keys, tombstones and database bytes are measured
by the backend off the reactor's thread (:class:`~navistore.interfaces.IBackendStatistics`), at
most once every :data:`SIZES_MAX_AGE` seconds, and a scrape waits at most :data:`SIZES_WAIT`
seconds for a new measure before it serves the last one; per-peer series are given for at most
:data:`MAX_PEER_SERIES` peers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from navistore import __version__
from navistore.cache_node.cache import UpstreamCache
from navistore.interfaces import IBackendStatistics
from navistore.replication.replicas import ReplicaTracker
from navistore.replication.service import ReplicationService
from navistore.store import Store
from navistore.tally import ABORTED, Histogram, RequestCounts
from navistore.waiters import Waiters
from navistore.watch_hub import WatchHub
from navistore.web.responses import Endpoints, Response

if TYPE_CHECKING:
    from navistore.tally import StorageSizes

__all__ = [
    "CONTENT_TYPE",
    "MAX_PEER_SERIES",
    "SIZES_MAX_AGE",
    "SIZES_WAIT",
    "NodeCollector",
    "NodeMetrics",
]

log = Logger()

#: The Prometheus text exposition format, version 0.0.4 (what every Prometheus reads).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: Seconds a measure of the live keys, tombstones and database bytes is served before a scrape
#: asks the backend for a new one.
SIZES_MAX_AGE = 15.0

#: Seconds a scrape waits for a new measure of the sizes before it serves the last one.
SIZES_WAIT = 2.0

#: The most peers given series of their own (cursor, lag, state...); the rest are counted.
MAX_PEER_SERIES = 200

#: The states a pusher, the clone puller and a cache node's follower may be in.
_PUSH_STATES = ("idle", "sending", "backoff", "self", "stopped")
_PULL_STATES = ("cloning", "caught_up", "pulling", "backoff", "self", "stopped")
_UPSTREAM_STATES = ("connecting", "following", "backoff", "self", "stopped")
#: The kinds of watch there are (see :mod:`navistore.web.feeds`).
_WATCH_KINDS = ("longpoll", "eventsource", "wait")


def _histogram(
    name: str, documentation: str, labels: list[str], series: Iterable[tuple[list[str], Histogram]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, histogram in series:
        family.add_metric(values, histogram.cumulative(), histogram.sum)
    return family


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class NodeMetrics:
    """The metrics of one node: its registry, what its collector reads, and ``/_metrics``.

    :param requests: where the node's requests are counted (the daemon's
        :class:`~navistore.listening.RequestTracker` adds to it).
    :param clock: what the age of a size measure is judged with.
    """

    def __init__(
        self,
        store: Store,
        *,
        watch_hub: WatchHub,
        replication: ReplicationService,
        replicas: ReplicaTracker,
        cache: UpstreamCache | None,
        clock: IReactorTime,
        requests: RequestCounts | None = None,
    ) -> None:
        self.store = store
        self.watch_hub = watch_hub
        self.replication = replication
        self.replicas = replicas
        self.cache = cache
        self.clock = clock
        self.requests = RequestCounts() if requests is None else requests
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(NodeCollector(self))
        self._measuring = False
        self._measures = Waiters()

    def endpoints(self) -> Endpoints:
        """``/_metrics`` (``GET`` and ``HEAD``), for ``make_site(extra_endpoints=...)``."""
        return {"_metrics": {b"GET": self.answer, b"HEAD": self.answer}}

    async def answer(self, request: Request) -> Response:
        """A scrape: the sizes brought up to date (bounded), then every family as text."""
        await self.refresh_sizes()
        return Response(200, self.render(), {b"Content-Type": CONTENT_TYPE})

    def render(self) -> bytes:
        """Every metric of the node, in the Prometheus text format."""
        return generate_latest(self.registry)

    async def refresh_sizes(self) -> None:
        """Have the backend measure its sizes if the last measure is older than
        :data:`SIZES_MAX_AGE`; wait for it at most :data:`SIZES_WAIT` seconds (it goes on, and
        a later scrape serves it). One measure at a time, whoever asks."""
        backend = self.store.backend
        if not IBackendStatistics.providedBy(backend):
            return
        sizes = backend.statistics.sizes
        if sizes is not None and self.clock.seconds() - sizes.measured_at < SIZES_MAX_AGE:
            return
        measured = self._measures.wait()
        if not self._measuring:
            self._measuring = True
            measuring: Deferred[StorageSizes] = backend.measure_sizes()
            measuring.addErrback(self._measure_failed).addBoth(self._measured)
        try:
            await measured.addTimeout(SIZES_WAIT, self.clock)
        except TimeoutError:
            log.info("the backend's sizes are still being measured; serving the last measure")

    @staticmethod
    def _measure_failed(failure: Failure) -> None:
        log.warn("measuring the backend's sizes failed: {why}", why=failure.value)

    def _measured(self, _result: object) -> None:
        self._measuring = False
        self._measures.fire()


class NodeCollector(Collector):
    """Reads a node's counters at scrape time and gives them as metric families."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        info = GaugeMetricFamily(
            "navistore_info",
            "This node: its version, id and backend kind (always 1).",
            labels=["version", "node_id", "backend"],
        )
        store = metrics.store
        info.add_metric([__version__, store.node_id, str(store.backend.kind)], 1)
        yield info
        yield from self._requests(metrics.requests)
        yield from self._store(store)
        yield from self._backend()
        yield from self._watches(metrics.watch_hub)
        yield from self._peers(metrics.replication)
        yield from self._replicas(metrics.replicas)
        if metrics.cache is not None:
            yield from self._upstream(metrics.cache)

    @staticmethod
    def _requests(requests: RequestCounts) -> Iterator[Metric]:
        counted = CounterMetricFamily(
            "navistore_http_requests",
            "HTTP requests answered, by route family, method and status (aborted: the client "
            "went away before the answer was finished).",
            labels=["family", "method", "status"],
        )
        for (family, method, status), count in sorted(requests.counts.items()):
            label = "aborted" if status == ABORTED else str(status)
            counted.add_metric([family, method.decode("ascii"), label], count)
        yield counted
        yield _histogram(
            "navistore_http_request_duration_seconds",
            "Seconds from a request's headers to the end of its answer, by route family and "
            "method.",
            ["family", "method"],
            (
                ([family, method.decode("ascii")], histogram)
                for (family, method), histogram in sorted(requests.latency.items())
            ),
        )

    @staticmethod
    def _store(store: Store) -> Iterator[Metric]:
        counters = store.counters
        yield _counter("navistore_store_reads", "Key reads answered by the Store.", counters.reads)
        yield _counter(
            "navistore_store_puts", "Records stored by this node's own writes.", counters.puts
        )
        yield _counter(
            "navistore_store_deletes",
            "Tombstones stored by this node's own deletes.",
            counters.deletes,
        )
        failures = CounterMetricFamily(
            "navistore_store_conditional_failures",
            "Conditional writes refused: precondition (If-Match, If-None-Match: 412) or "
            "conflict (create-only on an existing key: 409).",
            labels=["reason"],
        )
        failures.add_metric(["precondition"], counters.precondition_failures)
        failures.add_metric(["conflict"], counters.conflicts)
        yield failures
        yield _counter(
            "navistore_store_received",
            "Records received from other nodes (peers, a clone source, an upstream) and stored.",
            counters.received,
        )
        yield _counter(
            "navistore_store_lww_losses",
            "Records received older than the stored one: last-writer-wins kept the stored.",
            counters.lww_losses,
        )
        yield _counter(
            "navistore_store_received_duplicates",
            "Records received that this node held already (the same version).",
            counters.duplicates,
        )
        yield _counter(
            "navistore_store_expiries",
            "Expiries (tombstones of keys whose TTL ran out) this node wrote.",
            counters.expiries,
        )
        yield _counter(
            "navistore_store_conflict_losers",
            "Losers of concurrent writes kept (met here or received from a peer that met "
            "them): writes last-writer-wins discarded though their writers had not seen each "
            "other; GET /_conflicts lists them.",
            counters.conflict_losers,
        )

    def _backend(self) -> Iterator[Metric]:
        backend = self.metrics.store.backend
        if not IBackendStatistics.providedBy(backend):
            return
        statistics = backend.statistics
        yield _histogram(
            "navistore_backend_commit_batch_records",
            "Records written per group commit (one transaction).",
            [],
            [([], statistics.batch_sizes)],
        )
        yield _histogram(
            "navistore_backend_commit_duration_seconds",
            "Seconds a group commit took, from its start to its commit.",
            [],
            [([], statistics.commit_seconds)],
        )
        yield _counter(
            "navistore_backend_errors", "Backend operations that failed.", statistics.errors
        )
        sizes = statistics.sizes
        if sizes is None:
            return
        yield _gauge("navistore_backend_live_keys", "Keys held (no tombstone).", sizes.live_keys)
        yield _gauge(
            "navistore_backend_tombstones",
            "Deleted keys kept so that deletes replicate.",
            sizes.tombstones,
        )
        if sizes.database_bytes is not None:
            yield _gauge(
                "navistore_backend_database_bytes",
                "Bytes the database takes on disk (with its write-ahead log).",
                sizes.database_bytes,
            )
        yield _gauge(
            "navistore_backend_sizes_measured_timestamp_seconds",
            "When live keys, tombstones and database bytes were measured (Unix time).",
            sizes.measured_at,
        )

    @staticmethod
    def _watches(hub: WatchHub) -> Iterator[Metric]:
        watchers = GaugeMetricFamily(
            "navistore_watchers",
            "Watches being served, by kind (longpoll, eventsource, wait).",
            labels=["kind"],
        )
        by_kind = hub.watching_by_kind()
        for kind in sorted({*_WATCH_KINDS, *by_kind}):
            watchers.add_metric([kind], by_kind.get(kind, 0))
        yield watchers
        yield _counter(
            "navistore_watch_wakeups",
            "Times a waiting watch was woken by a change.",
            hub.wakeups,
        )

    @staticmethod
    def _peers(replication: ReplicationService) -> Iterator[Metric]:
        pushers = list(replication.pushers())
        yield _gauge("navistore_peers", "Peers this node pushes its changes to.", len(pushers))
        shown = pushers[:MAX_PEER_SERIES]
        cursor = GaugeMetricFamily(
            "navistore_peer_cursor",
            "The highest local seq the peer has acknowledged.",
            labels=["peer"],
        )
        behind = GaugeMetricFamily(
            "navistore_peer_records_behind",
            "Local seqs the peer has not acknowledged.",
            labels=["peer"],
        )
        since_ack = GaugeMetricFamily(
            "navistore_peer_seconds_since_ack",
            "Seconds since the peer last acknowledged a batch (absent: not since start).",
            labels=["peer"],
        )
        state = GaugeMetricFamily(
            "navistore_peer_state",
            "The pusher's state (1 for the current one).",
            labels=["peer", "state"],
        )
        errors = CounterMetricFamily(
            "navistore_peer_errors", "Exchanges with the peer that failed.", labels=["peer"]
        )
        for pusher in shown:
            url = pusher.url
            cursor.add_metric([url], pusher.cursor)
            behind.add_metric([url], pusher.lag_changes)
            seconds = pusher.seconds_since_success()
            if seconds is not None:
                since_ack.add_metric([url], seconds)
            for name in sorted({*_PUSH_STATES, pusher.state}):
                state.add_metric([url, name], 1 if name == pusher.state else 0)
            errors.add_metric([url], pusher.errors)
        yield from (cursor, behind, since_ack, state, errors)
        status = replication.clone_status()
        puller = replication.puller
        if status is None or puller is None:
            return
        source = [puller.url]
        pulled = CounterMetricFamily(
            "navistore_clone_records_pulled",
            "Records pulled from the clone source.",
            labels=["source"],
        )
        pulled.add_metric(source, puller.pulled)
        caught_up = GaugeMetricFamily(
            "navistore_clone_caught_up",
            "1 once the clone has had everything its source had, at least once.",
            labels=["source"],
        )
        caught_up.add_metric(source, 1 if puller.caught_up_once else 0)
        pull_state = GaugeMetricFamily(
            "navistore_clone_state",
            "The clone's state (1 for the current one).",
            labels=["source", "state"],
        )
        for name in sorted({*_PULL_STATES, puller.state}):
            pull_state.add_metric([puller.url, name], 1 if name == puller.state else 0)
        pull_errors = CounterMetricFamily(
            "navistore_clone_errors", "Pulls from the clone source that failed.", labels=["source"]
        )
        pull_errors.add_metric(source, puller.errors)
        yield from (pulled, caught_up, pull_state, pull_errors)

    @staticmethod
    def _replicas(replicas: ReplicaTracker) -> Iterator[Metric]:
        yield _counter(
            "navistore_replicated_write_waits",
            "Writes that asked to wait for peers (?replicas=).",
            replicas.waits,
        )
        yield _counter(
            "navistore_replicated_write_timeouts",
            "Writes whose wait for peers ended at its timeout (answered 504).",
            replicas.timeouts,
        )
        yield _gauge(
            "navistore_replicated_writes_waiting",
            "Writes waiting for peers now.",
            replicas.waiting,
        )

    def _upstream(self, cache: UpstreamCache) -> Iterator[Metric]:
        since = cache.seconds_since_contact()
        if since is not None:
            yield _gauge(
                "navistore_upstream_seconds_since_contact",
                "Seconds since this cache node's copies were last brought in step with its "
                "upstream (absent: not since start).",
                since,
            )
        yield _counter(
            "navistore_upstream_errors",
            "Looks at the upstream's feed that failed.",
            cache.errors,
        )
        state = GaugeMetricFamily(
            "navistore_upstream_state",
            "The cache node's follower state (1 for the current one).",
            labels=["state"],
        )
        for name in sorted({*_UPSTREAM_STATES, cache.state}):
            state.add_metric([name], 1 if name == cache.state else 0)
        yield state

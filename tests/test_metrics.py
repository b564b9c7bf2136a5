"""``/_metrics``: a real scrape of real ``twistd navistore`` processes after real traffic.

The scrape must pass ``promtool check metrics`` (Debian's ``prometheus`` package; CI installs
it) and its figures must be what happened: the writes made, the peer that acknowledged them and
the one that is down, the watcher being served. The ``metrics`` permission lets a scraper in
without ``admin``; the unit tests below check the figures the hot paths count.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from support.processes import REQUEST_TIMEOUT, Server, running, stop_process, twistd, wait_until

from navistore.backend.memory import MemoryBackend
from navistore.clock import Stamp
from navistore.record import Record
from navistore.store import Conflict, PreconditionFailed, Store
from navistore.tally import Histogram, RequestCounts
from navistore.tokens import Caller
from navistore.web.access import need_of

PROMTOOL = shutil.which("promtool")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str):
    """One sample's value (KeyError naming it if absent)."""
    return scraped[name, tuple(sorted(labels.items()))]


def scrape(server: Server, headers: dict[str, str] | None = None) -> str:
    status, body, response = server.request("GET", "/_metrics", headers=headers)
    assert status == 200, body
    assert response.getheader("Content-Type") == CONTENT_TYPE
    return body.decode("utf-8")


def node_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def event_stream() -> Iterator[list[http.client.HTTPConnection]]:
    """Connections holding event streams open; closed at the end."""
    opened: list[http.client.HTTPConnection] = []
    yield opened
    for connection in opened:
        connection.close()


@pytest.mark.e2e
def test_a_real_scrape_passes_promtool_and_its_figures_are_what_happened(
    tmp_path: Path, event_stream: list[http.client.HTTPConnection]
) -> None:
    """After 3 PUTs, a DELETE, a refused conditional PUT and a GET on node A, with an event
    stream open and two peers (B, which acknowledges, and one that is down), A's scrape passes
    ``promtool check metrics`` and says so: 3 puts, 1 delete, 1 precondition failure, 2 live keys
    and 1 tombstone, B 0 records behind and the dead peer all 4 seqs behind, one event-stream
    watcher, the requests by route family, method and status, and process metrics. B counts
    the records it received."""
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    with running(twistd("sqlite:dead.db"), node_dir(tmp_path, "dead")) as dead:
        dead.wait_listening()
        dead_url = f"http://127.0.0.1:{dead.port}"
        stop_process(dead.process)
    with running(twistd("sqlite:b.db"), node_dir(tmp_path, "b")) as b:
        b.wait_listening()
        b_url = f"http://127.0.0.1:{b.port}"
        command = [*twistd("sqlite:a.db"), "--peer", b_url, "--peer", dead_url]
        with running(command, node_dir(tmp_path, "a")) as a:
            a.wait_listening()
            stream = http.client.HTTPConnection("127.0.0.1", a.port, timeout=REQUEST_TIMEOUT)
            event_stream.append(stream)
            stream.request("GET", "/_changes?feed=eventsource&since=0")
            assert stream.getresponse().status == 200
            for key in ("one", "two", "three"):
                assert a.request("PUT", f"/{key}", b"value")[0] == 201
            assert a.request("DELETE", "/one")[0] == 200
            refused = a.request("PUT", "/two", b"x", headers={"If-Match": '"nope"'})
            assert refused[0] == 412
            assert a.request("GET", "/two")[0] == 200

            def b_acknowledged() -> bool:
                _status, body, _ = a.request("GET", "/_peers")
                peers = {peer["url"]: peer for peer in json.loads(body)}
                b_done = peers[b_url]["lag_changes"] == 0 and peers[b_url]["cursor"] == 4
                return b_done and peers[dead_url]["failures"] >= 1

            wait_until(b_acknowledged, "B to acknowledge every change, and a try of the dead peer")
            text = scrape(a)
            checked = subprocess.run(
                [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr
            assert checked.stdout + checked.stderr == ""  # not even a lint warning

            scraped = samples(text)
            assert value(scraped, "navistore_store_puts_total") == 3
            assert value(scraped, "navistore_store_deletes_total") == 1
            failures = "navistore_store_conditional_failures_total"
            assert value(scraped, failures, reason="precondition") == 1
            assert value(scraped, failures, reason="conflict") == 0
            assert value(scraped, "navistore_store_reads_total") >= 1
            assert value(scraped, "navistore_backend_live_keys") == 2
            assert value(scraped, "navistore_backend_tombstones") == 1
            assert value(scraped, "navistore_backend_database_bytes") > 0
            assert value(scraped, "navistore_backend_commit_batch_records_count") >= 4
            assert value(scraped, "navistore_backend_errors_total") == 0
            assert value(scraped, "navistore_peers") == 2
            assert value(scraped, "navistore_peer_records_behind", peer=b_url) == 0
            assert value(scraped, "navistore_peer_records_behind", peer=dead_url) == 4
            assert value(scraped, "navistore_peer_cursor", peer=b_url) == 4
            assert value(scraped, "navistore_peer_cursor", peer=dead_url) == 0
            dead_states = {
                labels[1][1]: found
                for (name, labels), found in scraped.items()
                if name == "navistore_peer_state" and labels[0] == ("peer", dead_url)
            }
            assert sum(dead_states.values()) == 1
            assert dead_states["backoff"] + dead_states["sending"] == 1
            assert value(scraped, "navistore_peer_errors_total", peer=dead_url) >= 1
            assert value(scraped, "navistore_peer_seconds_since_ack", peer=b_url) >= 0
            assert ("navistore_peer_seconds_since_ack", (("peer", dead_url),)) not in scraped
            assert value(scraped, "navistore_watchers", kind="eventsource") == 1
            assert value(scraped, "navistore_watchers", kind="longpoll") == 0
            assert value(scraped, "navistore_watch_wakeups_total") >= 1
            requests = "navistore_http_requests_total"
            assert value(scraped, requests, family="key", method="PUT", status="201") == 3
            assert value(scraped, requests, family="key", method="PUT", status="412") == 1
            assert value(scraped, requests, family="key", method="DELETE", status="200") == 1
            latency = "navistore_http_request_duration_seconds_count"
            assert value(scraped, latency, family="key", method="PUT") == 4
            assert value(scraped, "navistore_replicated_write_waits_total") == 0
            assert value(scraped, "process_resident_memory_bytes") > 0
            assert value(scraped, "process_cpu_seconds_total") > 0

            b_scraped = samples(scrape(b))
            assert 3 <= value(b_scraped, "navistore_store_received_total") <= 4
            assert value(b_scraped, "navistore_store_lww_losses_total") == 0
            assert value(b_scraped, "navistore_store_puts_total") == 0


TOKENS = """
[[token]]
name = "scraper"
secret = "scraper-secret-0123456789"
allow = ["metrics"]

[[token]]
name = "reader"
secret = "reader-secret-0123456789"
allow = ["read"]

[[token]]
name = "operator"
secret = "operator-secret-0123456789"
allow = ["admin"]
"""


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.e2e
def test_the_metrics_permission_lets_a_scraper_in_and_nothing_more(tmp_path: Path) -> None:
    """A token allowed only ``metrics`` scrapes ``/_metrics`` but reads no key; ``admin``
    scrapes too; ``read`` does not; ``--anonymous metrics`` lets a scrape without a token in;
    ``/_ready`` needs nothing."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS, encoding="utf-8")
    command = [*twistd("sqlite:node.db"), "--tokens", str(tokens), "--anonymous", "metrics"]
    with running(command, tmp_path) as node:
        node.wait_listening()
        scrape(node, bearer("scraper-secret-0123456789"))
        scrape(node, bearer("operator-secret-0123456789"))
        scrape(node)  # anonymous, allowed metrics
        status, body, _ = node.request(
            "GET", "/_metrics", headers=bearer("reader-secret-0123456789")
        )
        assert status == 403, body
        assert json.loads(body)["error"] == "forbidden"
        status, body, _ = node.request("GET", "/key", headers=bearer("scraper-secret-0123456789"))
        assert status == 403, body
        status, body, _ = node.request("GET", "/_ready")
        assert status == 200, body


def test_metrics_needs_its_permission_which_admin_grants() -> None:
    """``/_metrics`` needs ``metrics``; a caller with ``admin`` holds it, one with read and
    write does not; an all-powerful token stays unrestricted (the fast path's check)."""
    assert need_of(b"GET", "_metrics", endpoint="_metrics", prefix=False, recursive=False) == (
        need_of(b"HEAD", "_metrics", endpoint="_metrics", prefix=False, recursive=False)
    )
    need = need_of(b"GET", "_metrics", endpoint="_metrics", prefix=False, recursive=False)
    assert need.permission == "metrics"
    assert (
        need_of(b"GET", "_ready", endpoint="_ready", prefix=False, recursive=False).permission
        is None
    )
    assert Caller("operator", frozenset({"admin"})).may("metrics")
    assert Caller("scraper", frozenset({"metrics"})).may("metrics")
    assert not Caller("client", frozenset({"read", "write"})).may("metrics")
    assert not Caller("scraper", frozenset({"metrics"})).may("admin")
    assert Caller("root", frozenset({"read", "write", "admin", "peer"})).unrestricted


def test_a_histogram_counts_by_upper_bound_as_prometheus_does() -> None:
    """An observation equal to a bound counts in that bound's bucket (``le``); the buckets
    are cumulative and end with ``+Inf``; the sum adds up."""
    histogram = Histogram((0.1, 1.0))
    for observed in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(observed)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(8.65)
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))


def test_requests_are_counted_with_few_labels() -> None:
    """Requests count by family, method and status; a method outside the known few counts as
    OTHER, so a client cannot make new series at will."""
    counts = RequestCounts()
    counts.finished("key", b"GET", 200, 0.001)
    counts.finished("key", b"GET", 200, 0.002)
    counts.finished("key", b"BREW", 405, 0.001)
    assert counts.counts == {("key", b"GET", 200): 2, ("key", b"OTHER", 405): 1}
    assert counts.latency["key", b"GET"].count == 2


OTHER_NODE = "00000000000000b0"


@pytest_twisted.ensureDeferred
async def test_the_store_counts_reads_writes_refusals_and_what_it_receives() -> None:
    """Reads count once per answer (a peek that misses is followed by a get, which counts);
    puts and deletes count what this node wrote; 412 and 409 count apart; a received record
    counts as stored, as a last-writer-wins loss when the stored one is newer, or as a
    duplicate when it is the same."""
    store = await Store.open(MemoryBackend())
    counters = store.counters
    await store.put("/a", b"1")
    written = store.put_now("/b", b"2")
    assert written is not None
    await written
    assert counters.puts == 2 and counters.reads == 0  # a write's own look is no read
    assert store.peek("/a") is not None
    assert store.peek("/missing") is None
    assert await store.get("/missing") is None
    assert counters.reads == 2
    with pytest.raises(PreconditionFailed):
        await store.put("/a", b"x", if_none_match=True)
    with pytest.raises(Conflict):
        await store.put("/a", b"x", create_only=True)
    await store.delete("/b")
    assert (counters.precondition_failures, counters.conflicts, counters.deletes) == (1, 1, 1)

    stored = await store.get("/a")
    assert stored is not None
    older = Record("/a", b"old", "text/plain", Stamp(stored.stamp.wall_ms - 1000, 0, OTHER_NODE))
    newer = Record("/c", b"new", "text/plain", Stamp(stored.stamp.wall_ms + 1, 0, OTHER_NODE))
    await store.apply_remote_batch([older, newer])
    await store.apply_remote(newer)  # already held
    assert (counters.received, counters.lww_losses, counters.duplicates) == (1, 1, 1)
    assert counters.puts == 2  # received records are not this node's writes

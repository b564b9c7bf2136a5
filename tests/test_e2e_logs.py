"""End to end: what a node logs (``--access-log``, ``--log-format``, start lines, quiet links).

Real ``twistd navistore`` processes on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support.processes import running, twistd, wait_until

pytestmark = pytest.mark.e2e

#: Twisted's combined log format: "ip" - - [date] "METHOD uri proto" status bytes "ref" "agent".
COMBINED = re.compile(
    r'^"127\.0\.0\.1" - - \[[^\]]+\] "(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/1\.1" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-) "[^"]*" "[^"]*"$'
)


def test_access_log_in_combined_format(tmp_path: Path) -> None:
    """``--access-log FILE`` writes one combined-format line per request, a refused body
    (413) included, with a ``token=`` query value blanked out."""
    command = [*twistd("memory:"), "--access-log", "access.log", "--max-value-size", "10"]
    with running(command, tmp_path) as server:
        server.wait_listening()
        server.request("PUT", "/a", b"1234")
        server.request("GET", "/a?token=sekrit-value-here")
        server.request("PUT", "/b", b"x" * 11)
        server.request("GET", "/missing")
        log = tmp_path / "access.log"
        wait_until(lambda: len(log.read_text().splitlines()) >= 5, "five access-log lines")
    lines = (tmp_path / "access.log").read_text().splitlines()
    parsed = [COMBINED.match(line) for line in lines]
    assert all(parsed), lines
    seen = [(m["method"], m["uri"], m["status"]) for m in parsed if m is not None]
    assert seen[1:] == [
        ("PUT", "/a", "201"),
        ("GET", "/a?token=***", "200"),
        ("PUT", "/b", "413"),
        ("GET", "/missing", "404"),
    ]
    assert "sekrit" not in "\n".join(lines)


def test_json_logs_on_standard_output(tmp_path: Path) -> None:
    """``--access-log - --log-format json``: the node's own log and the access log are JSON
    lines on standard output, the access lines carrying the request's fields."""
    command = [*twistd("memory:"), "--access-log", "-", "--log-format", "json"]
    with running(command, tmp_path) as server:
        server.wait_listening()
        server.request("PUT", "/k", b"v", headers={"User-Agent": "probe/1"})
        wait_until(lambda: '"path":"/k"' in server.output(), "the access line of the PUT")
    documents = [json.loads(line) for line in server.output().splitlines() if line.strip()]
    node_lines = [d for d in documents if "level" in d]
    access_lines = [d for d in documents if "status" in d]
    assert any("ready" in d["message"] and d["namespace"] == "navistore.daemon" for d in node_lines)
    put = next(d for d in access_lines if d["path"] == "/k")
    assert put["method"] == "PUT" and put["status"] == 201 and put["remote"] == "127.0.0.1"
    assert put["user_agent"] == "probe/1" and put["caller"] == "protected"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", put["time"])


def test_links_do_not_log_every_connection_and_the_collector_says_its_schedule(
    tmp_path: Path,
) -> None:
    """A cache node reading through its upstream logs no ``Starting factory`` line per
    connection (18 of 30 lines were those), and a node says when its tombstone collector
    runs, as ``--tombstone-gc-interval`` set it."""
    upstream_dir, cache_dir = tmp_path / "upstream", tmp_path / "cache"
    upstream_dir.mkdir()
    cache_dir.mkdir()
    upstream_command = [*twistd("memory:"), "--tombstone-gc-interval", "30"]
    with running(upstream_command, upstream_dir) as upstream:
        upstream.wait_listening()
        url = f"http://127.0.0.1:{upstream.port}"
        for number in range(5):
            assert upstream.request("PUT", f"/cfg/{number}", b"v")[0] == 201
        with running([*twistd("memory:"), "--upstream", url], cache_dir) as cache:
            cache.wait_listening()
            for number in range(5):
                assert cache.request("GET", f"/cfg/{number}")[0] == 200
            assert cache.request("PUT", "/cfg/new", b"w")[0] == 201
            cache_log = cache.output()
    assert "Starting factory" not in cache_log
    assert "Stopping factory" not in cache_log
    assert "Tombstone collector: first run in 30 s, then every 30 s" in upstream.output()
    assert "Tombstone collector: first run in 60 s, then every 3600 s" in cache_log

"""Navistore at scale: bulk-load N keys (default 1,000,000), then GETs, memory and listings.

The questions (from the scale issue): does a node holding a million keys answer GETs within 10 %
of one holding 10,000, stay under 300 MB of RSS, and list every key with bounded memory? One run
answers them, on 127.0.0.1 only:

1. starts two ``twistd -n navistore`` processes on sqlite (``synchronous=normal``), each on a
   loopback port the kernel picks (read back from the node's log): *big* and *small*;
2. bulk-loads N keys ``/scale/k<i>`` with 100-byte values into big through ``POST /_bulk``
   (``--batch`` entries per request over ``--loaders`` keep-alive connections), timed, and
   10,000 into small the same way;
3. reads both nodes' ``VmRSS``, ``VmHWM``, ``RssAnon`` and ``RssFile`` from ``/proc/PID/status``;
4. drives GETs of random keys (over all N, and over all 10,000) with wrk, big and small
   interleaved round by round (the machine is shared: noise must hit both alike), and reports
   medians and their ratio;
5. streams ``GET /listkeys`` (all N keys) and pages through ``GET /scale/?limit=10000&after=``,
   timing each and sampling big's VmRSS every 50 ms meanwhile (VmHWM is a high-water mark
   since the process started, so it cannot show a listing's own peak once loading has set it).

It prints a table, optionally writes JSON (``--json``), and stops every process it started, by
PID, whatever happens. Every phase has a deadline.

Usage: ``python bench/bench_scale.py [--keys 1000000] [--json out.json]`` (needs ``wrk``:
``apt-get install wrk``). ``--record-cache-size 0`` runs both nodes without their record cache:
with it, the small node reads every key from memory and the big one mostly from the file.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from suite_servers import loopback_request as request
from suite_servers import navistore_command

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
LISTENING = re.compile(r"Navistore listening on tcp:127\.0\.0\.1:(\d+)")
VALUE_BYTES = 100
SMALL_KEYS = 10_000
#: The issue's targets.
GET_RATIO_TARGET = 0.90
RSS_TARGET_MB = 300.0
#: A listing counts as bounded when big's RSS grows by less than this while it runs.
LISTING_GROWTH_LIMIT_MB = 32.0

GET_SCRIPT = """
math.randomseed(os.time() + %(seed)d)
request = function()
  return wrk.format("GET", "/scale/k" .. math.random(0, %(keys)d - 1))
end
"""


# -- processes ------------------------------------------------------------------------------------


class Node:
    """One ``twistd -n navistore`` process started by this script, and where it listens."""

    def __init__(
        self, name: str, workdir: Path, backend: str, options: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        command = navistore_command(sys.executable, "tcp:0:interface=127.0.0.1", backend)
        command += options
        # The checkout's navistore (and its twisted plugin) comes first, installed or not.
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=workdir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.process.pid
        self.port = 0

    def wait_ready(self, deadline: float = 60.0) -> None:
        """Read the port from the log, then wait for ``/_health`` to answer 200."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_path.read_text()}")
            found = LISTENING.search(self.log_path.read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                try:
                    status, _ = request(self.port, "GET", "/_health", timeout=2)
                    if status == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} was not ready within {deadline} s")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM this process (by its PID), then SIGKILL it if it is still there."""
        if self.process.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(timeout)


def status_kb(pid: int) -> dict[str, int]:
    """The memory lines of ``/proc/PID/status`` in kB (VmRSS, VmHWM, RssAnon, RssFile)."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            figures[name] = int(rest.split()[0])
    return figures


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mb(kb: float) -> float:
    return kb / 1024.0


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread, while in a ``with``."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(status_kb(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.samples.append(status_kb(self.pid)["VmRSS"])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(status_kb(self.pid)["VmRSS"])

    @property
    def before_kb(self) -> int:
        return self.samples[0]

    @property
    def peak_kb(self) -> int:
        return max(self.samples)


# -- HTTP -----------------------------------------------------------------------------------------


def batch_body(start: int, stop: int) -> bytes:
    """The ``/_bulk`` body for keys ``start`` to ``stop - 1``: distinct 100-byte values."""
    entries = [
        {"key": f"/scale/k{index}", "value": f"{index:012d}".ljust(VALUE_BYTES, "v")}
        for index in range(start, stop)
    ]
    return json.dumps(entries, separators=(",", ":")).encode()


def bulk_load(port: int, keys: int, batch: int, loaders: int, deadline: float) -> dict[str, Any]:
    """Load ``keys`` keys through ``POST /_bulk`` over ``loaders`` keep-alive connections."""
    starts = iter(range(0, keys, batch))
    lock = threading.Lock()
    loaded = [0]
    errors: list[str] = []

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            while not errors:
                with lock:
                    start = next(starts, None)
                if start is None:
                    return
                if time.monotonic() > deadline:
                    errors.append("the load ran past its deadline")
                    return
                stop = min(start + batch, keys)
                connection.request("POST", "/_bulk", body=batch_body(start, stop))
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200 or json.loads(answer)["written"] != stop - start:
                    errors.append(f"batch at {start}: {response.status} {answer[:200]!r}")
                    return
                with lock:
                    loaded[0] += stop - start
        finally:
            connection.close()

    began = time.monotonic()
    with ThreadPoolExecutor(loaders) as pool:
        running = [pool.submit(worker) for _ in range(loaders)]
        reported = began
        while not all(each.done() for each in running):
            time.sleep(0.2)
            if time.monotonic() - reported > 10:
                reported = time.monotonic()
                rate = loaded[0] / (reported - began)
                print(f"  loaded {loaded[0]:,} keys ({rate:,.0f} keys/s)", file=sys.stderr)
        for each in running:
            each.result()
    seconds = time.monotonic() - began
    if errors:
        raise RuntimeError(f"bulk load failed: {errors[0]}")
    return {"keys": loaded[0], "seconds": seconds, "keys_per_s": loaded[0] / seconds}


def run_wrk(port: int, script: Path, seconds: int, connections: int) -> dict[str, float]:
    """One wrk run; requests per second, latency percentiles and errors."""
    output = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if found is None or total is None:
        raise RuntimeError(f"no rate in wrk's output:\n{output}")

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match is None:
            return float("nan")
        return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]

    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors += sum(int(part) for part in sockets.groups())
    return {
        "rps": float(found.group(1)),
        "requests": int(total.group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": errors,
    }


def stream_listkeys(port: int) -> dict[str, Any]:
    """``GET /listkeys`` read as it streams; its size, key count and duration."""
    began = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("GET", "/listkeys")
        response = connection.getresponse()
        parts = []
        while True:
            part = response.read(1 << 16)
            if not part:
                break
            parts.append(part)
    finally:
        connection.close()
    seconds = time.monotonic() - began
    body = b"".join(parts)
    if response.status != 200:
        raise RuntimeError(f"/listkeys answered {response.status}: {body[:200]!r}")
    return {"keys": len(json.loads(body)), "bytes": len(body), "seconds": seconds}


def page_through(port: int, page: int, deadline: float) -> dict[str, Any]:
    """``GET /scale/?limit=page&after=...`` until the last page; keys, pages, duration."""
    began = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    keys = pages = 0
    after = ""
    try:
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError("paging ran past its deadline")
            connection.request("GET", f"/scale/?limit={page}&after={after}")
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"page {pages} answered {response.status}: {body[:200]!r}")
            document = json.loads(body)
            keys += len(document["keys"])
            pages += 1
            if document["next"] is None:
                break
            after = document["next"]
    finally:
        connection.close()
    return {"keys": keys, "pages": pages, "seconds": time.monotonic() - began}


# -- the run --------------------------------------------------------------------------------------


def memory_report(node: Node) -> dict[str, float]:
    return {name.lower() + "_mb": mb(kb) for name, kb in status_kb(node.pid).items()}


def database_mb(workdir: Path, name: str) -> float:
    files = [workdir / f"{name}.db", workdir / f"{name}.db-wal"]
    return mb(sum(path.stat().st_size for path in files if path.exists()) / 1024)


@contextmanager
def nodes_running(
    workdir: Path, names: list[str], options: tuple[str, ...] = ()
) -> Iterator[dict[str, Node]]:
    """Start one sqlite node per name, each with ``options`` more on its command line; stop
    every one of them (by PID) at the end."""
    started: dict[str, Node] = {}
    try:
        for name in names:
            started[name] = Node(name, workdir, f"sqlite:///{workdir}/{name}.db", options)
        for node in started.values():
            node.wait_ready()
        yield started
    finally:
        for node in started.values():
            try:
                node.stop()
            except Exception as error:  # keep stopping the others
                print(f"stopping {node.name} (pid {node.pid}) failed: {error}", file=sys.stderr)


def run(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    deadline = time.monotonic() + options.deadline
    results: dict[str, Any] = {
        "keys": options.keys,
        "small_keys": SMALL_KEYS,
        "python": f"{sys.implementation.name} {sys.version.split()[0]}",
        "batch": options.batch,
        "loaders": options.loaders,
        "record_cache_size": options.record_cache_size,
    }
    extra = (
        ()
        if options.record_cache_size is None
        else ("--record-cache-size", options.record_cache_size)
    )
    with nodes_running(workdir, ["big", "small"], extra) as nodes:
        big, small = nodes["big"], nodes["small"]
        results["start_rss"] = {name: memory_report(node) for name, node in nodes.items()}
        print(f"loading {SMALL_KEYS:,} keys into small", file=sys.stderr)
        bulk_load(small.port, SMALL_KEYS, options.batch, options.loaders, deadline)
        print(f"loading {options.keys:,} keys into big", file=sys.stderr)
        cpu_before, client_before = cpu_seconds(big.pid), time.process_time()
        with RssSampler(big.pid, 0.25) as sampler:
            load = bulk_load(big.port, options.keys, options.batch, options.loaders, deadline)
        load["server_cpu_s"] = cpu_seconds(big.pid) - cpu_before
        load["client_cpu_s"] = time.process_time() - client_before  # is the loader the limit?
        load["peak_rss_mb"] = mb(sampler.peak_kb)
        results["load"] = load
        time.sleep(1.0)  # let the last checkpoint run
        results["after_load"] = {name: memory_report(node) for name, node in nodes.items()}
        results["database_mb"] = {name: database_mb(workdir, name) for name in nodes}

        scripts = {}
        for seed, (name, keys) in enumerate(((big.name, options.keys), (small.name, SMALL_KEYS))):
            scripts[name] = workdir / f"get_{name}.lua"
            scripts[name].write_text(GET_SCRIPT % {"keys": keys, "seed": seed})
        for name, node in nodes.items():
            status, _ = request(node.port, "GET", "/scale/k0")
            if status != 200:
                raise RuntimeError(f"{name}: GET /scale/k0 answered {status}")
        runs: dict[str, list[dict[str, float]]] = {"big": [], "small": []}
        for round_number in range(options.rounds):
            order = ["big", "small"] if round_number % 2 == 0 else ["small", "big"]
            for name in order:
                if time.monotonic() > deadline:
                    raise RuntimeError("the GET rounds ran past the deadline")
                cpu_before = cpu_seconds(nodes[name].pid)
                with RssSampler(nodes[name].pid) as sampler:
                    figures = run_wrk(
                        nodes[name].port, scripts[name], options.seconds, options.connections
                    )
                figures["peak_rss_mb"] = mb(sampler.peak_kb)
                # CPU time per request does not depend on how much CPU the machine had to spare.
                used = cpu_seconds(nodes[name].pid) - cpu_before
                figures["cpu_us_per_request"] = used / max(figures["requests"], 1) * 1e6
                runs[name].append(figures)
                print(
                    f"  round {round_number + 1} GET {name:5} {figures['rps']:9.0f} req/s",
                    file=sys.stderr,
                )
        medians = {
            name: {
                field: statistics.median(run[field] for run in runs[name])
                for field in ("rps", "cpu_us_per_request", "p50_ms", "p99_ms", "peak_rss_mb")
            }
            for name in runs
        }
        for name in runs:
            medians[name]["errors"] = sum(run["errors"] for run in runs[name])
        results["get"] = {
            "runs": runs,
            "medians": medians,
            "ratio": medians["big"]["rps"] / medians["small"]["rps"],
            "cpu_ratio": medians["small"]["cpu_us_per_request"]
            / medians["big"]["cpu_us_per_request"],
        }

        print("streaming /listkeys", file=sys.stderr)
        hwm_before = status_kb(big.pid)["VmHWM"]
        with RssSampler(big.pid) as sampler:
            listing = stream_listkeys(big.port)
        listing.update(
            rss_before_mb=mb(sampler.before_kb),
            peak_rss_mb=mb(sampler.peak_kb),
            growth_mb=mb(sampler.peak_kb - sampler.before_kb),
            hwm_before_mb=mb(hwm_before),
            hwm_after_mb=mb(status_kb(big.pid)["VmHWM"]),
        )
        results["listkeys"] = listing
        print(f"paging /scale/ by {options.page:,}", file=sys.stderr)
        with RssSampler(big.pid) as sampler:
            paged = page_through(big.port, options.page, deadline)
        paged.update(
            rss_before_mb=mb(sampler.before_kb),
            peak_rss_mb=mb(sampler.peak_kb),
            growth_mb=mb(sampler.peak_kb - sampler.before_kb),
            hwm_after_mb=mb(status_kb(big.pid)["VmHWM"]),
        )
        results["paged"] = paged
        results["end_rss"] = {name: memory_report(node) for name, node in nodes.items()}
    return results


def verdicts(results: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets, each met or not."""
    keys = results["keys"]
    return {
        "GET at N within 10 % of 10k": results["get"]["ratio"] >= GET_RATIO_TARGET,
        "RSS after load < 300 MB": results["after_load"]["big"]["vmrss_mb"] < RSS_TARGET_MB,
        "/listkeys complete, bounded": results["listkeys"]["keys"] == keys
        and results["listkeys"]["growth_mb"] < LISTING_GROWTH_LIMIT_MB,
        "paged listing complete, bounded": results["paged"]["keys"] == keys
        and results["paged"]["growth_mb"] < LISTING_GROWTH_LIMIT_MB,
    }


def report(results: dict[str, Any], options: argparse.Namespace) -> None:
    load = results["load"]
    get = results["get"]["medians"]
    big, small = results["after_load"]["big"], results["after_load"]["small"]
    print(
        f"\nNavistore on sqlite (synchronous=normal), {results['keys']:,} keys of "
        f"{VALUE_BYTES} bytes, {results['python']}, 127.0.0.1, record cache "
        f"{results['record_cache_size'] or 'default'}\n"
    )
    print(
        f"bulk load   {load['keys']:,} keys in {load['seconds']:.1f} s = "
        f"{load['keys_per_s']:,.0f} keys/s ({options.batch:,} per request, {options.loaders} "
        f"connections; CPU: server {load['server_cpu_s']:.1f} s, loader "
        f"{load['client_cpu_s']:.1f} s)"
    )
    print(
        f"database    big {results['database_mb']['big']:.0f} MB, "
        f"small {results['database_mb']['small']:.1f} MB\n"
    )
    print(f"{'memory after load':22} {'VmRSS':>8} {'VmHWM':>8} {'RssAnon':>8} {'RssFile':>8}")
    for name, figures in (("big", big), ("small", small)):
        print(
            f"{name:22} {figures['vmrss_mb']:7.1f}M {figures['vmhwm_mb']:7.1f}M "
            f"{figures['rssanon_mb']:7.1f}M {figures['rssfile_mb']:7.1f}M"
        )
    print(
        f"\nGET, wrk {options.connections} connections, {options.rounds} interleaved rounds of "
        f"{options.seconds} s, medians"
    )
    print(
        f"{'node':22} {'req/s':>9} {'CPU us/req':>10} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'peak RSS':>9}"
    )
    for name, label in (("big", f"big ({results['keys']:,})"), ("small", "small (10,000)")):
        row = get[name]
        print(
            f"{label:22} {row['rps']:9.0f} {row['cpu_us_per_request']:10.1f} "
            f"{row['p50_ms']:7.2f} {row['p99_ms']:7.2f} {row['errors']:6.0f} "
            f"{row['peak_rss_mb']:8.1f}M"
        )
    print(
        f"{'ratio big/small':22} {results['get']['ratio']:9.3f} "
        f"{results['get']['cpu_ratio']:10.3f}  (req/s; and small's CPU per request / big's)\n"
    )
    print(
        f"{'listing (big)':22} {'keys':>9} {'seconds':>8} {'RSS before':>10} {'peak':>8} "
        f"{'growth':>7}"
    )
    for name, label in (("listkeys", "GET /listkeys"), ("paged", "GET /scale/ paged")):
        row = results[name]
        print(
            f"{label:22} {row['keys']:9,} {row['seconds']:8.1f} {row['rss_before_mb']:9.1f}M "
            f"{row['peak_rss_mb']:7.1f}M {row['growth_mb']:6.1f}M"
        )
    print()
    for target, met in results["verdicts"].items():
        print(f"{'PASS' if met else 'FAIL'}  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=2000, help="entries per /_bulk request")
    parser.add_argument("--loaders", type=int, default=4, help="concurrent load connections")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--page", type=int, default=10_000, help="keys per listing page")
    parser.add_argument("--deadline", type=float, default=3600.0, help="seconds for the run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the databases and logs")
    parser.add_argument(
        "--record-cache-size",
        help="the nodes' --record-cache-size (default: theirs); 0 compares sqlite reads alone",
    )
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp(prefix="navistore-scale-"))
    try:
        results = run(options, workdir)
    finally:
        if options.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["verdicts"] = verdicts(results)
    report(results, options)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Navistore's HTTP benchmark suite, in one command: ``python3 bench/run.py`` (or ``bench/run``).

From a clean clone on a machine with only Python 3.9+ (root, apt and PyPI reachable) it:

1. installs wrk, etcd-server and pypy3 with apt when missing (etcd and PyPy are optional: their
   rows are skipped with a note when they cannot be had), and makes or reuses the venvs
   ``bench/.venv-cpython`` (Navistore + matplotlib) and ``bench/.venv-pypy`` (Navistore);
2. starts on 127.0.0.1, each on a free port: the bare twisted.web resource, Navistore on sqlite
   ``synchronous=normal`` and ``synchronous=full`` and on ``memory:``, a single etcd node with the
   v2 API, and with PyPy the bare resource and Navistore on sqlite normal again;
3. loads 10,000 keys per value size into each (wrk with a sequential-keys script);
4. drives them with wrk, interleaved: for each round and each (operation, value size, connections)
   every server runs once, one after another, so that machine noise hits all of them alike; each
   (server, operation) gets an unrecorded warm-up first, whose p99 is kept as "cold p99" for PyPy,
   whose JIT is still cold then (though its PUT path has already served the loading PUTs);
5. prints medians, errors and ratios to the bare resource and to etcd, writes them with the raw
   runs and the machine's description as JSON, and draws a PNG chart.

Every process it starts is stopped by its PID at the end, also on Ctrl-C or SIGTERM, and a total
deadline (``--max-minutes``) bounds the measuring. ``--quick`` is a one-minute smoke run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import suite_provision as provision
import suite_report as report
import suite_servers as servers
import suite_wrk as wrk

HERE = Path(__file__).resolve().parent
OPERATIONS = ("GET", "PUT")


class DeadlineReached(Exception):
    """The total time allowed for measuring is up; report what there is."""


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--seconds", type=float, default=5, help="seconds per wrk run (5)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round, 2 s, 32 connections, 100 B"
    )
    parser.add_argument("--json", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--chart", type=Path, default=HERE / "results" / "throughput.png")
    parser.add_argument(
        "--max-minutes", type=float, default=20, help="stop measuring after this (20)"
    )
    parser.add_argument("--no-pypy", action="store_true", help="leave out the PyPy servers")
    parser.add_argument("--no-etcd", action="store_true", help="leave out etcd")
    options = parser.parse_args(argv)
    options.sizes = [100, 1024]
    options.connections = [32, 256]
    options.warmup = 2.0
    if options.quick:
        options.rounds, options.seconds, options.warmup = 1, 2.0, 1.0
        options.sizes, options.connections = [100], [32]
    return options


def log(message: str) -> None:
    """Progress goes to stderr, so that stdout carries only the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Suite:
    """One run of the suite: what it installed, started and measured, and its notes."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.started = time.monotonic()
        self.deadline = self.started + options.max_minutes * 60
        self.installer = provision.Installer(log)
        self.notes = self.installer.notes
        self.workdir = provision.scratch_directory()
        self.script = wrk.write_script(self.workdir)
        self.pythons: dict[str, Path] = {}
        self.runtimes: dict[str, dict[str, Any]] = {}
        self.etcd_version: str | None = None
        self.servers: list[servers.Server] = []
        self.runs: list[dict[str, Any]] = []
        self.cold: list[dict[str, Any]] = []
        self.loading: dict[str, dict[int, float]] = {}
        self.completed = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def provision(self) -> None:
        """Install tools and venvs; PyPy or etcd trouble costs only their rows."""
        self.installer.ensure_wrk()
        if not self.options.no_etcd:
            self.etcd_version = self.installer.ensure_etcd()
        cpython = self.installer.create_venv(provision.VENV_CPYTHON, [sys.executable])
        snapshot = self.installer.snapshot(self.workdir, [str(cpython), "-m", "pip"])
        self.runtimes["cpython"] = self.installer.install(cpython, snapshot, ["matplotlib"], [])
        self.pythons["cpython"] = cpython
        pypy = None if self.options.no_pypy else self.installer.ensure_pypy()
        if pypy is not None:
            try:
                python = self.installer.create_venv(provision.VENV_PYPY, [pypy])
                # treq needs twisted[tls], hence pyOpenSSL and cryptography. Releases of
                # cryptography after 43 have no PyPy 3.9 wheel, and their sources need Rust and
                # crates.io; binary-only makes pip back off to versions that do install.
                flags = ["--only-binary=cryptography"]
                self.runtimes["pypy"] = self.installer.install(python, snapshot, [], flags)
                self.pythons["pypy"] = python
            except provision.ProvisionError as exc:
                self.notes.append(f"PyPy rows skipped: {exc}")

    def start_servers(self) -> None:
        for spec in servers.SPECS:
            if spec.runtime == "go" and self.etcd_version is None:
                continue
            if spec.runtime != "go" and spec.runtime not in self.pythons:
                continue
            log(f"starting {spec.name}")
            try:
                server = servers.start(spec, self.pythons.get(spec.runtime), self.workdir)
            except servers.StartError as exc:
                self.notes.append(f"{spec.name} did not start: {exc}")
                continue
            self.servers.append(server)
            log(f"  {spec.name} on port {server.port} (pid {server.process.pid})")

    def load(self) -> None:
        """Put 10,000 keys of each value size into every server that stores them."""
        for server in self.servers:
            if not server.spec.loads:
                continue
            for size in self.options.sizes:
                limit = min(180.0, self.remaining())
                if limit < 10:
                    raise DeadlineReached("while loading keys")
                try:
                    took = wrk.load(self.script, server.target, size, limit)
                except wrk.WrkError as exc:
                    server.broken = f"loading failed: {exc}"
                    self.notes.append(f"{server.spec.name}: {server.broken}")
                    break
                self.loading.setdefault(server.spec.name, {})[size] = round(took, 2)
                log(f"loaded {wrk.KEYS} x {size} B into {server.spec.name} in {took:.1f} s")

    def cells(self) -> list[tuple[str, int, int]]:
        return [
            (operation, size, connections)
            for operation in OPERATIONS
            for size in self.options.sizes
            for connections in self.options.connections
        ]

    def measure(self) -> None:
        """Every round, every cell, every server in turn; warm-ups precede first runs."""
        warmed: set[tuple[str, str]] = set()
        seconds, warmup = self.options.seconds, self.options.warmup
        for round_number in range(1, self.options.rounds + 1):
            for operation, size, connections in self.cells():
                for server in self.servers:
                    name = server.spec.name
                    if operation == "GET" and not server.spec.get:
                        continue
                    if not server.alive():
                        continue
                    cold = (name, operation) not in warmed
                    if self.remaining() < seconds + (warmup if cold else 0) + 5:
                        raise DeadlineReached(f"in round {round_number}")
                    base = {"server": name, "op": operation, "size": size, "conns": connections}
                    try:
                        if cold:
                            figures = wrk.measure(
                                self.script, server.target, operation, size, connections, warmup
                            )
                            warmed.add((name, operation))
                            if server.spec.runtime == "pypy":
                                self.cold.append({**base, **figures.as_dict()})
                        figures = wrk.measure(
                            self.script, server.target, operation, size, connections, seconds
                        )
                    except wrk.WrkError as exc:
                        self.runs.append({**base, "round": round_number, "error": str(exc)})
                        self.notes.append(f"round {round_number} {name} {operation}: {exc}")
                        continue
                    self.runs.append({**base, "round": round_number, **figures.as_dict()})
                    log(
                        f"round {round_number}/{self.options.rounds} {operation} "
                        f"{report.size_label(size):>5} c{connections:<3} {name:31} "
                        f"{figures.rps:8.0f} req/s  p99 {figures.p99_ms:7.2f} ms"
                        + (f"  {figures.errors} errors" if figures.errors else "")
                    )
        self.completed = True

    def results(self, command: list[str]) -> dict[str, Any]:
        names = [server.spec.name for server in self.servers]
        skipped_get = {server.spec.name for server in self.servers if not server.spec.get}
        summary = report.summarize(self.runs, self.cold, names, skipped_get, self.cells())
        for server in self.servers:
            if server.broken:
                self.notes.append(f"{server.spec.name}: {server.broken}")
        options = self.options
        return {
            "command": shlex.join(command),
            "argv": command,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(time.monotonic() - self.started, 1),
            "completed": self.completed,
            "options": {
                "rounds": options.rounds,
                "seconds": options.seconds,
                "warmup_seconds": options.warmup,
                "sizes": options.sizes,
                "connections": options.connections,
                "keys": wrk.KEYS,
                "quick": options.quick,
                "max_minutes": options.max_minutes,
            },
            "machine": {
                **provision.machine(),
                "scratch_filesystem": provision.filesystem_type(self.workdir),
                "runtimes": self.runtimes,
                "etcd": self.etcd_version,
            },
            "servers": [
                {
                    "name": server.spec.name,
                    "kind": server.spec.kind,
                    "runtime": server.spec.runtime,
                    "backend": server.spec.backend,
                    "port": server.port,
                }
                for server in self.servers
            ],
            "loading_seconds": self.loading,
            "notes": list(dict.fromkeys(self.notes)),
            "runs": self.runs,
            "cold": self.cold,
            "summary": summary,
        }

    def close(self) -> None:
        """Stop every server this run started, by PID, and remove the temp directory."""
        if self.servers:
            log(f"stopping {len(self.servers)} servers")
        servers.stop(self.servers)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    command = [sys.executable, *sys.argv]
    # Ctrl-C and SIGTERM both end the run through the same cleanup, even when the shell that
    # started it in the background had set SIGINT to be ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    suite = Suite(options)
    status = 0
    results: dict[str, Any] | None = None
    try:
        try:
            suite.provision()
            suite.start_servers()
            suite.load()
            suite.measure()
        except DeadlineReached as exc:
            suite.notes.append(f"deadline of {options.max_minutes} min reached {exc}")
        except KeyboardInterrupt:
            suite.notes.append("interrupted: the figures are partial")
            status = 130
        except provision.ProvisionError as exc:
            suite.notes.append(f"cannot run: {exc}")
            status = 1
        results = suite.results(command)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        suite.close()
    assert results is not None
    results["wall_seconds"] = round(time.monotonic() - suite.started, 1)
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(results, indent=2) + "\n")
    print(describe(results))
    print(f"\nJSON: {options.json}")
    python = suite.pythons.get("cpython")
    if python is not None and any("rps" in row for row in results["summary"]):
        chart = subprocess.run(
            [str(python), str(HERE / "suite_chart.py"), str(options.json), str(options.chart)],
            capture_output=True,
            text=True,
            check=False,
        )
        if chart.returncode == 0:
            print(f"chart: {options.chart}")
        else:
            print(f"chart failed: {chart.stderr.strip()[-1000:]}")
    return status


def describe(results: dict[str, Any]) -> str:
    """The heading, the table and the notes, as printed at the end of a run."""
    options, machine = results["options"], results["machine"]
    runtimes = ", ".join(
        f"{name} {info['python']} (Twisted {info['twisted']})"
        for name, info in machine["runtimes"].items()
    )
    lines = [
        "",
        f"{options['rounds']} interleaved round(s) of {options['seconds']:g} s per run, "
        f"{options['keys']} keys per value size, wrk -t2 on 127.0.0.1; medians over rounds, "
        f"errors summed",
        f"{machine['nproc']} cores, {machine['cpu_model']}; {runtimes}; "
        f"etcd {machine['etcd'] or 'not run'}",
        "x bare / x etcd: req/s relative to the bare CPython twisted.web resource / to etcd for "
        "the same op, size and connections (the bare resource always answers GET with 100 B)",
        "",
        report.table(results["summary"]),
        "",
        f"wall time {results['wall_seconds']:.0f} s",
    ]
    lines += [f"note: {note}" for note in results["notes"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

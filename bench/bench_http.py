"""GET and PUT requests per second of one Navistore node, against a bare twisted.web resource.

The quick loop while working on the request path: no venvs, no etcd, no PyPy. It runs the
checkout's code (PYTHONPATH) on the Python that runs it, with the same servers, loading, wrk
script and table as the full suite (``bench/run.py``, whose helpers it uses): the bare resource,
Navistore on sqlite ``synchronous=normal`` and on ``memory:``, 10,000 keys of 100 bytes, rounds
interleaved so that machine noise hits every server alike. Every process it starts is stopped by
its PID at the end.

Usage: ``python bench/bench_http.py [--rounds 3] [--seconds 5] [--connections 32] [--json PATH]``
(needs ``wrk``: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import suite_report
import suite_servers
import suite_wrk

REPOSITORY = Path(__file__).resolve().parent.parent
SIZE = 100
SPECS = [
    spec
    for spec in suite_servers.SPECS
    if spec.name in (suite_servers.BARE, suite_servers.SQLITE_NORMAL, suite_servers.MEMORY)
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results here")
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    workdir = Path(tempfile.mkdtemp(prefix="navistore-bench-"))
    script = suite_wrk.write_script(workdir)
    # The checkout's navistore (and its twisted plugin) comes first, installed or not.
    environment = {**suite_servers.child_environment(), "PYTHONPATH": str(REPOSITORY)}
    python = Path(sys.executable)
    servers: list[suite_servers.Server] = []
    runs: list[dict[str, Any]] = []
    try:
        for spec in SPECS:
            servers.append(suite_servers.start(spec, python, workdir, environment=environment))
            if spec.loads:
                suite_wrk.load(script, servers[-1].target, SIZE, limit=120)
        for round_number in range(1, options.rounds + 1):
            for operation in ("GET", "PUT"):
                for server in servers:
                    figures = suite_wrk.measure(
                        script, server.target, operation, SIZE, options.connections, options.seconds
                    )
                    runs.append(
                        {
                            "server": server.spec.name,
                            "op": operation,
                            "size": SIZE,
                            "conns": options.connections,
                            "round": round_number,
                            **figures.as_dict(),
                        }
                    )
                    print(
                        f"round {round_number} {operation:3} {server.spec.name:24} "
                        f"{figures.rps:9.0f} req/s",
                        file=sys.stderr,
                    )
    finally:
        suite_servers.stop(servers)
        shutil.rmtree(workdir, ignore_errors=True)

    cells = [(operation, SIZE, options.connections) for operation in ("GET", "PUT")]
    names = [spec.name for spec in SPECS]
    summary = suite_report.summarize(runs, [], names, set(), cells)
    print(
        f"\n{options.connections} connections, {options.rounds} interleaved rounds of "
        f"{options.seconds} s, {suite_wrk.KEYS} keys, {SIZE}-byte values, "
        f"{sys.implementation.name} {sys.version.split()[0]}, medians\n"
    )
    print(suite_report.table(summary))
    if options.json:
        options.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()

"""GET and PUT requests per second of one Navistore node, against a bare twisted.web resource.

Starts, on 127.0.0.1 and in one run: the bare resource (``bench/bare_server.py``), Navistore on
sqlite (``synchronous=normal``) and Navistore on the memory backend, each as a real
``twistd -n navistore`` process with the same Python. Loads 10,000 keys of 100 bytes, then drives
each server with wrk (keep-alive connections, random keys), interleaving servers round by round so
that machine noise hits all of them alike, and prints medians and the ratio to the bare resource.
Every process it starts is stopped by its PID at the end.

Usage: ``python bench/bench_http.py [--rounds 3] [--seconds 5] [--connections 32]``
(needs ``wrk``: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
KEYS = 10_000
VALUE = b"v" * 100

GET_SCRIPT = """
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/bench/k" .. math.random(0, %(keys)d - 1))
end
"""

PUT_SCRIPT = """
math.randomseed(os.time())
local body = string.rep("v", 100)
request = function()
  return wrk.format("PUT", "/bench/k" .. math.random(0, %(keys)d - 1), nil, body)
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(port: int, path: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            connection.getresponse().read()
            connection.close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer {path} within {deadline} s")


def twistd_command(port: int, backend: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "navistore",
        "--port",
        f"tcp:{port}:interface=127.0.0.1",
        "--backend",
        backend,
    ]


def load_keys(port: int) -> None:
    """PUT the 10,000 keys the load reads, over 8 keep-alive connections."""

    def worker(start: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for index in range(start, KEYS, 8):
            connection.request("PUT", f"/bench/k{index}", body=VALUE)
            response = connection.getresponse()
            response.read()
            if response.status not in (200, 201):
                raise RuntimeError(f"loading failed: {response.status}")
        connection.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))


def run_wrk(port: int, script: Path, seconds: int, connections: int) -> dict[str, float]:
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
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(part) for part in socket_errors.groups())
    return {"rps": rate, "p50_ms": latency("50"), "p99_ms": latency("99"), "errors": errors}


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
    scripts = {}
    for name, text in (("GET", GET_SCRIPT), ("PUT", PUT_SCRIPT)):
        scripts[name] = workdir / f"{name.lower()}.lua"
        scripts[name].write_text(text % {"keys": KEYS})

    servers: dict[str, tuple[int, list[str], str]] = {}
    port = free_port()
    servers["bare twisted.web"] = (
        port,
        [sys.executable, str(HERE / "bare_server.py"), str(port)],
        "/",
    )
    port = free_port()
    servers["navistore sqlite"] = (
        port,
        twistd_command(port, f"sqlite:///{workdir}/bench.db"),
        "/_health",
    )
    port = free_port()
    servers["navistore memory"] = (port, twistd_command(port, "memory:"), "/_health")

    # The checkout's navistore (and its twisted plugin) comes first, installed or not.
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    processes: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for name, (port, command, ready_path) in servers.items():
            log_path = workdir / f"{name.replace(' ', '_')}.log"
            with open(log_path, "wb") as log:
                processes.append(
                    subprocess.Popen(
                        command, cwd=workdir, env=environment, stdout=log, stderr=subprocess.STDOUT
                    )
                )
            wait_ready(port, ready_path)
            if name.startswith("navistore"):
                load_keys(port)
        for round_number in range(options.rounds):
            for operation in ("GET", "PUT"):
                for name, (port, _command, _path) in servers.items():
                    figures = run_wrk(
                        port, scripts[operation], options.seconds, options.connections
                    )
                    results.setdefault(name, {}).setdefault(operation, []).append(figures)
                    print(
                        f"round {round_number + 1} {operation:3} {name:18} "
                        f"{figures['rps']:9.0f} req/s",
                        file=sys.stderr,
                    )
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    def median(name: str, operation: str, field: str) -> float:
        return statistics.median(run[field] for run in results[name][operation])

    print(
        f"\n{options.connections} connections, {options.rounds} interleaved rounds of "
        f"{options.seconds} s, {KEYS} keys, 100-byte values, {sys.implementation.name} "
        f"{sys.version.split()[0]}, medians\n"
    )
    print(
        f"{'server':20} {'op':4} {'req/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6}"
    )
    summary = {}
    for operation in ("GET", "PUT"):
        bare = median("bare twisted.web", operation, "rps")
        for name in servers:
            rps = median(name, operation, "rps")
            row = {
                "rps": rps,
                "ratio": rps / bare,
                "p50_ms": median(name, operation, "p50_ms"),
                "p99_ms": median(name, operation, "p99_ms"),
                "errors": sum(run["errors"] for run in results[name][operation]),
            }
            summary[f"{name} {operation}"] = row
            print(
                f"{name:20} {operation:4} {rps:9.0f} {row['ratio']:6.2f} "
                f"{row['p50_ms']:7.2f} {row['p99_ms']:7.2f} {row['errors']:6.0f}"
            )
    if options.json:
        options.json.write_text(json.dumps({"runs": results, "medians": summary}, indent=2))


if __name__ == "__main__":
    main()

"""Backup and restore of 100,000 keys, timed on real processes: export, import, backup, restore.

Run from the repository root: ``.venv/bin/python bench/bench_export.py [--keys N]``. It starts a
``twistd navistore`` node on sqlite (``synchronous=normal``) in a temporary directory, loads it
with N keys (default 100,000) of 100-byte values through ``/_bulk``, then times, with the
``navistore`` command run as a process as an operator runs it:

* ``navistore export -o FILE``: the whole node into a file;
* ``navistore import FILE`` into a fresh node (then again: every record kept, nothing written);
* ``navistore backup FILE``: an online copy of the first node's database;
* a restore start: ``twistd navistore`` on the copy until ``/_health`` answers, then every key
  checked through an export of the restored node (and a sample read with single GETs).

It prints one line per step (seconds, keys a second, megabytes) and takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from suite_servers import loopback_request

REPOSITORY = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"Navistore listening on tcp:[0-9.]+:(\d+)")
VALUE = "x" * 100
BULK_ENTRIES = 10_000


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
    return env


class Node:
    """A ``twistd -n navistore`` process on a sqlite file, on a free loopback port."""

    def __init__(self, directory: Path, database: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "node.log"
        twistd = Path(sys.executable).parent / "twistd"
        command = [str(twistd)] if twistd.exists() else [sys.executable, "-m", "twisted"]
        command += ["--nodaemon", "--pidfile", "", "navistore"]
        command += ["--port", "tcp:0:interface=127.0.0.1", "--backend", f"sqlite:{database}"]
        self.started = time.perf_counter()
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=directory, env=environment(), stdout=out, stderr=subprocess.STDOUT
            )
        self.port = self._wait_port()
        self._wait_healthy()
        self.ready = time.perf_counter() - self.started

    def _wait_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log.read_bytes())
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                sys.exit(f"the node exited:\n{self.log.read_text()}")
            time.sleep(0.01)
        sys.exit("the node did not listen within 60 s")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/_health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.01)
        sys.exit("the node did not answer /_health within 60 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        return loopback_request(self.port, method, path, body, timeout=300)

    def last_seq(self) -> int:
        return int(json.loads(self.request("GET", "/_health")[1])["last_seq"])

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def navistore(node: Node, *arguments: str) -> float:
    """Run the ``navistore`` command against ``node``; its wall time in seconds."""
    command = [sys.executable, "-m", "navistore.scripts.client", "--url", node.url, *arguments]
    started = time.perf_counter()
    done = subprocess.run(command, env=environment(), capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(arguments)} exited {done.returncode}: {done.stderr.decode()}")
    return elapsed


def report(step: str, seconds: float, keys: int, size: int | None = None) -> None:
    rate = f"{keys / seconds:>9,.0f} keys/s"
    megabytes = f"  {size / 1e6:7.1f} MB" if size is not None else ""
    print(f"{step:<34} {seconds:7.2f} s  {rate}{megabytes}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    keys = parser.parse_args(argv).keys
    with tempfile.TemporaryDirectory(prefix="bench-export-") as temporary:
        root = Path(temporary)
        source = Node(root / "source", "source.db")
        nodes = [source]
        try:
            started = time.perf_counter()
            for start in range(0, keys, BULK_ENTRIES):
                entries = [
                    {"key": f"/bench/{index:08d}", "value": VALUE}
                    for index in range(start, min(start + BULK_ENTRIES, keys))
                ]
                status, body = source.request("POST", "/_bulk", json.dumps(entries).encode())
                assert status == 200, body
            report(f"load {keys:,} keys (/_bulk)", time.perf_counter() - started, keys)

            exported = root / "export.jsonl"
            seconds = navistore(source, "export", "-o", str(exported))
            report("navistore export", seconds, keys, exported.stat().st_size)

            target = Node(root / "target", "target.db")
            nodes.append(target)
            seconds = navistore(target, "import", str(exported))
            assert target.last_seq() == keys
            report("navistore import (fresh node)", seconds, keys)
            seconds = navistore(target, "import", str(exported))
            assert target.last_seq() == keys  # all kept: nothing written
            report("navistore import again (all kept)", seconds, keys)

            copy = root / "restored" / "restored.db"
            copy.parent.mkdir()
            seconds = navistore(source, "backup", str(copy))
            report("navistore backup", seconds, keys, copy.stat().st_size)

            restored = Node(copy.parent, "restored.db")
            nodes.append(restored)
            report("restore start (to /_health 200)", restored.ready, keys)
            started = time.perf_counter()
            check = root / "restored.jsonl"
            navistore(restored, "export", "-o", str(check))
            lines = check.read_bytes().splitlines()[1:-1]
            found = {json.loads(line)["key"] for line in lines}
            assert found == {f"/bench/{index:08d}" for index in range(keys)}, len(found)
            for index in range(0, keys, max(1, keys // 1000)):
                status, body = restored.request("GET", f"/bench/{index:08d}")
                assert (status, body) == (200, VALUE.encode()), (index, status)
            report("restored: every key checked", time.perf_counter() - started, keys)
        finally:
            for node in nodes:
                node.stop()


if __name__ == "__main__":
    main()

"""wrk as the suite's load generator: one Lua script for loading and measuring, and its figures.

Why wrk: a C client on its own threads costs a 2-core machine far less CPU than a Python client,
so what is measured is the server, not the client. Why one Lua script with a ``done()`` hook:
``done()`` hands back exact microsecond percentiles and error counts on one machine-readable line,
instead of the rounded figures of wrk's text report.

Loading uses the same script in ``load`` mode: each wrk thread owns one connection and the keys
``id, id + threads, ...``; it sends the key after the last one answered, so every key is sent until
it has an answer, and a thread that has had an answer for each of its keys prints ``LOADED`` and
stops. wrk itself always sleeps for
the whole ``-d``, so the caller interrupts it (SIGINT, which makes wrk report and exit) once every
thread has said ``LOADED``.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: The number of keys loaded per value size, and the key range the measured requests pick from.
KEYS = 10_000

SCRIPT = r"""
-- Arguments after "--": path prefix, keys, value size, "form" or "raw", mode, loader threads.
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

local requests = {}
local mode
local received, failed = 0, 0

function init(args)
  local prefix, keys, size = args[1], tonumber(args[2]), tonumber(args[3])
  mode = args[5]
  local headers, body = {}, nil
  if mode ~= "get" then
    body = string.rep("v", size)
    if args[4] == "form" then
      headers["Content-Type"] = "application/x-www-form-urlencoded"
      body = "value=" .. body
    end
  end
  local method = "PUT"
  if mode == "get" then method = "GET" end
  local first, step = 0, 1
  if mode == "load" then first, step = id, tonumber(args[6]) end
  for index = first, keys - 1, step do
    requests[#requests + 1] = wrk.format(method, prefix .. index, headers, body)
  end
  math.randomseed(os.time() * 16 + id)
  if mode ~= "load" then response = nil end
end

function request()
  if mode == "load" then
    -- The next key is the one after the last answered: wrk calls request() once more than it
    -- sends (to check the script, in thread 0), and after a socket error the key is resent.
    return requests[math.min(received + 1, #requests)]
  end
  return requests[math.random(#requests)]
end

function response(status, headers, body)
  received = received + 1
  if status >= 300 then failed = failed + 1 end
  if received == #requests then
    io.write(string.format("LOADED %d %d\n", received, failed))
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, per_thread)
  local e = summary.errors
  io.write(string.format("WRKRESULT %d %d %.1f %.1f %d %d %d %d %d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


#: The order of the error counts on the script's result line.
ERROR_KINDS = ("status", "connect", "read", "write", "timeout")


class WrkError(RuntimeError):
    """wrk did not run to the end, or printed no result line."""


@dataclass(frozen=True)
class Target:
    """Where one server keeps a key and how it takes a value in a PUT.

    ``prefix`` is followed by the value size and ``/k<index>``; ``form`` is etcd v2's
    ``value=...`` form body instead of the raw value as the body.
    """

    url: str
    prefix: str
    form: bool = False

    def arguments(self, size: int, mode: str, threads: int) -> list[str]:
        """The script's arguments for keys of ``size``-byte values in ``mode``."""
        encoding = "form" if self.form else "raw"
        return [f"{self.prefix}/{size}/k", str(KEYS), str(size), encoding, mode, str(threads)]


@dataclass(frozen=True)
class Figures:
    """One wrk run, as the suite records it."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    seconds: float
    #: The errors by kind: HTTP status >= 400, and socket connect/read/write errors and timeouts.
    error_kinds: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_script(directory: Path) -> Path:
    """Write the Lua script once per suite run; every wrk call uses it."""
    path = directory / "suite.lua"
    path.write_text(SCRIPT)
    return path


def _parse(output: str) -> Figures:
    for line in output.splitlines():
        if line.startswith("WRKRESULT "):
            fields = line.split()[1:]
            requests, duration_us = int(fields[0]), int(fields[1])
            kinds = dict(zip(ERROR_KINDS, (int(field) for field in fields[4:9])))
            seconds = duration_us / 1e6
            return Figures(
                rps=requests / seconds if seconds else 0.0,
                p50_ms=float(fields[2]) / 1000,
                p99_ms=float(fields[3]) / 1000,
                errors=sum(kinds.values()),
                requests=requests,
                seconds=seconds,
                error_kinds={kind: count for kind, count in kinds.items() if count},
            )
    raise WrkError(f"wrk printed no result line:\n{output[-2000:]}")


def measure(
    script: Path,
    target: Target,
    operation: str,
    size: int,
    connections: int,
    seconds: float,
    threads: int = 2,
) -> Figures:
    """Drive ``target`` with random-key GETs or PUTs for ``seconds`` on keep-alive connections.

    The timeout per request is 10 s rather than wrk's 2 s, so that a slow server's tail shows up in
    p99 instead of vanishing into a timeout count. The subprocess gets a hard timeout of its own.
    """
    command = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        target.url,
        "--",
        *target.arguments(size, operation.lower(), threads),
    ]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish within {seconds + 30:.0f} s") from None
    if completed.returncode != 0:
        raise WrkError(f"wrk exited with {completed.returncode}: {completed.stderr.strip()}")
    return _parse(completed.stdout)


def load(script: Path, target: Target, size: int, limit: float, threads: int = 8) -> float:
    """PUT all ``KEYS`` keys of ``size``-byte values into ``target``; return the seconds it took.

    :param limit: seconds after which wrk gives up by itself; loading then fails.
    :raises WrkError: when a key was refused or not every thread finished in time.
    """
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{threads}",
        f"-d{max(1, int(limit))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        target.url,
        "--",
        *target.arguments(size, "load", threads),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    finished = refused = 0
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("LOADED "):
                finished += 1
                refused += int(line.split()[2])
                if finished == threads:
                    process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if finished != threads or refused:
        raise WrkError(
            f"loading {size}-byte values into {target.url}: {finished}/{threads} threads done, "
            f"{refused} refused\n{''.join(lines)[-2000:]}"
        )
    return _parse("".join(lines)).seconds

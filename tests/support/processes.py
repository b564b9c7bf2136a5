"""Real Navistore processes on 127.0.0.1, started and stopped by tests.

Every server listens on ``tcp:0:interface=127.0.0.1``; the test reads the port the kernel chose
from the server's log line ``Navistore listening on tcp:127.0.0.1:PORT``, so no port is guessed
and no other process can take it in between. Readiness is ``/_health`` answering 200, polled
against a deadline. Every process is stopped by PID when its test ends (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = [
    "DEADLINE",
    "LISTENING",
    "LOOPBACK",
    "NHTTPSERVER",
    "REPOSITORY",
    "REQUEST_TIMEOUT",
    "Server",
    "clean_env",
    "healthy",
    "nhttpserver",
    "pid_alive",
    "request",
    "run_to_exit",
    "running",
    "source_env",
    "stop_pid",
    "stop_process",
    "twistd",
    "twistd_command",
    "url_of",
    "wait_until",
]

REPOSITORY = Path(__file__).resolve().parent.parent.parent
NHTTPSERVER = REPOSITORY / "bin" / "nhttpserver"
LOOPBACK = "tcp:0:interface=127.0.0.1"
LISTENING = re.compile(rb"Navistore listening on tcp:[0-9.]+:(\d+)")

#: How long a server may take to start or stop (PyPy and loaded CI machines are slow).
DEADLINE = 60.0
#: How long one HTTP request may take.
REQUEST_TIMEOUT = 15.0


# -- processes ----------------------------------------------------------------------------------


def twistd_command(bin_dir: Path | None = None) -> list[str]:
    """The command that runs twistd with ``bin_dir``'s Python (default: the one running tests)."""
    if bin_dir is not None:
        return [str(bin_dir / "twistd")]
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def source_env() -> dict[str, str]:
    """The environment for a server run from this source tree (navistore and its plugin)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
    return env


def clean_env() -> dict[str, str]:
    """The environment for an installed copy: nothing points at the source tree."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


def pid_alive(pid: int) -> bool:
    """Tell whether a process exists and is not a zombie (a container's PID 1 may not reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition: object, what: str, deadline: float = DEADLINE) -> None:
    """Poll ``condition()`` every 20 ms until it is true; fail after ``deadline`` seconds."""
    assert callable(condition)
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline}s waiting for {what}")
        time.sleep(0.02)


def stop_pid(pid: int, timeout: float = DEADLINE) -> None:
    """SIGTERM ``pid``, then SIGKILL it if it is still there after ``timeout`` seconds."""
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.02)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def stop_process(process: subprocess.Popen[bytes], timeout: float = DEADLINE) -> int:
    """SIGTERM a child, then SIGKILL it after ``timeout`` seconds; return its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout)


class Server:
    """A server process started by a test, where it logs, and where it listens."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        log: Path,
        log_start: int,
        tls: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.process = process
        self.log = log
        self.log_start = log_start  # earlier runs in the same directory logged before this
        self.port = 0
        #: How to reach an https server (None: plain http), and headers every request carries
        #: (a token).
        self.tls = tls
        self.headers = dict(headers or {})

    def output(self) -> str:
        """What this server has logged so far."""
        with self.log.open("rb") as log:
            log.seek(self.log_start)
            return log.read().decode("utf-8", "replace")

    def wait_listening(self) -> None:
        """Wait for the port in the log, then for ``/_health`` to answer 200."""

        def listening() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"server exited {self.process.returncode}:\n{self.output()}")
            found = LISTENING.search(self.output().encode())
            if found:
                self.port = int(found.group(1))
            return found is not None

        wait_until(listening, "the server to listen")
        wait_until(lambda: healthy(self.port, self.tls), "/_health to answer 200")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        """One HTTP request on a new connection: status, body and the response."""
        sent = {**self.headers, **(headers or {})}
        return request(self.port, method, path, body, headers=sent, tls=self.tls)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, bytes, http.client.HTTPResponse]:
    """One HTTP (or, with ``tls``, HTTPS) request to 127.0.0.1:``port`` on a new connection."""
    connection: http.client.HTTPConnection
    if tls is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    else:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=REQUEST_TIMEOUT, context=tls
        )
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response
    finally:
        connection.close()


def healthy(port: int, tls: ssl.SSLContext | None = None) -> bool:
    """Tell whether ``/_health`` answers 200 (False while the server is not ready)."""
    try:
        status, _body, _response = request(port, "GET", "/_health", tls=tls)
    except (OSError, http.client.HTTPException):
        return False
    return status == 200


@contextmanager
def running(
    command: Sequence[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    *,
    tls: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Start ``command`` in ``cwd`` with its output in ``cwd/server.out``; stop it at the end.

    :param tls: reach the server over https with this context.
    :param headers: headers every request of the test carries (a token).
    """
    log = cwd / "server.out"
    with log.open("ab") as out:
        log_start = out.tell()
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=source_env() if env is None else env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, log, log_start, tls, headers)
    try:
        yield server
    finally:
        stop_process(process)


def twistd(
    backend: str, *extra: str, port: str = LOOPBACK, bin_dir: Path | None = None
) -> list[str]:
    """``twistd -n navistore`` (on a free loopback port), without a pidfile unless ``extra``
    gives twistd options."""
    options = extra or ("--pidfile", "")
    command = [*twistd_command(bin_dir), "--nodaemon", *options, "navistore"]
    return [*command, "--port", port, "--backend", backend]


def nhttpserver(*arguments: str) -> list[str]:
    """``bin/nhttpserver`` from this source tree, run with the test's Python."""
    return [sys.executable, str(NHTTPSERVER), *arguments]


def run_to_exit(
    command: Sequence[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command that must exit by itself within the deadline; return its result."""
    return subprocess.run(
        list(command),
        cwd=cwd,
        env=source_env() if env is None else env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def url_of(server: Server) -> str:
    """The base URL of a server that is listening."""
    return f"http://127.0.0.1:{server.port}"

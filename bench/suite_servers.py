"""The servers the suite measures: what each is, how to start it, and how to stop it for sure.

Every server is a real process on 127.0.0.1 on a port picked free just before it starts. Each
runs in a session of its own, so that a Ctrl-C in the terminal reaches the suite, which then stops
them one by one by PID, rather than reaching all of them at once half-way through a run.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import platform
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from suite_wrk import Target

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Spec:
    """One row group of the table: a kind of server on a runtime.

    ``backend`` is Navistore's backend URL, with ``{dir}`` standing for the run's temp directory.
    ``get`` is False where a GET would take the same path as another row's (sqlite FULL reads
    exactly like NORMAL), which saves measuring time.
    """

    name: str
    kind: str  # "bare", "navistore" or "etcd"
    runtime: str  # "cpython", "pypy" or "go"
    backend: str | None = None
    get: bool = True

    @property
    def loads(self) -> bool:
        """The bare resource stores nothing, so there is nothing to load into it."""
        return self.kind != "bare"


BARE = "bare twisted.web"
SQLITE_NORMAL = "navistore sqlite normal"
SQLITE_FULL = "navistore sqlite full"
MEMORY = "navistore memory"
ETCD = "etcd v2"
BARE_PYPY = "bare twisted.web (PyPy)"
SQLITE_NORMAL_PYPY = "navistore sqlite normal (PyPy)"

SPECS = [
    Spec(BARE, "bare", "cpython"),
    Spec(SQLITE_NORMAL, "navistore", "cpython", "sqlite:///{dir}/normal.db?synchronous=normal"),
    Spec(SQLITE_FULL, "navistore", "cpython", "sqlite:///{dir}/full.db?synchronous=full", False),
    Spec(MEMORY, "navistore", "cpython", "memory:"),
    Spec(ETCD, "etcd", "go"),
    Spec(BARE_PYPY, "bare", "pypy"),
    Spec(SQLITE_NORMAL_PYPY, "navistore", "pypy", "sqlite:///{dir}/pypy.db?synchronous=normal"),
]


@dataclass
class Server:
    """A started server: its process, port and log, and whether it is still worth measuring."""

    spec: Spec
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    broken: str | None = None

    @property
    def target(self) -> Target:
        url = f"http://127.0.0.1:{self.port}"
        if self.spec.kind == "etcd":
            return Target(url, "/v2/keys/bench", form=True)
        return Target(url, "/bench")

    def alive(self) -> bool:
        """Note and say so when the process has exited on its own."""
        if self.broken is None and self.process.poll() is not None:
            self.broken = f"exited with {self.process.returncode}; log: {self.log}"
        return self.broken is None

    def log_tail(self, characters: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-characters:]
        except OSError:
            return ""


class StartError(RuntimeError):
    """A server did not come up; the message carries the end of its log."""


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel picks it; a race is unlikely)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_environment() -> dict[str, str]:
    """The environment minus what would make a venv's Python import something else."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
    }
    if platform.machine() in ("aarch64", "arm64"):
        # etcd 3.4 refuses to start on arm64 unless told it is fine.
        environment["ETCD_UNSUPPORTED_ARCH"] = "arm64"
    return environment


def command_for(spec: Spec, port: int, python: Path | None, workdir: Path) -> list[str]:
    """The argv that starts ``spec`` on ``port``; ``python`` is the venv's for its runtime."""
    if spec.kind == "etcd":
        peer = free_port()
        data = workdir / "etcd-data"
        client_url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
        return [
            "etcd",
            "--name=bench",
            f"--data-dir={data}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=bench={peer_url}",
            "--initial-cluster-state=new",
            "--enable-v2=true",
        ]
    assert python is not None
    if spec.kind == "bare":
        return [str(python), str(HERE / "bare_server.py"), str(port)]
    assert spec.backend is not None
    return navistore_command(
        str(python), f"tcp:{port}:interface=127.0.0.1", spec.backend.format(dir=workdir)
    )


def navistore_command(python: str, endpoint: str, backend: str) -> list[str]:
    """``twistd -n navistore`` in the foreground, run by ``python`` (through twistd's own
    entry point, so no venv's ``bin/twistd`` script is needed)."""
    return [
        python,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "navistore",
        "--port",
        endpoint,
        "--backend",
        backend,
    ]


def ready_path(spec: Spec) -> str:
    """A GET that answers 200 only once the server can serve the benchmark's requests."""
    return {"bare": "/", "navistore": "/_health", "etcd": "/v2/keys/"}[spec.kind]


def loopback_request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 120.0
) -> tuple[int, bytes]:
    """One request to ``127.0.0.1:port`` on a new connection: its status and body (the benches'
    one HTTP client; raises ``OSError``/``HTTPException`` when there is no answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _answer(port: int, path: str) -> int | None:
    try:
        return loopback_request(port, "GET", path, timeout=2)[0]
    except (OSError, http.client.HTTPException):
        return None


def start(
    spec: Spec,
    python: Path | None,
    workdir: Path,
    timeout: float = 60.0,
    environment: dict[str, str] | None = None,
) -> Server:
    """Start ``spec`` and wait until it answers; PyPy and etcd take a few seconds to come up.

    ``environment`` replaces :func:`child_environment` (``bench_http.py`` sets PYTHONPATH).

    :raises StartError: if it exits or does not answer 200 in ``timeout`` seconds (it is then
        stopped before this returns).
    """
    port = free_port()
    command = command_for(spec, port, python, workdir)
    log = workdir / (spec.name.replace(" ", "_").replace("(", "").replace(")", "") + ".log")
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=child_environment() if environment is None else environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(spec, process, port, log)
    end = time.monotonic() + timeout
    status = None
    try:
        while time.monotonic() < end and server.alive():
            status = _answer(port, ready_path(spec))
            if status == 200:
                return server
            time.sleep(0.2)
    except BaseException:
        stop([server])  # not yet in the caller's list of servers to stop: stop it here
        raise
    stop([server])
    reason = server.broken or f"no 200 from {ready_path(spec)} in {timeout:.0f} s (last: {status})"
    raise StartError(f"{spec.name}: {reason}\n{server.log_tail()}")


def stop(servers: list[Server], grace: float = 10.0) -> None:
    """SIGTERM every process, give them ``grace`` seconds together, then SIGKILL the rest.

    Only the PIDs of processes this suite started are ever signalled.
    """
    running = [server.process for server in servers if server.process.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    end = time.monotonic() + grace
    for process in running:
        try:
            process.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()

"""What ``navistore render`` does to the machine: it writes files and runs reload commands.

A destination is either its old content or its new content, whole, at every instant, and
survives a crash once written: the new content goes to a temporary file in the same directory
(same filesystem, so the rename is atomic), is fsynced, gets its mode (and, when running as
root, the existing file's owner), is renamed over the destination with :func:`os.replace`, and
the directory is fsynced so the rename itself is durable. A file whose content and mode are
already right is left alone: programs that watch their config see a change only when there is
one.

A reload command runs through ``/bin/sh -c`` in a session (a process group) of its own, with
its output in a temporary file rather than a pipe, so a command that leaves a daemon behind
holding the pipe cannot hang the renderer. Past its timeout the whole group is terminated, then
killed. Its exit status and output go to the renderer's stderr, one line each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import tempfile
import time
from typing import Callable

from navistore.scripts.transfer import _fsync_directory

__all__ = ["MAX_LOGGED_OUTPUT", "CommandResult", "log_command", "run_command", "write_if_changed"]

#: The most bytes of a command's output logged (the rest is counted, not shown).
MAX_LOGGED_OUTPUT = 64 * 1024
#: How long a command's process group has between SIGTERM and SIGKILL.
_KILL_GRACE = 2.0
#: The mode of a new file when the template gives none (less the umask).
_DEFAULT_MODE = 0o644


def _current(path: str, size: int) -> tuple[bytes | None, os.stat_result | None]:
    """The destination's content (None when it differs in size from ``size`` or is absent)
    and its status."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None, None
    if not stat.S_ISREG(status.st_mode) or status.st_size != size:
        return None, status
    try:
        with open(path, "rb") as current:
            return current.read(size + 1), status
    except OSError:
        return None, status


def write_if_changed(path: str, data: bytes, mode: int | None) -> bool:
    """Make ``path`` hold ``data`` (with ``mode``, else the existing file's, else 0644 less
    the umask); return False when it already did and nothing was written."""
    target = os.path.abspath(path)
    current, status = _current(target, len(data))
    if status is not None:
        wanted = stat.S_IMODE(status.st_mode) if mode is None else mode
    else:
        umask = os.umask(0o022)
        os.umask(umask)
        wanted = _DEFAULT_MODE & ~umask if mode is None else mode
    if current == data and status is not None and stat.S_IMODE(status.st_mode) == wanted:
        return False
    directory, name = os.path.split(target)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".render", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), wanted)
            if status is not None and os.geteuid() == 0:
                os.fchown(out.fileno(), status.st_uid, status.st_gid)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)
    return True


class CommandResult:
    """How a reload command ended: its exit status (negative: the signal), whether it ran
    past its timeout, how long it took and what it printed."""

    def __init__(self, status: int, timed_out: bool, seconds: float, output: bytes) -> None:
        self.status = status
        self.timed_out = timed_out
        self.seconds = seconds
        self.output = output


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's process group, then SIGKILL it if the command is still there."""
    for signum, grace in ((signal.SIGTERM, _KILL_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(command: str, timeout: float) -> CommandResult:
    """Run ``command`` with ``/bin/sh -c`` and wait for it at most ``timeout`` seconds."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = False
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process)
        finally:
            if process.poll() is None:  # interrupted: never leave the command running
                _kill_group(process)
        output.seek(0)
        printed = output.read(MAX_LOGGED_OUTPUT + 1)
    return CommandResult(process.returncode, timed_out, time.monotonic() - started, printed)


def log_command(command: str, result: CommandResult, log: Callable[[str], None]) -> None:
    """One line per line of output, then one for how the command ended."""
    text = result.output[:MAX_LOGGED_OUTPUT].decode("utf-8", "replace")
    for line in text.splitlines():
        log(f"command {command!r}: {line}")
    if len(result.output) > MAX_LOGGED_OUTPUT:
        log(f"command {command!r}: (output past {MAX_LOGGED_OUTPUT} bytes not shown)")
    if result.timed_out:
        ending = f"timed out after {result.seconds:.1f}s and was killed"
    elif result.status < 0:
        ending = f"was killed by signal {-result.status}"
    else:
        ending = f"exited {result.status}"
    log(f"command {command!r} {ending} ({result.seconds:.2f}s)")

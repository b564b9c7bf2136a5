"""What the suite installs before it measures: Debian packages, and one venv per Python runtime.

A fresh machine has only CPython, so wrk, etcd and PyPy come from apt when missing (etcd and PyPy
are optional: without them their rows are skipped with a note). The venvs live under ``bench/`` and
are reused from run to run; what goes into them is a wheel built from a snapshot of the checkout,
so a run measures the code as it was when the run began even while someone edits it, and a venv
whose installed Navistore differs from the checkout is brought up to date without a full rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
VENV_CPYTHON = HERE / ".venv-cpython"
VENV_PYPY = HERE / ".venv-pypy"
MARKER = "navistore-bench.json"

#: What is left out of the snapshot: it is not part of the package, or is machine-local.
SNAPSHOT_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "bench",
    "tests",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.py[cod]",
    ".*_cache",
    ".hypothesis",
    "_trial_temp",
    "dropin.cache",
    "*.db",
    "*.db-*",
)

RUNTIME_PROBE = (
    "import json, platform, sys, twisted; print(json.dumps({"
    "'implementation': platform.python_implementation(), "
    "'python': platform.python_version(), 'version': sys.version.replace(chr(10), ' '), "
    "'twisted': twisted.__version__}))"
)


class ProvisionError(RuntimeError):
    """Something the suite cannot do without could not be installed."""


@dataclass(frozen=True)
class Snapshot:
    """A copy of the checkout's package files, the wheel built from it, and their digests."""

    wheel: Path
    source: str
    setup: str


Log = Callable[[str], None]


class Installer:
    """Runs apt and pip, says what it does through ``log``, and collects notes for the report."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.notes: list[str] = []
        self._apt_updated = False

    def run(self, command: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            environment.pop(name, None)
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=environment, check=False
        )

    def apt_install(self, *packages: str) -> bool:
        """Install Debian packages, without letting their maintainer scripts start any service.

        etcd-server ships an init script; a temporary ``policy-rc.d`` that answers 101 keeps apt
        from starting a system etcd on the default ports that this suite would then leave behind.
        """
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            self.notes.append(f"cannot install {' '.join(packages)}: not root, or no apt-get")
            return False
        if not self._apt_updated:
            self.log("apt-get update")
            self.run(["apt-get", "update"])
            self._apt_updated = True
        policy = Path("/usr/sbin/policy-rc.d")
        ours = not policy.exists()
        if ours:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            self.log(f"apt-get install -y {' '.join(packages)}")
            result = self.run(["apt-get", "install", "-y", "--no-install-recommends", *packages])
        finally:
            if ours:
                policy.unlink()
        if result.returncode != 0:
            self.notes.append(
                f"apt-get install {' '.join(packages)} failed: {result.stderr.strip()[-300:]}"
            )
            return False
        return True

    def ensure_wrk(self) -> None:
        if shutil.which("wrk") is None and not self.apt_install("wrk"):
            raise ProvisionError("wrk is needed and could not be installed (apt-get install wrk)")
        if shutil.which("wrk") is None:
            raise ProvisionError("wrk is still not on PATH after installing it")

    def ensure_etcd(self) -> str | None:
        """Return etcd's version when it can serve the v2 API, else None with a note why not."""
        if shutil.which("etcd") is None:
            self.apt_install("etcd-server")
        if shutil.which("etcd") is None:
            self.notes.append("etcd rows skipped: etcd-server is not installable here")
            return None
        version = first_line(["etcd", "--version"]).replace("etcd Version:", "").strip()
        parts = version.split(".")
        numeric = len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit()
        if numeric and (int(parts[0]), int(parts[1])) >= (3, 6):
            self.notes.append(f"etcd rows skipped: etcd {version} has no v2 API any more")
            return None
        return version

    def ensure_pypy(self) -> str | None:
        """Return the ``pypy3`` command when it can make a venv, else None with a note."""
        probe = ["pypy3", "-c", "import venv, ensurepip"]
        if shutil.which("pypy3") is None or self.run(probe).returncode != 0:
            self.apt_install("pypy3", "pypy3-venv")
        if shutil.which("pypy3") is None or self.run(probe).returncode != 0:
            self.notes.append("PyPy rows skipped: pypy3 with venv is not installable here")
            return None
        return "pypy3"

    def snapshot(self, workdir: Path, pip: list[str]) -> Snapshot:
        """Copy the checkout's package files and build one wheel that every venv installs."""
        source = workdir / "source"
        shutil.copytree(REPOSITORY, source, ignore=SNAPSHOT_IGNORE)
        digest = hashlib.sha256()
        for path in sorted(source.rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(source)).encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
        setup = hashlib.sha256((source / "setup.py").read_bytes()).hexdigest()
        wheels = workdir / "wheels"
        self.log("building the navistore wheel from a snapshot of the checkout")
        self.pip(pip, ["wheel", "--no-deps", "--wheel-dir", str(wheels), str(source)])
        (wheel,) = wheels.glob("navistore-*.whl")
        return Snapshot(wheel, digest.hexdigest(), setup)

    def pip(self, pip: list[str], arguments: list[str]) -> None:
        result = self.run([*pip, "--disable-pip-version-check", "--no-input", *arguments])
        if result.returncode != 0:
            lines = (result.stdout + result.stderr).strip().splitlines()
            # Skip a machine's warnings about configured but absent local indexes.
            output = "\n".join(line for line in lines if "is ignored" not in line)[-3000:]
            raise ProvisionError(f"pip {' '.join(arguments)} failed:\n{output}")

    def create_venv(self, directory: Path, interpreter: list[str]) -> Path:
        """Make (or keep) a venv and return its python; a venv whose python is broken is remade."""
        python = directory / "bin" / "python"
        if directory.exists() and self.run([str(python), "-c", "pass"]).returncode != 0:
            self.log(f"{directory} is broken: making it again")
            shutil.rmtree(directory)
        if not directory.exists():
            self.log(f"creating {directory}")
            result = self.run([*interpreter, "-m", "venv", str(directory)])
            if result.returncode != 0 and interpreter == [sys.executable]:
                # Debian's own python3 has no venv module until python3-venv is installed.
                shutil.rmtree(directory, ignore_errors=True)
                version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
                self.apt_install("python3-venv", f"{version}-venv")
                result = self.run([*interpreter, "-m", "venv", str(directory)])
            if result.returncode != 0:
                shutil.rmtree(directory, ignore_errors=True)
                raise ProvisionError(f"{' '.join(interpreter)} -m venv failed: {result.stderr}")
        return python

    def install(
        self, python: Path, snapshot: Snapshot, extras: list[str], flags: list[str]
    ) -> dict[str, Any]:
        """Bring Navistore (and ``extras``) in the venv up to the snapshot; return its runtime.

        ``flags`` go to the pip call that resolves dependencies (PyPy needs one, see run.py).
        """
        marker_path = python.parent.parent / MARKER
        try:
            marker = json.loads(marker_path.read_text())
        except (OSError, ValueError):
            marker = {}
        pip = [str(python), "-m", "pip"]
        wheel = str(snapshot.wheel)
        wanted: dict[str, Any] = {
            "source": snapshot.source,
            "setup": snapshot.setup,
            "extras": extras,
            "flags": flags,
        }
        venv = python.parent.parent.name
        if any(marker.get(name) != wanted[name] for name in ("setup", "extras", "flags")):
            self.log(f"pip install {' '.join(['navistore', *extras, *flags])} into {venv}")
            if marker:
                self.pip(pip, ["install", "-q", "--force-reinstall", "--no-deps", wheel])
            self.pip(pip, ["install", "-q", *flags, wheel, *extras])
        elif marker.get("source") != snapshot.source:
            self.log(f"updating navistore in {venv}")
            self.pip(pip, ["install", "-q", "--force-reinstall", "--no-deps", wheel])
        marker_path.write_text(json.dumps(wanted))
        result = self.run([str(python), "-c", RUNTIME_PROBE])
        if result.returncode != 0:
            raise ProvisionError(f"{python} cannot import twisted: {result.stderr[-1000:]}")
        info: dict[str, Any] = json.loads(result.stdout)
        return info


def filesystem_type(path: Path) -> str:
    """The type of the filesystem that holds ``path``, from the longest matching mount point."""
    target = str(path.resolve())
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def scratch_directory() -> Path:
    """A new temp directory on a disk, for the databases and etcd's data.

    On tmpfs an fsync costs nothing, which would hide exactly what sqlite ``synchronous=full``
    (and etcd's WAL) pay for; where the temp directory is tmpfs, use one under ``bench/``.
    """
    base = Path(tempfile.gettempdir())
    if filesystem_type(base) in ("tmpfs", "ramfs"):
        base = HERE
    return Path(tempfile.mkdtemp(prefix=".navistore-suite-", dir=base))


def first_line(command: list[str]) -> str:
    """The first line a version command prints, or what went wrong."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def machine() -> dict[str, Any]:
    """What the figures depend on: cores, CPU, memory, kernel and the load tools' versions."""
    model = memory = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    uname = platform.uname()
    return {
        "nproc": cores,
        "cpu_model": model,
        "memory": memory,
        "kernel": f"{uname.system} {uname.release} {uname.version}",
        "machine": uname.machine,
        "orchestrator_python": sys.version.replace("\n", " "),
        "wrk": first_line(["wrk", "-v"]),
    }

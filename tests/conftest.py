"""Shared test configuration: Hypothesis profiles, and the fixtures many modules use.

``ci`` (the default) keeps property tests bounded so the suite fits CI's time; ``dev`` runs more
examples. Pick one with ``HYPOTHESIS_PROFILE=dev``. What tests share besides fixtures lives in
``tests/support``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, settings

from navistore.backend.memory import MemoryBackend
from navistore.store import Store

#: ``pytester`` runs pytest sessions of their own (tests/test_writing_a_backend.py).
pytest_plugins = ["pytester"]

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", max_examples=1000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


REPOSITORY = Path(__file__).resolve().parent.parent

#: Extra ``pip install`` options for the venv that ``installed_venv`` makes with this Python.
#: On PyPy, cryptography (which Navistore needs through treq -> twisted[tls] -> pyOpenSSL) must
#: come as a wheel: the newest with a PyPy 3.9 wheel is 43.0.3, and pip would otherwise pick a
#: newer sdist, whose build needs a Rust toolchain and crates.io. With wheels only, pip settles on
#: the newest pyOpenSSL and Twisted that work with that cryptography (Twisted 25.5 on PyPy 3.9).
PIP_INSTALL_OPTIONS = ["--only-binary", "cryptography"] if sys.implementation.name == "pypy" else []


def _pip_runs_other_pythons() -> bool:
    """Tell whether this Python's pip can install into another environment (``--python``, pip
    22.3 and later), so that a new venv need not get a pip of its own."""
    try:
        version = importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    return (major, minor) >= (22, 3)


@pytest.fixture(scope="session")
def installed_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding Navistore from ``pip install '.[testing]'`` (not editable): the
    package, its dependencies and pytest with pytest-twisted, as a backend author installs it.

    Tests that must prove what an installed copy does (plugin discovery, the public testing API)
    run commands from its ``bin/`` with a working directory outside the repository, so that the
    source tree cannot stand in for the installed package. The venv does not see this one's
    site-packages (where Navistore is installed editable), nor the system's. Built once per test
    session: this Python's pip installs into it (no pip of its own to set up), without compiling
    every module of every dependency (modules compile when first imported, as usual).
    """
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"
    # Copy the tree without build leftovers so pip builds from exactly what is committed here.
    # ".venv*" also leaves out other venvs in the tree (a PyPy one, bench/.venv-cpython and
    # bench/.venv-pypy), which would otherwise be copied on every run: hundreds of MB.
    shutil.copytree(
        REPOSITORY,
        source,
        ignore=shutil.ignore_patterns(
            ".venv*",
            ".git",
            "build",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
            "dropin.cache",
        ),
    )
    env_dir = root / "venv"
    python = env_dir / "bin" / "python"
    if _pip_runs_other_pythons():
        venv.EnvBuilder(with_pip=False).create(env_dir)
        pip = [sys.executable, "-m", "pip", "--python", str(python)]
    else:
        venv.EnvBuilder(with_pip=True).create(env_dir)
        pip = [str(python), "-m", "pip"]
    install = [*pip, "install", "-q", "--no-compile", *PIP_INSTALL_OPTIONS]
    subprocess.run([*install, f"{source}[testing]"], check=True, timeout=600)
    shutil.rmtree(source)
    return env_dir / "bin"


def pytest_report_header() -> str:
    """Say which interpreter runs the suite (CPython or PyPy matters for timings)."""
    return f"navistore tests on {sys.implementation.name} {sys.version.split()[0]}"


@pytest.fixture
def reactor() -> Any:
    """The reactor pytest-twisted runs (for tests that listen on 127.0.0.1)."""
    from twisted.internet import reactor as running

    return running


@pytest_twisted.async_yield_fixture
async def store() -> AsyncIterator[Store]:
    """A Store over a fresh memory backend, closed after the test."""
    opened = await Store.open(MemoryBackend())
    yield opened
    await opened.close()

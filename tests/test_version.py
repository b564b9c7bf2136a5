"""``--version`` on every command prints Navistore's version first (``twistd navistore
--version`` printed Twisted's), then Twisted's and Python's, and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.processes import NHTTPSERVER, source_env, twistd_command

import navistore

COMMANDS = {
    "twistd navistore": [*twistd_command(), "navistore", "--version"],
    "nhttpserver": [sys.executable, str(NHTTPSERVER), "--version"],
    "navistore": [sys.executable, "-m", "navistore.scripts.client", "--version"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_version_names_navistore_twisted_and_python(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        COMMANDS[name], cwd=tmp_path, env=source_env(), capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.decode().strip()
    assert line == navistore.version_line()
    assert line.startswith(f"Navistore {navistore.__version__} (Twisted ")

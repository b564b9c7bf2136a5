"""A non-editable install ships the files of ``/_ui`` (package_data), not only the checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_build_holds_the_page_files(tmp_path: Path) -> None:
    """``setup.py build_py`` (what ``pip install .`` copies into site-packages, a wheel too)
    holds index.html, ui.js and ui.css as they are in the checkout."""
    built = tmp_path / "lib"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(built)],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    for name in ("index.html", "ui.js", "ui.css"):
        shipped = built / "navistore" / "web" / "ui" / name
        assert shipped.read_bytes() == (ROOT / "navistore" / "web" / "ui" / name).read_bytes()

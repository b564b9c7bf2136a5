"""Writing a backend outside Navistore: the public compliance suite run against one.

``tests/minimal_backend.py`` is a backend as a third-party author would write it. It must pass the
whole suite through ``navistore.testing`` alone, from this repository and (end to end) from a copy
of Navistore installed with ``pip install '.[testing]'``, which proves the suite ships in the
package. The suite's own rules for its subclasses (override ``make_backend``, ``reopen_backend``
or declare ``persistent = False``) are checked here too, by running small suites in a pytest
session of their own (``pytester``, in a subprocess: see :func:`suite_rule_outcomes`).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from minimal_backend import MinimalBackend, open_minimal
from zope.interface.verify import verifyObject

from navistore.backend import parse_backend_url
from navistore.interfaces import IStorageBackend
from navistore.testing import BackendComplianceTests
from navistore.testing.compliance import make_record

REPOSITORY = Path(__file__).resolve().parent.parent
MINIMAL_BACKEND_SOURCE = Path(__file__).resolve().parent / "minimal_backend.py"

#: What a backend author's test module looks like; the end-to-end test runs exactly this.
AUTHOR_TEST_MODULE = '''
"""The compliance suite against MinimalBackend, as its author would run it."""

import pytest

from minimal_backend import MinimalBackend
from navistore.testing import BackendComplianceTests


class TestMinimalBackend(BackendComplianceTests):
    persistent = True

    @pytest.fixture
    def make_backend(self, tmp_path):
        return MinimalBackend(tmp_path / "store.json")

    @pytest.fixture
    def reopen_backend(self, tmp_path):
        return lambda old: MinimalBackend(tmp_path / "store.json")
'''


class TestMinimalCompliance(BackendComplianceTests):
    """The minimal third-party-style backend honours the whole contract, persistence included."""

    persistent = True

    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> MinimalBackend:
        """A fresh backend over a JSON file in the test's directory."""
        return MinimalBackend(tmp_path / "store.json")

    @pytest.fixture
    def reopen_backend(self, tmp_path: Path) -> Callable[[Any], MinimalBackend]:
        """Reopen the same JSON file."""
        return lambda old: MinimalBackend(tmp_path / "store.json")


def expected_test_count(suite: type) -> int:
    """Count the tests pytest makes of ``suite``: one per test function and parameter row."""
    count = 0
    for name in dir(suite):
        if not name.startswith("test"):
            continue
        cases = 1
        for mark in getattr(getattr(suite, name), "pytestmark", []):
            if mark.name == "parametrize":
                cases *= len(mark.args[1])
        count += cases
    return count


def _environment() -> dict[str, str]:
    """The current environment without anything that could make the repository importable."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")
    }


def test_minimal_backend_uses_only_the_public_api() -> None:
    """The example backend imports nothing from Navistore but its public modules (and no
    built-in backend), so it shows what an outside author has to work with."""
    allowed = {
        "navistore.interfaces",
        "navistore.record",
        "navistore.keys",
        "navistore.clock",
        "navistore.backend",  # BackendURL, for the entry point's type annotation only
        "navistore.protocol.records",  # the public record codec (a record as JSON)
    }
    tree = ast.parse(MINIMAL_BACKEND_SOURCE.read_text(encoding="utf-8"))
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("navistore")
    }
    imported |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.startswith("navistore")
    }
    assert imported
    assert imported <= allowed


@pytest_twisted.ensureDeferred
async def test_entry_point_object_opens_a_backend(tmp_path: Path) -> None:
    """The example's entry-point object takes a BackendURL and returns a working backend."""
    backend = open_minimal(parse_backend_url(f"minimal:{tmp_path / 'store.json'}"))
    try:
        assert verifyObject(IStorageBackend, backend)
        stored = await backend.apply(make_record("/k", b"v"))
        assert await backend.get("/k") == stored
    finally:
        await backend.close()
    assert (tmp_path / "store.json").exists()


def test_suite_counts_its_tests() -> None:
    """The suite holds at least 40 contract test functions; the count used by the end-to-end
    test below expands parameter rows, so it exceeds the number of functions."""
    functions = [name for name in dir(BackendComplianceTests) if name.startswith("test")]
    assert len(functions) >= 40
    assert expected_test_count(BackendComplianceTests) > len(functions)


SUITE_RULES_MODULE = """
import pytest

from minimal_backend import MinimalBackend
from navistore.backend.memory import MemoryBackend
from navistore.testing import BackendComplianceTests


class TestNothingOverridden(BackendComplianceTests):
    pass


class TestPersistentWithoutReopen(BackendComplianceTests):
    @pytest.fixture
    def make_backend(self, tmp_path):
        return MinimalBackend(tmp_path / "store.json")


class TestRamOnly(BackendComplianceTests):
    persistent = False

    @pytest.fixture
    def make_backend(self):
        return MemoryBackend()


class TestDeclaredWrongly(BackendComplianceTests):
    persistent = False

    @pytest.fixture
    def make_backend(self, tmp_path):
        return MinimalBackend(tmp_path / "store.json")
"""


@pytest.fixture(scope="module")
def suite_rule_results() -> dict[str, tuple[str, str]]:
    """Where :func:`suite_rule_outcomes` keeps what the one run of the small suites gave."""
    return {}


@pytest.fixture
def suite_rule_outcomes(
    suite_rule_results: dict[str, tuple[str, str]],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, tuple[str, str]]:
    """Run small suites that break the subclassing rules (once per module) in a pytest session
    of their own, in a directory holding them and the example backend; map each test id to its
    outcome (passed, failure, error or skipped) and message, as its JUnit XML report says.

    The session is a subprocess (``runpytest_subprocess``): the suites' tests run on
    pytest-twisted's reactor, and an in-process session would stop the reactor this session
    runs on when it ends (pytest-twisted stops its reactor at unconfigure, and a reactor
    cannot be restarted).
    """
    if suite_rule_results:
        return suite_rule_results
    pytester: pytest.Pytester = request.getfixturevalue("pytester")
    shutil.copy(MINIMAL_BACKEND_SOURCE, pytester.path / "minimal_backend.py")
    pytester.makepyfile(test_rules=SUITE_RULES_MODULE)
    monkeypatch.setenv("PYTHONPATH", str(REPOSITORY))  # the directory is put before it
    monkeypatch.delenv("PYTEST_PLUGINS", raising=False)
    report = pytester.path / "report.xml"
    selected = (
        "test_get_missing_key_is_none or test_records_survive_reopen"
        " or test_declares_kind_and_persistence"
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        # The suite does not use Hypothesis; loading its plugin would double the run's time.
        "-p",
        "no:hypothesispytest",
        "-k",
        selected,
        f"--junitxml={report}",
        "test_rules.py",
        timeout=300,
    )
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = child.tag, child.get("message", "") + (child.text or "")
        outcomes[test_id] = outcome, message
    # Four suites, three tests each: a run that collected something else says so here.
    assert len(outcomes) == 12, "\n".join(result.outlines + result.errlines)
    suite_rule_results.update(outcomes)
    return suite_rule_results


def test_base_make_backend_says_to_override_it(
    suite_rule_outcomes: dict[str, tuple[str, str]],
) -> None:
    """A suite that does not override ``make_backend`` errors, saying to override it."""
    outcome, message = suite_rule_outcomes["TestNothingOverridden::test_get_missing_key_is_none"]
    assert outcome == "error"
    assert "must override the make_backend fixture" in message


def test_persistent_suite_without_reopen_fails(
    suite_rule_outcomes: dict[str, tuple[str, str]],
) -> None:
    """``persistent = True`` without ``reopen_backend`` makes persistence tests fail (not skip,
    not pass), saying to override it or declare ``persistent = False``."""
    outcome, message = suite_rule_outcomes[
        "TestPersistentWithoutReopen::test_records_survive_reopen"
    ]
    assert outcome == "failure"
    assert "does not override the reopen_backend fixture" in message
    assert "persistent = False" in message
    others = suite_rule_outcomes["TestPersistentWithoutReopen::test_get_missing_key_is_none"]
    assert others[0] == "passed"


def test_ram_only_suite_reports_persistence_tests_not_applicable(
    suite_rule_outcomes: dict[str, tuple[str, str]],
) -> None:
    """``persistent = False`` reports persistence tests as skipped, saying not applicable."""
    outcome, message = suite_rule_outcomes["TestRamOnly::test_records_survive_reopen"]
    assert outcome == "skipped"
    assert "not applicable: memory declares persistent = False" in message


def test_persistent_backend_cannot_declare_itself_ram_only(
    suite_rule_outcomes: dict[str, tuple[str, str]],
) -> None:
    """A suite declaring ``persistent = False`` for a persistent backend (to skip the
    persistence tests) fails the declaration test."""
    outcome, _ = suite_rule_outcomes["TestDeclaredWrongly::test_declares_kind_and_persistence"]
    assert outcome == "failure"


@pytest.mark.e2e
def test_installed_navistore_ships_the_suite(installed_venv: Path, tmp_path: Path) -> None:
    """From outside the repository, an installed (non-editable) Navistore runs the whole suite
    against the example backend: every contract test passes but those of the optional
    ``IImmediateReads``, ``IPrefixChanges`` and ``ISizedReads``, which the example does not
    provide: they, and
    nothing else, are skipped as not applicable. Nothing fails."""
    project = tmp_path / "third_party_project"
    project.mkdir()
    assert REPOSITORY not in project.resolve().parents
    shutil.copy(MINIMAL_BACKEND_SOURCE, project / "minimal_backend.py")
    (project / "test_minimal_backend_compliance.py").write_text(
        textwrap.dedent(AUTHOR_TEST_MODULE), encoding="utf-8"
    )
    python = str(installed_venv / "python")

    where = subprocess.run(
        [python, "-c", "import navistore.testing, navistore; print(navistore.__file__)"],
        cwd=project,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert Path(where.stdout.strip()).resolve().is_relative_to(installed_venv.parent.resolve())

    run = subprocess.run(
        [python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(project)],
        cwd=project,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    passed = re.search(r"(\d+) passed", output)
    assert passed is not None, output
    skips = re.findall(r"^SKIPPED \[(\d+)\] .+?:\d+: (.*)$", output, re.MULTILINE)
    assert {reason for _count, reason in skips} == {
        "not applicable: minimal does not provide IImmediateReads",
        "not applicable: minimal does not provide IPrefixChanges",
        "not applicable: minimal does not provide ISizedReads",
        "not applicable: minimal does not provide IExpiringRecords",
        "not applicable: minimal does not provide IAtomicApply",
    }, output
    skipped = sum(int(count) for count, _reason in skips)
    assert re.search(rf"\b{skipped} skipped\b", output), output
    assert int(passed.group(1)) + skipped == expected_test_count(BackendComplianceTests), output
    assert not re.search(r"\d+ (failed|errors?)\b", output), output

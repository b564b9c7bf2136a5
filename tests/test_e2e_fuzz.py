"""Schemathesis against a real ``twistd navistore`` process: no server error, no answer that
breaks the OpenAPI document (docs/openapi.json, served at /_openapi.json).

Bounded for CI (about 1,500 cases a backend, deterministic generation, so a run repeats the
same cases); ``python bench/fuzz.py`` runs more. What the fuzzer is kept from doing, and why, is
in tests/support/fuzzing.py.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
from support.fuzzing import fuzz_node

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        platform.python_implementation() != "CPython",
        reason="Schemathesis is installed and run on CPython only (the test extra)",
    ),
]

#: Cases per operation: with the coverage phase's own cases, about 1,500 a run.
CASES = {"memory:": 8, "sqlite": 5}


@pytest.mark.parametrize("backend", sorted(CASES))
def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(
    tmp_path: Path, backend: str
) -> None:
    """Every answer Schemathesis provokes is documented: its status, content type, body and
    headers; methods the document does not list are 405 with a matching ``Allow``; requests
    without the token are refused 401; and nothing is a 5xx but a documented 504."""
    pytest.importorskip("schemathesis", reason="Schemathesis is in the test extra")
    url = backend if backend == "memory:" else f"sqlite:{tmp_path / 'fuzz.db'}"
    run = fuzz_node(tmp_path, backend=url, cases=CASES[backend], seed=0, timeout=600)
    report = run.output[-30000:]
    if "Traceback" in run.server_log:
        report += "\nthe node logged:\n" + run.server_log[-10000:]
    assert run.status == 0, report
    assert run.cases is not None and run.cases >= 500, report

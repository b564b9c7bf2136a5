"""Schemathesis against a real ``twistd navistore`` process: no server error, no answer that
breaks the OpenAPI document (docs/openapi.json, served at /_openapi.json).

Bounded for CI (about 2,600 cases in all, deterministic generation, so a run repeats the same
cases); ``python bench/fuzz.py`` runs more. What the fuzzer is kept from doing, and why, is
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

#: Per backend: cases per operation, per watch operation, and Schemathesis's phases. On
#: memory: every phase (the coverage phase's boundary cases are most of its 2,300 cases); on
#: sqlite, the random phases only (about 370 more).
RUNS = {
    "memory:": (5, 5, None),
    "sqlite": (5, 0, "fuzzing,stateful"),
}


@pytest.mark.parametrize("backend", sorted(RUNS))
def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(
    tmp_path: Path, backend: str
) -> None:
    """Every answer Schemathesis provokes is documented: its status, content type, body and
    headers; methods the document does not list are 405 with a matching ``Allow``; requests
    without the token are refused 401; and nothing is a 5xx but a documented 504."""
    pytest.importorskip("schemathesis", reason="Schemathesis is in the test extra")
    url = backend if backend == "memory:" else f"sqlite:{tmp_path / 'fuzz.db'}"
    cases, watch_cases, phases = RUNS[backend]
    run = fuzz_node(
        tmp_path,
        backend=url,
        cases=cases,
        watch_cases=watch_cases,
        phases=phases,
        seed=0,
        timeout=600,
    )
    report = run.output[-30000:]
    if "Traceback" in run.server_log:
        report += "\nthe node logged:\n" + run.server_log[-10000:]
    assert run.status == 0, report
    assert run.cases >= (1000 if phases is None else 150), report

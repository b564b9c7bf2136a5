"""Fuzzing a real node against its OpenAPI document with Schemathesis (the CLI, ``schemathesis
run``): the document as the fuzzer gets it, the node it runs against, and the command.

The fuzzer gets the node's own document (:func:`navistore.web.openapi.openapi_document`), narrowed
where a generated request would do harm or block, each for a reason (:func:`fuzz_document`):

- ``PUT /_peers`` and ``PUT /_replication_slaves`` are never called (``--exclude-operation-id``;
  they stay in the document, so that ``unsupported_method`` and ``Allow`` know them): a peer URL
  the fuzzer made up would make the node dial an arbitrary host (this machine may reach only
  loopback).
- Keys and prefixes do not start with ``_``: ``/_replication_slaves`` is a key path that is
  also that endpoint, so a generated key must not name it.
- Watches are left out (``?wait=true``, ``feed=longpoll`` and ``feed=eventsource``): each holds
  its request up to its timeout (60 s by default, 300 at most) or, for the event stream, until
  the node stops; the fuzzer would spend its time waiting. tests/test_feeds.py and
  tests/test_e2e_watch.py test them.

The node has a tokens file with one token of every permission, which the fuzzer sends, so that
the document's bearer scheme is what the node checks (``ignored_auth`` sends requests without it
and expects 401).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs

from navistore.web.openapi import openapi_document
from support.processes import running, twistd

__all__ = [
    "CHECKS",
    "CONFIG",
    "EXCLUDED_OPERATIONS",
    "FUZZ_SECRET",
    "FuzzRun",
    "fuzz_document",
    "fuzz_node",
    "schemathesis_command",
    "schemathesis_executable",
    "write_tokens",
]

#: The secret of the fuzzer's token (every permission).
FUZZ_SECRET = "fuzzer-secret-0123456789abcdef"

#: Operations the fuzzer never calls (see the module docstring).
EXCLUDED_OPERATIONS = ("add_peer", "set_replication_slaves")

#: What Schemathesis checks on every answer.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
)

#: Schemathesis's configuration: a 504 is a documented answer (``?replicas=N`` on a node with
#: fewer peers: the write is stored, not yet on the peers), not a server error.
CONFIG = """\
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "504"]
"""

_BLOCKING_PARAMETERS = frozenset({"wait", "index"})


def write_tokens(directory: Path) -> Path:
    """A tokens file with the fuzzer's token, in ``directory``."""
    path = directory / "fuzz-tokens.toml"
    path.write_text(
        "[[token]]\n"
        'name = "fuzzer"\n'
        f'secret = "{FUZZ_SECRET}"\n'
        'allow = ["read", "write", "admin", "peer"]\n',
        encoding="utf-8",
    )
    return path


def fuzz_document(**options: Any) -> dict[str, Any]:
    """The node's document (``options`` as :func:`openapi_document` takes them) as the fuzzer
    gets it: narrowed as the module docstring says."""
    document = copy.deepcopy(openapi_document(**options))
    for item in document["paths"].values():
        for method in list(item):
            found = item[method]
            if not isinstance(found, dict) or "operationId" not in found:
                continue
            parameters = found.get("parameters", [])
            found["parameters"] = [
                parameter
                for parameter in parameters
                if parameter["in"] != "query" or parameter["name"] not in _BLOCKING_PARAMETERS
            ]
            for parameter in found["parameters"]:
                if parameter["name"] == "feed":
                    parameter["schema"] = {"type": "string", "enum": ["normal"]}
        for parameter in item.get("parameters", []):
            if parameter["in"] == "path":
                parameter["schema"] = {**parameter["schema"], "pattern": "^[^_]"}
    return document


def schemathesis_command(
    executable: str,
    document: Path,
    config: Path,
    port: int,
    *,
    cases: int,
    seed: int,
    report: Path | None = None,
    workers: int = 1,
) -> list[str]:
    """The ``schemathesis run`` command fuzzing the node on ``port`` with ``cases`` cases per
    operation, reproducibly (``seed``, deterministic generation, which keeps no example
    database)."""
    command = [
        executable,
        "--config-file",
        str(config),
        "run",
        str(document),
        "--url",
        f"http://127.0.0.1:{port}",
        "--header",
        f"Authorization: Bearer {FUZZ_SECRET}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(cases),
        "--seed",
        str(seed),
        "--generation-deterministic",
        "--workers",
        str(workers),
        "--request-timeout",
        "10",
        "--no-color",
        "--continue-on-failure",
    ]
    for operation_id in EXCLUDED_OPERATIONS:
        command += ["--exclude-operation-id", operation_id]
    if report is not None:
        command += ["--report", "ndjson", "--report-ndjson-path", str(report)]
    return command


@attrs.frozen
class FuzzRun:
    """What one Schemathesis run against a real node reported.

    :ivar status: its exit status (0: no failure).
    :ivar output: everything it printed.
    :ivar cases: the test cases it generated (None if it did not say).
    :ivar seconds: how long it ran.
    :ivar server_log: what the node logged meanwhile.
    """

    status: int
    output: str
    cases: int | None
    seconds: float
    server_log: str


_CASES = re.compile(r"^\s*(\d+) generated", re.M)


def schemathesis_executable() -> str:
    """The ``schemathesis`` script beside the running Python."""
    return str(Path(sys.executable).parent / "schemathesis")


def fuzz_node(
    directory: Path,
    *,
    backend: str = "memory:",
    cases: int = 20,
    seed: int = 0,
    workers: int = 1,
    timeout: float = 1800,
) -> FuzzRun:
    """Start a node (``backend``, the fuzzer's token, ``--serve-backend``) on a loopback port in
    ``directory``, run Schemathesis against it with ``cases`` cases per operation, stop the
    node (by PID), and report."""
    tokens = write_tokens(directory)
    document = directory / "openapi-fuzz.json"
    document.write_text(json.dumps(fuzz_document()), encoding="utf-8")
    config = directory / "schemathesis.toml"
    config.write_text(CONFIG, encoding="utf-8")
    node = [*twistd(backend), "--tokens", str(tokens), "--serve-backend"]
    headers = {"Authorization": f"Bearer {FUZZ_SECRET}"}
    with running(node, directory, headers=headers) as server:
        server.wait_listening()
        command = schemathesis_command(
            schemathesis_executable(),
            document,
            config,
            server.port,
            cases=cases,
            seed=seed,
            workers=workers,
        )
        started = time.monotonic()
        finished = subprocess.run(
            command,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "NO_COLOR": "1"},
        )
        seconds = time.monotonic() - started
        server_log = server.output()
    output = finished.stdout + finished.stderr
    found = _CASES.search(output)
    return FuzzRun(
        finished.returncode,
        output,
        int(found.group(1)) if found else None,
        seconds,
        server_log,
    )

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
- Watches (``?wait=true``, ``feed=longpoll``) hold a request up to its timeout (60 s by
  default, 300 at most), so the main pass never sends them: it gets no ``wait`` and ``index``
  and only ``feed=normal``. A second pass (``watches=True``) sends only them, with ``wait`` and
  ``feed=longpoll`` set and a ``timeout`` of at most 0.2 s, and in positive mode alone, since a
  negative case may drop a required parameter (a 60 s wait without ``timeout``). The event
  stream (``feed=eventsource``) is never sent: it ends only when the node stops;
  tests/test_feeds.py and tests/test_e2e_watch.py test it.

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
    "WATCH_OPERATIONS",
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
    "missing_required_header",
    "ensure_resource_availability",
)
# Not use_after_free: after DELETE /k, GET /k?list=... is a listing (200), which that check
# takes for the deleted key.

#: Schemathesis's configuration: a 504 is a documented answer (``?replicas=N`` on a node with
#: fewer peers: the write is stored, not yet on the peers), not a server error; the only
#: required headers are a CORS preflight's, and an OPTIONS without them is no preflight: the
#: 405 the document gives it.
CONFIG = """\
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "504"]

[checks.missing_required_header]
expected-statuses = ["400", "401", "403", "405", "406", "415", "422"]
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


#: The operations of the watch pass, which sends nothing else.
WATCH_OPERATIONS = ("get_key", "list_root", "list_prefix", "changes")
#: The longest a watch of the fuzzer waits, in seconds.
WATCH_TIMEOUT = 0.2


def fuzz_document(*, watches: bool = False, **options: Any) -> dict[str, Any]:
    """The node's document (``options`` as :func:`openapi_document` takes them) as the fuzzer
    gets it: narrowed as the module docstring says, for the main pass or the watch pass."""
    document = copy.deepcopy(openapi_document(**options))
    for item in document["paths"].values():
        for method, found in item.items():
            if method == "parameters":
                continue
            watch = watches and found["operationId"] in WATCH_OPERATIONS
            kept = []
            for parameter in found.get("parameters", []):
                name = parameter["name"]
                if parameter["in"] != "query":
                    pass
                elif name in ("wait", "index") and not watch:
                    continue
                elif name == "wait":
                    parameter.update(required=True, schema={"type": "string", "enum": ["true"]})
                elif name == "feed":
                    parameter.update(
                        required=watch,
                        schema={"type": "string", "enum": ["longpoll" if watch else "normal"]},
                    )
                elif name == "timeout" and watch:
                    parameter.pop("allowEmptyValue", None)  # ``timeout=`` waits 60 s
                    parameter.update(
                        required=True,
                        schema={"type": "number", "minimum": 0, "maximum": WATCH_TIMEOUT},
                    )
                kept.append(parameter)
            if "parameters" in found:
                found["parameters"] = kept
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
    watches: bool = False,
    phases: str | None = None,
    checks: tuple[str, ...] = CHECKS,
    workers: int = 1,
) -> list[str]:
    """The ``schemathesis run`` command fuzzing the node on ``port`` with ``cases`` cases per
    operation, reproducibly (``seed``, deterministic generation, which keeps no example
    database); ``watches``: the watch pass (positive cases of the watch operations only);
    ``phases``: Schemathesis's phases (default all: examples, coverage, fuzzing, stateful)."""
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
        ",".join(checks),
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
    if phases is not None:
        command += ["--phases", phases]
    if watches:
        command += ["--mode", "positive"]
        for operation_id in WATCH_OPERATIONS:
            command += ["--include-operation-id", operation_id]
    else:
        for operation_id in EXCLUDED_OPERATIONS:
            command += ["--exclude-operation-id", operation_id]
    return command


@attrs.frozen
class FuzzRun:
    """What one Schemathesis run against a real node reported.

    :ivar status: its exit status (0: no failure).
    :ivar output: everything it printed.
    :ivar cases: the test cases it generated.
    :ivar seconds: how long it ran.
    :ivar server_log: what the node logged meanwhile.
    """

    status: int
    output: str
    cases: int
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
    watch_cases: int = 5,
    seed: int = 0,
    phases: str | None = None,
    checks: tuple[str, ...] = CHECKS,
    workers: int = 1,
    timeout: float = 1800,
) -> FuzzRun:
    """Start a node (``backend``, the fuzzer's token, ``--serve-backend``) on a loopback port in
    ``directory``, run Schemathesis against it (``cases`` cases per operation, then the watch
    pass with ``watch_cases``; 0 skips it) in ``phases`` (default all) with ``checks``, stop
    the node (by PID), and report both passes."""
    tokens = write_tokens(directory)
    config = directory / "schemathesis.toml"
    config.write_text(CONFIG, encoding="utf-8")
    passes = [(False, cases)] + ([(True, watch_cases)] if watch_cases else [])
    node = [*twistd(backend), "--tokens", str(tokens), "--serve-backend"]
    headers = {"Authorization": f"Bearer {FUZZ_SECRET}"}
    status, outputs, generated = 0, [], 0
    started = time.monotonic()
    with running(node, directory, headers=headers) as server:
        server.wait_listening()
        for watches, count in passes:
            document = directory / ("openapi-watches.json" if watches else "openapi-fuzz.json")
            document.write_text(json.dumps(fuzz_document(watches=watches)), encoding="utf-8")
            command = schemathesis_command(
                schemathesis_executable(),
                document,
                config,
                server.port,
                cases=count,
                seed=seed,
                watches=watches,
                phases=phases,
                checks=checks,
                workers=workers,
            )
            finished = subprocess.run(
                command,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, "NO_COLOR": "1"},
            )
            output = finished.stdout + finished.stderr
            outputs.append(output)
            status = status or finished.returncode
            found = _CASES.search(output)
            generated += int(found.group(1)) if found else 0
        server_log = server.output()
    return FuzzRun(status, "\n".join(outputs), generated, time.monotonic() - started, server_log)

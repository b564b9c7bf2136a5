"""Fuzz a real Navistore node against its OpenAPI document with Schemathesis, at length.

The CI test (``tests/test_e2e_fuzz.py``) runs a bounded number of cases; this runs as many as
asked, on the backend asked, and prints Schemathesis's report and a summary line::

    python bench/fuzz.py               # 200 cases per operation (20 per watch), memory:, seed 0
    python bench/fuzz.py --cases 1000 --backend sqlite --seed 7

Needs the test extra (``pip install '.[test]'``, which brings Schemathesis). The node runs on a
loopback port in a temporary directory and is stopped by PID at the end; what the fuzzer is kept
from doing, and why, is said in ``tests/support/fuzzing.py``. Exits 1 when Schemathesis found a
failure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.fuzzing import CHECKS, fuzz_node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", type=int, default=200, help="cases per operation")
    parser.add_argument(
        "--watch-cases", type=int, default=20, help="cases per watch operation (0: none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="Schemathesis's seed")
    parser.add_argument("--backend", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--workers", type=int, default=1, help="Schemathesis's workers")
    parser.add_argument(
        "--phases", help="Schemathesis's phases, e.g. fuzzing,stateful (default: all)"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds the whole run may take"
    )
    parser.add_argument(
        "--checks",
        default=",".join(CHECKS),
        help="Schemathesis's checks, comma-separated (default: the CI test's); 'all' adds "
        "negative_data_rejection and positive_data_acceptance, which flag every parameter the "
        "node reads only when it matters (timeout= without a wait) and keys the document "
        "cannot describe exactly",
    )
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="navistore-fuzz-") as name:
        directory = Path(name)
        backend = "memory:" if options.backend == "memory" else f"sqlite:{directory / 'fuzz.db'}"
        run = fuzz_node(
            directory,
            backend=backend,
            cases=options.cases,
            watch_cases=options.watch_cases,
            phases=options.phases,
            checks=tuple(options.checks.split(",")),
            seed=options.seed,
            workers=options.workers,
            timeout=options.timeout,
        )
    print(run.output)
    if run.status != 0 and "Traceback" in run.server_log:
        print("the node logged:\n" + run.server_log[-20000:])
    verdict = "no failure" if run.status == 0 else f"FAILED (schemathesis exited {run.status})"
    print(
        f"fuzz: {options.backend}, seed {options.seed}, {options.cases} cases per operation: "
        f"{run.cases} cases in {run.seconds:.1f} s, {verdict}"
    )
    return 0 if run.status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

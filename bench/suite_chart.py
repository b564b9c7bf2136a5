"""Draws the suite's throughput chart from its JSON: req/s by connections, GET and PUT, 100 B.

Run by ``bench/run.py`` with the benchmark venv's Python, which has matplotlib (the Python that
runs the suite itself needs nothing but the standard library). The Agg backend draws without a
display. Usage: ``python bench/suite_chart.py RESULTS.json CHART.png``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from suite_servers import BARE, BARE_PYPY, ETCD, MEMORY, SQLITE_NORMAL, SQLITE_NORMAL_PYPY

#: The servers the chart compares, in legend order (the PyPy ones only when measured).
CHARTED = [BARE, SQLITE_NORMAL, MEMORY, ETCD, BARE_PYPY, SQLITE_NORMAL_PYPY]
SIZE = 100


def draw(results: dict[str, Any], output: Path) -> None:
    rows = [row for row in results["summary"] if row["size"] == SIZE and "rps" in row]
    connections = sorted({row["conns"] for row in rows})
    servers = [name for name in CHARTED if any(row["server"] == name for row in rows)]
    figure, axes = plt.subplots(1, 2, figsize=(12, 5.5), sharey=False)
    width = 0.8 / max(1, len(servers))
    for axis, operation in zip(axes, ("GET", "PUT")):
        for index, server in enumerate(servers):
            rates = {
                row["conns"]: row["rps"]
                for row in rows
                if row["server"] == server and row["op"] == operation
            }
            positions = [
                position + (index - (len(servers) - 1) / 2) * width
                for position, count in enumerate(connections)
                if count in rates
            ]
            heights = [rates[count] for count in connections if count in rates]
            bars = axis.bar(positions, heights, width, label=server)
            axis.bar_label(bars, fmt="%.0f", fontsize=7, rotation=90, padding=2)
        axis.set_title(f"{operation}, {SIZE}-byte values")
        axis.set_xticks(range(len(connections)))
        axis.set_xticklabels([f"{count} connections" for count in connections])
        axis.set_ylabel("requests per second (median)")
        axis.margins(y=0.15)
        axis.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    machine = results.get("machine", {})
    figure.suptitle(
        f"Navistore vs bare twisted.web vs etcd, wrk on 127.0.0.1 "
        f"({machine.get('nproc', '?')} cores, medians of {results['options']['rounds']} "
        f"round(s) x {results['options']['seconds']:g} s)",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.1, 1, 1))  # leave the bottom to the legend
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)


def main() -> None:
    results = json.loads(Path(sys.argv[1]).read_text())
    draw(results, Path(sys.argv[2]))


if __name__ == "__main__":
    main()

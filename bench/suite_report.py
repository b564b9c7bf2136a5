"""Turns the suite's raw runs into the table and the JSON it leaves behind.

Each cell is the median over rounds (robust to one noisy round), errors are summed (one failed
request in any round matters), and the ratios compare medians of the same operation, value size
and connection count, so that a row reads "this fast relative to the bare resource / to etcd".
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from suite_servers import BARE, ETCD

DASH = "\u2014"


def size_label(size: int) -> str:
    return f"{size // 1024} KB" if size >= 1024 else f"{size} B"


def summarize(
    runs: list[dict[str, Any]],
    cold: list[dict[str, Any]],
    servers: list[str],
    skipped_get: set[str],
    cells: list[tuple[str, int, int]],
) -> list[dict[str, Any]]:
    """One row per server and cell (operation, size, connections), in table order."""
    by_cell: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    for run in runs:
        if "rps" in run:
            key = (run["server"], run["op"], run["size"], run["conns"])
            by_cell.setdefault(key, []).append(run)
    cold_p99 = {(c["server"], c["op"], c["size"], c["conns"]): c["p99_ms"] for c in cold}

    def median(server: str, cell: tuple[str, int, int], field: str) -> float | None:
        figures = by_cell.get((server, *cell))
        return statistics.median(run[field] for run in figures) if figures else None

    rows = []
    for cell in cells:
        bare, etcd = median(BARE, cell, "rps"), median(ETCD, cell, "rps")
        for server in servers:
            operation, size, connections = cell
            row: dict[str, Any] = {
                "server": server,
                "op": operation,
                "size": size,
                "conns": connections,
                "rounds": len(by_cell.get((server, *cell), [])),
            }
            if operation == "GET" and server in skipped_get:
                row["skipped"] = "same read path as another row"
            rps = median(server, cell, "rps")
            if rps is not None:
                row.update(
                    rps=rps,
                    p50_ms=median(server, cell, "p50_ms"),
                    p99_ms=median(server, cell, "p99_ms"),
                    errors=sum(run["errors"] for run in by_cell[(server, *cell)]),
                    rps_rounds=[run["rps"] for run in by_cell[(server, *cell)]],
                    vs_bare=rps / bare if bare else None,
                    vs_etcd=rps / etcd if etcd else None,
                )
            if (server, *cell) in cold_p99:
                row["cold_p99_ms"] = cold_p99[(server, *cell)]
            rows.append(row)
    return rows


def _number(value: float | None, pattern: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return pattern.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The fixed-width table the suite prints; a blank line between cells keeps blocks readable."""
    width = max([len(row["server"]) for row in rows] + [6])
    columns = [("req/s", 8), ("p50 ms", 8), ("p99 ms", 8), ("errors", 7)]
    columns += [("x bare", 7), ("x etcd", 7), ("cold p99", 9)]
    header = f"{'server':{width}}  {'op':4} {'size':>6} {'conns':>6}  " + " ".join(
        title.rjust(columns_width) for title, columns_width in columns
    )
    lines = [header, "-" * len(header)]
    previous = None
    for row in rows:
        cell = (row["op"], row["size"], row["conns"])
        if previous is not None and cell != previous:
            lines.append("")
        previous = cell
        figures = [
            _number(row.get("rps"), "{:.0f}").rjust(8),
            _number(row.get("p50_ms"), "{:.2f}").rjust(8),
            _number(row.get("p99_ms"), "{:.2f}").rjust(8),
            _number(row.get("errors"), "{:d}").rjust(7),
            _number(row.get("vs_bare"), "{:.2f}").rjust(7),
            _number(row.get("vs_etcd"), "{:.2f}").rjust(7),
            _number(row.get("cold_p99_ms"), "{:.2f}").rjust(9),
        ]
        lines.append(
            f"{row['server']:{width}}  {row['op']:4} {size_label(row['size']):>6} "
            f"{row['conns']:6}  " + " ".join(figures)
        )
    return "\n".join(lines)

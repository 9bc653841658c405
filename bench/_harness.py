"""Shared pieces of the benchmarks: the machine, a timer, and a markdown table."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = []
    for package in ("infolens", "torch", "numpy", "scipy", "scikit-learn", "faiss-cpu"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; " + ", ".join(versions)


def timed(fn, repeat: int = 1):
    """(best wall time in seconds over `repeat` calls, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """Rows printed as they come (long runs show progress), then the machine and the whole table."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, **row):
        self.rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)

    def finish(self):
        """The machine, then one table per set of columns (cases of different kinds differ)."""
        print(f"\n{machine()}")
        groups: dict[tuple, list[dict]] = {}
        for row in self.rows:
            groups.setdefault(tuple(row), []).append(row)
        for rows in groups.values():
            print()
            print(table(rows))

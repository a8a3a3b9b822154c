"""Shared benchmark harness: timing, machine facts, JSON results and an Rscript runner.

Generic on purpose (any family's benchmark can use it)::

    from harness import Timer, machine_facts, run_r, save_results
    t = Timer.measure(lambda: fit(df), repeats=3)     # median and all runs, seconds
    r = run_r(r_code, data=df, timeout=600)           # R prints one JSON line: {"time": ..., ...}
    save_results("results.json", {"machine": machine_facts(), "rows": rows})

R is optional: :func:`have_r` says whether ``Rscript`` is on the PATH, and :func:`run_r` returns
``{"skipped": reason}`` instead of raising when it is not or when R fails or times out.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

__all__ = [
    "Timer", "have_r", "machine_facts", "median_runs", "rscript_available", "run_r", "save_results", "timed",
    "write_results",
]


@dataclass
class Timer:
    """Wall-clock times of repeated calls; ``median`` is what tables quote."""

    runs: list[float] = field(default_factory=list)
    value: object = None

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @classmethod
    def measure(cls, fn: Callable[[], object], repeats: int = 3) -> Timer:
        t = cls()
        for _ in range(repeats):
            t0 = time.perf_counter()
            t.value = fn()
            t.runs.append(time.perf_counter() - t0)
        return t

    def as_dict(self) -> dict:
        return {"median": self.median, "runs": self.runs}


def machine_facts() -> dict:
    """Date, CPU, core count, memory, load and library versions of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = round(int(fh.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    import numpy
    import scipy

    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem,
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }


def have_r() -> bool:
    return shutil.which("Rscript") is not None


def run_r(code: str, data=None, timeout: float = 900.0) -> dict:
    """Run R ``code`` in a fresh ``Rscript``; the data frame (if any) is read from CSV as ``df``.

    The code must ``cat()`` one JSON object on its last output line (``jsonlite::toJSON(..., auto_unbox =
    TRUE)``). Returns that object, or ``{"skipped": reason}``.
    """
    if not have_r():
        return {"skipped": "Rscript not found"}
    with tempfile.TemporaryDirectory() as tmp:
        prelude = ""
        if data is not None:
            path = os.path.join(tmp, "data.csv")
            data.to_csv(path, index=False)
            prelude = f'df <- utils::read.csv("{path}")\n'
        script = os.path.join(tmp, "bench.R")
        with open(script, "w") as fh:
            fh.write(prelude + code)
        try:
            out = subprocess.run(["Rscript", script], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"skipped": f"R timed out after {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"skipped": f"R failed: {out.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


def save_results(path: str, results: dict) -> None:
    """Write results (dataclasses converted) as indented JSON."""

    def default(o):
        if hasattr(o, "__dataclass_fields__"):
            return asdict(o)
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    with open(path, "w") as fh:
        json.dump(results, fh, indent=2, default=default)


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """``(result, wall seconds, CPU seconds of this process)`` of ``fn()``."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def median_runs(fn: Callable[[], dict], repeats: int) -> dict:
    """Run ``fn`` (returning a dict with ``seconds``) ``repeats`` times; the last run's fields, every
    run's seconds in ``runs`` and their median in ``seconds``."""
    runs = [fn() for _ in range(max(1, repeats))]
    out = dict(runs[-1])
    out["runs"] = [r.get("seconds") for r in runs]
    secs = [s for s in out["runs"] if s is not None]
    out["seconds"] = statistics.median(secs) if secs else None
    return out


def write_results(path: str, facts: dict, results: list[dict]) -> None:
    """Write ``{"machine": facts, "results": results}`` as JSON."""
    with open(path, "w") as fh:
        json.dump({"machine": facts, "results": results}, fh, indent=1, default=str)


def rscript_available() -> bool:
    """Whether ``Rscript`` is on the PATH (same as :func:`have_r`)."""
    return have_r()

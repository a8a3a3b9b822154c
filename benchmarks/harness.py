"""Shared benchmark helpers: timing, machine facts, an Rscript runner and JSON results.

Kept small and generic so that every ``bench_*.py`` can use it:

* :func:`timed` -- wall-clock and CPU seconds of one call (CPU time shows how much of the wall time a
  loaded, shared machine took away);
* :func:`median_runs` -- repeat a call, keep every run and the median;
* :func:`rscript_available` / :func:`run_r` -- run an R snippet with ``Rscript`` that prints one JSON line
  (``cat(jsonlite::toJSON(...))``), with a timeout; returns ``None`` with a message where R is missing;
* :func:`machine_facts` -- CPU, cores, memory, load, library versions;
* :func:`write_results` -- one JSON file with the facts and all runs.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable

__all__ = ["machine_facts", "median_runs", "rscript_available", "run_r", "timed", "write_results"]


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


def rscript_available() -> bool:
    """Whether ``Rscript`` is on the PATH."""
    return shutil.which("Rscript") is not None


def run_r(code: str, timeout: float = 900.0) -> dict | None:
    """Run an R snippet that prints one JSON object on a line of its own; parse it.

    Returns ``None`` when Rscript is missing (a message is printed), ``{"error": ...}`` when the script
    fails or times out.
    """
    if not rscript_available():
        print("Rscript not found: the R peers are skipped")
        return None
    try:
        proc = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:] or ["no output"]
        return {"error": " | ".join(tail)[:300]}
    return json.loads(lines[-1])


def machine_facts() -> dict:
    """CPU model, cores, memory, load average and the versions of the numeric libraries."""
    import numpy

    facts: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "numpy": numpy.__version__,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = [ln for ln in fh if ln.startswith("model name")]
        facts["cpu"] = cpu[0].split(":", 1)[1].strip() if cpu else platform.processor()
        with open("/proc/meminfo") as fh:
            total_kib = int(re.search(r"MemTotal:\s+(\d+)", fh.read()).group(1))
        facts["memory_gib"] = round(total_kib / 2**20)
        facts["load_average"] = os.getloadavg()
    except (OSError, AttributeError):
        pass
    for mod in ("scipy", "pandas", "memoe"):
        try:
            facts[mod] = __import__(mod).__version__
        except Exception:
            facts[mod] = "not installed"
    return facts


def write_results(path: str, facts: dict, results: list[dict]) -> None:
    """Write ``{"machine": facts, "results": results}`` as JSON."""
    with open(path, "w") as fh:
        json.dump({"machine": facts, "results": results}, fh, indent=1, default=str)

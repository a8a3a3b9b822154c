"""Benchmark of the linear mixed model fit: memoe against mixedlm (PyPI, Rust) and statsmodels MixedLM.

Workloads (data simulated here, deterministic seeds):

* ``long_N{N}``: ``y ~ t + x + (t | id)``, N subjects x 10 visits (t = 0..9), correlated random
  intercept and slope, N = 1,000 / 10,000 / 100,000 (10,000 to 1,000,000 rows).
* ``insteval``: ``y ~ service + (1 | s) + (1 | d)`` with InstEval's sizes: 73,421 rows, 2,972 students
  (s) x 1,128 lecturers (d), every (s, d) pair distinct as in the real InstEval, ratings per student
  with InstEval's spread (mean 24.7, sd 15.2, 1 to 92) and lecturers of very unequal popularity
  (median 31 ratings, as InstEval). Students pick lecturers at random by popularity, so more
  lecturer pairs share a student than in the real data (284,000 against 129,000 nonzeros in the
  upper triangle of Z_d'Z_s Z_s'Z_d): a slightly harder case for the sparse part.
* ``insteval_real`` (optional): the real InstEval as shipped in the mixedlm package.

What is timed: the whole fitting call from the loaded DataFrame, model-matrix building included:
``memoe.lmm(formula, df).fit(reml=True)``, ``mixedlm.lmer(formula, df, REML=True)`` and
``smf.mixedlm(..., groups=, re_formula="~t").fit(reml=True, method="lbfgs")``.

Method: every fit runs in a fresh Python process (``--worker``); tools and repeats are interleaved
(repeat 1 of every tool and workload, then repeat 2, ...) and the median is reported, so all tools
see the same machine load. In the worker the libraries are imported, the data simulated, and a
small warm-up fit of the same formula is run (lazy imports, first-call costs); then ``gc.collect()``
and glibc ``malloc_trim(0)`` return freed memory, the process's peak-RSS mark is reset
(``/proc/self/clear_refs``, value 5) and the current RSS is taken as the baseline. Memory added by
the fit = peak RSS during the fit (``VmHWM``) - baseline: everything the fit allocates beyond the
loaded DataFrame, native (Rust, BLAS) allocations included. It is compared with the size of the
used columns as float64 (rows x columns of the formula x 8 bytes).

statsmodels is run with ``method="lbfgs"`` (its default optimiser stops at worse optima) under a
time cap; a size is skipped when the median at the previous size, scaled by the row ratio, exceeds
the cap, and the skip is reported. Its crossed (variance-component) formulation of the InstEval
model is not run (dense, hours at this size).

Usage::

    python benchmarks/bench_lmm.py                       # all workloads, 3 repeats
    python benchmarks/bench_lmm.py --workloads long_N1000,insteval --repeats 1
    python benchmarks/bench_lmm.py --json results.json   # also save every run

mixedlm must be installed in the running environment (``pip install mixedlm``); it is a benchmark
baseline only and never a dependency of memoe.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import pandas as pd

WORKLOADS = {
    "long_N1000": ("long", 1_000),
    "long_N10000": ("long", 10_000),
    "long_N100000": ("long", 100_000),
    "insteval": ("insteval", None),
    # optional: the real InstEval as shipped inside the mixedlm package (not in the default list)
    "insteval_real": ("insteval", "real"),
}
DEFAULT_WORKLOADS = ("long_N1000", "long_N10000", "long_N100000", "insteval")
FORMULAS = {
    "long": "y ~ t + x + (t | id)",
    "insteval": "y ~ service + (1 | s) + (1 | d)",
}
USED_COLUMNS = {"long": 4, "insteval": 4}  # y, t, x, id / y, service, s, d
TOOLS = ("memoe", "mixedlm", "statsmodels")


# ---------------------------------------------------------------------------------------------- data
def simulate_long(N: int, visits: int = 10, seed: int = 20240611) -> pd.DataFrame:
    """N subjects x ``visits`` rows: random intercept and slope (sd 1 and 0.3, correlation 0.3)."""
    rng = np.random.default_rng(seed + N)
    n = N * visits
    ids = np.repeat(np.arange(N), visits)
    t = np.tile(np.arange(visits, dtype=float), N)
    x = rng.standard_normal(n)
    cov = np.array([[1.0, 0.3 * 0.3], [0.3 * 0.3, 0.09]])
    b = rng.multivariate_normal([0.0, 0.0], cov, size=N)
    y = 1.0 + 0.5 * t + 0.3 * x + b[ids, 0] + b[ids, 1] * t + rng.standard_normal(n)
    return pd.DataFrame({"y": y, "t": t, "x": x, "id": ids})


def simulate_insteval(seed: int = 20240612, n: int = 73_421, n_s: int = 2_972, n_d: int = 1_128) -> pd.DataFrame:
    """InstEval-sized crossed design with all (s, d) pairs distinct."""
    rng = np.random.default_rng(seed)
    # ratings per student: negative binomial with InstEval's mean 24.7 and sd 15.2, within 1..92
    mu, sd = 24.7, 15.2
    r = mu * mu / (sd * sd - mu)
    k = np.clip(rng.negative_binomial(r, r / (r + mu), n_s), 1, 92)
    while k.sum() != n:  # adjust one student at a time to the exact total
        i = rng.integers(n_s)
        if k.sum() > n and k[i] > 1:
            k[i] -= 1
        elif k.sum() < n and k[i] < 92:
            k[i] += 1
    # lecturer popularity: log-normal with InstEval's mean/median ratings per lecturer (65 / 31)
    logw = rng.normal(0.0, np.sqrt(2 * np.log(65 / 31)), n_d)
    # each student rates k_s distinct lecturers, drawn with probability ~ popularity (Gumbel top-k)
    keys = logw[None, :] + rng.gumbel(size=(n_s, n_d))
    order = np.argsort(-keys, axis=1)
    del keys
    take = np.arange(n_d)[None, :] < k[:, None]
    s = np.repeat(np.arange(n_s), k)
    d = order[take]
    del order, take
    missing = np.setdiff1d(np.arange(n_d), d)
    if len(missing):  # every lecturer rated at least once: give each unrated one a rating
        rows = rng.choice(n, len(missing), replace=False)
        d[rows] = missing
        dup = pd.DataFrame({"s": s, "d": d}).duplicated().to_numpy()
        if dup.any():  # keep pairs distinct (rare)
            keep = ~dup
            s, d = s[keep], d[keep]
    service = (rng.random(len(s)) < 0.43).astype(int)
    y = (
        3.2
        - 0.07 * service
        + rng.normal(0.0, 0.33, n_s)[s]
        + rng.normal(0.0, 0.52, n_d)[d]
        + rng.normal(0.0, 1.18, len(s))
    )
    return pd.DataFrame({"y": y, "service": pd.Categorical(service.astype(str)), "s": s, "d": d})


def simulate(workload: str) -> pd.DataFrame:
    kind, N = WORKLOADS[workload]
    if N == "real":
        import mixedlm

        real = mixedlm.load_insteval()
        return pd.DataFrame(
            {
                "y": real["y"].astype(float),
                "service": pd.Categorical(real["service"].astype(str)),
                "s": pd.Categorical(real["s"]),
                "d": pd.Categorical(real["d"]),
            }
        )
    return simulate_long(N) if kind == "long" else simulate_insteval()


# ---------------------------------------------------------------------------------------------- worker
def _status() -> dict[str, float]:
    with open("/proc/self/status") as fh:
        text = fh.read()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) / 1024.0 for k in ("VmRSS", "VmHWM")}


def _reset_peak() -> bool:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _fit_memoe(formula: str, df: pd.DataFrame) -> dict:
    import memoe
    from memoe.lmm.objective import PLSProblem

    calls = [0]
    original = PLSProblem.deviance

    def counted(self, theta, reml):
        calls[0] += 1
        return original(self, theta, reml)

    PLSProblem.deviance = counted
    t0 = time.perf_counter()
    fit = memoe.lmm(formula, df).fit(reml=True)
    seconds = time.perf_counter() - t0
    PLSProblem.deviance = original
    return {
        "seconds": seconds,
        "reml": float(fit.reml_criterion),
        "evals": calls[0],
        "bobyqa_evals": int(fit.opt.feval),
        "fixef": [float(v) for v in fit.fixef.to_numpy()],
    }


def _fit_mixedlm(formula: str, df: pd.DataFrame) -> dict:
    import mixedlm

    t0 = time.perf_counter()
    fit = mixedlm.lmer(formula, df, REML=True)
    seconds = time.perf_counter() - t0
    crit = fit.REMLcrit() if callable(fit.REMLcrit) else fit.REMLcrit
    evals = getattr(fit, "function_evals", None)
    return {"seconds": seconds, "reml": float(crit), "evals": int(evals) if evals is not None else None}


def _fit_statsmodels(formula: str, df: pd.DataFrame) -> dict:
    import warnings

    import statsmodels.formula.api as smf

    if "(t | id)" not in formula:
        raise NotImplementedError("only the longitudinal model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        fit = smf.mixedlm("y ~ t + x", df, groups=df["id"], re_formula="~t").fit(reml=True, method="lbfgs")
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "reml": float(-2.0 * fit.llf), "evals": None}


FITTERS = {"memoe": _fit_memoe, "mixedlm": _fit_mixedlm, "statsmodels": _fit_statsmodels}


def worker(tool: str, workload: str) -> dict:
    """One fit in this (fresh) process; prints a JSON line."""
    import warnings

    warnings.simplefilter("ignore")
    kind, _ = WORKLOADS[workload]
    formula = FORMULAS[kind]
    fitter = FITTERS[tool]
    df = simulate(workload)
    # warm-up on a small data set of the same shape: lazy imports and first-call costs
    small = simulate_long(60) if kind == "long" else simulate_insteval(n=3_000, n_s=200, n_d=80)
    fitter(formula, small)
    del small
    exact = _reset_peak()
    base = _status()["VmRSS"]
    out = fitter(formula, df)
    peak = _status()["VmHWM"]
    out.update(
        tool=tool,
        workload=workload,
        rows=len(df),
        used_mib=len(df) * USED_COLUMNS[kind] * 8 / 2**20,
        base_rss_mib=base,
        added_mib=peak - base,
        peak_reset=exact,
    )
    return out


# ---------------------------------------------------------------------------------------------- driver
def machine_facts() -> dict:
    import numpy

    facts = {"python": platform.python_version(), "cores": os.cpu_count(), "numpy": numpy.__version__}
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = [ln for ln in fh if ln.startswith("model name")]
        facts["cpu"] = cpu[0].split(":", 1)[1].strip() if cpu else platform.processor()
        with open("/proc/meminfo") as fh:
            total_kib = int(re.search(r"MemTotal:\s+(\d+)", fh.read()).group(1))
        facts["memory_gib"] = round(total_kib / 2**20)
    except OSError:
        pass
    try:
        cfg = numpy.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        facts["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        facts["numpy_blas"] = "unknown"
    for mod in ("scipy", "pandas", "memoe", "mixedlm", "statsmodels"):
        try:
            facts[mod] = __import__(mod).__version__
        except Exception:
            facts[mod] = "not installed"
    facts["OPENBLAS_NUM_THREADS"] = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    return facts


def run_one(tool: str, workload: str, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", tool, workload]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "workload": workload, "error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"tool": tool, "workload": workload, "error": tail[0][:200]}
    return json.loads(lines[-1])


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g} s" if v < 10 else f"{v:.1f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", nargs=2, metavar=("TOOL", "WORKLOAD"), help=argparse.SUPPRESS)
    ap.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS), help=f"any of {', '.join(WORKLOADS)}")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0, help="per fit, seconds")
    ap.add_argument("--sm-cap", type=float, default=240.0, help="statsmodels: skip sizes projected above this")
    ap.add_argument("--json", help="write all runs and the machine facts here")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0

    workloads = [w for w in args.workloads.split(",") if w]
    tools = [t for t in args.tools.split(",") if t]
    facts = machine_facts()
    print("machine:", json.dumps(facts))
    runs: list[dict] = []
    skipped: dict[tuple[str, str], str] = {}
    for rep in range(args.repeats):
        for w in workloads:
            for tool in tools:
                key = (tool, w)
                if tool == "statsmodels" and WORKLOADS[w][0] != "long":
                    skipped[key] = "not run: crossed variance components are dense (hours at this size)"
                if key in skipped:
                    continue
                if tool == "statsmodels":
                    reason = _projected_skip(runs, w, args.sm_cap)
                    if reason:
                        skipped[key] = reason
                        continue
                r = run_one(tool, w, args.timeout)
                r["repeat"] = rep
                runs.append(r)
                if "error" in r:
                    skipped[key] = r["error"]
                msg = r.get("error") or f"{r['seconds']:.3f} s, +{r['added_mib']:.0f} MiB, REML {r['reml']:.6f}"
                print(f"[{rep + 1}/{args.repeats}] {w:14s} {tool:12s} {msg}", flush=True)
    table = summarise(runs, workloads, tools, skipped)
    print()
    print(table)
    if args.json:
        with open(args.json, "w") as fh:
            skips = {f"{k[0]}:{k[1]}": v for k, v in skipped.items()}
            json.dump({"machine": facts, "runs": runs, "skipped": skips}, fh, indent=1)
    return 0


def _projected_skip(runs: list[dict], workload: str, cap: float) -> str | None:
    """Skip statsmodels at a size whose projected time (previous size x row ratio) exceeds ``cap``."""
    kind, N = WORKLOADS[workload]
    if not isinstance(N, int):
        return None
    smaller = [w for w, (k, n) in WORKLOADS.items() if k == kind and isinstance(n, int) and n < N]
    for w in sorted(smaller, key=lambda w: -WORKLOADS[w][1]):
        times = [r["seconds"] for r in runs if r["tool"] == "statsmodels" and r["workload"] == w and "seconds" in r]
        if times:
            projected = statistics.median(times) * N / WORKLOADS[w][1]
            if projected > cap:
                base = statistics.median(times)
                return f"skipped: projected {projected:.0f} s (> {cap:.0f} s cap) from {base:.1f} s at {w}"
            return None
    return None


def summarise(runs: list[dict], workloads: list[str], tools: list[str], skipped: dict) -> str:
    def med(tool, w, field):
        vals = [r[field] for r in runs if r["tool"] == tool and r["workload"] == w and r.get(field) is not None]
        return statistics.median(vals) if vals else None

    head = (
        "| workload | rows | memoe | mixedlm | statsmodels (lbfgs) | mixedlm / memoe | statsmodels / memoe "
        "| memoe evaluations | memory added: memoe / mixedlm / statsmodels | memoe added / used columns "
        "| REML criterion: memoe / mixedlm / statsmodels (max abs diff) |"
    )
    lines = [head, "|" + "---|" * 11]
    notes = []
    for w in workloads:
        rows = next((r["rows"] for r in runs if r["workload"] == w and "rows" in r), None)
        used = next((r["used_mib"] for r in runs if r["workload"] == w and "used_mib" in r), None)
        t = {tool: med(tool, w, "seconds") for tool in TOOLS}
        mem = {tool: med(tool, w, "added_mib") for tool in TOOLS}
        crit = {tool: med(tool, w, "reml") for tool in TOOLS}
        ev = med("memoe", w, "evals")
        for tool in TOOLS:
            if (tool, w) in skipped and tool in tools:
                notes.append(f"{tool} {w}: {skipped[(tool, w)]}")
        ratio = lambda a, b: f"{a / b:.1f}x" if a is not None and b else "-"  # noqa: E731
        got = [c for c in crit.values() if c is not None]
        diff = max(got) - min(got) if len(got) > 1 else None
        lines.append(
            "| {w} | {rows:,} | {a} | {b} | {c} | {r1} | {r2} | {ev} | {m1} / {m2} / {m3} MiB | {frac} | {cr} |".format(
                w=w,
                rows=rows or 0,
                a=_fmt_s(t["memoe"]),
                b=_fmt_s(t["mixedlm"]),
                c=_fmt_s(t["statsmodels"]),
                r1=ratio(t["mixedlm"], t["memoe"]),
                r2=ratio(t["statsmodels"], t["memoe"]),
                ev="-" if ev is None else f"{ev:.0f}",
                m1="-" if mem["memoe"] is None else f"{mem['memoe']:.0f}",
                m2="-" if mem["mixedlm"] is None else f"{mem['mixedlm']:.0f}",
                m3="-" if mem["statsmodels"] is None else f"{mem['statsmodels']:.0f}",
                frac="-" if mem["memoe"] is None or not used else f"{mem['memoe'] / used:.2f}x of {used:.1f} MiB",
                cr=" / ".join("-" if crit[tool] is None else f"{crit[tool]:.6f}" for tool in TOOLS)
                + ("" if diff is None else f" ({diff:.1e})"),
            )
        )
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


if __name__ == "__main__":
    sys.exit(main())

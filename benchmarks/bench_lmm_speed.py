"""LMM speed (issue 13): memoe against lme4 (Rscript) and mixedlm, same run, same data.

Workloads (``lmm_workloads.py``, deterministic seeds):

* ``long_1m``: ``y ~ t + x + (t | id)``, 100,000 subjects x 10 visits, REML, end to end from the
  DataFrame (formula, factor coding, sufficient statistics, fit); the design is also timed alone.
* ``nested``: ``y ~ x + (1 | g) + (1 | g:h)``, 10,000 g x 2 h (the issue-13 crash report, 60,000 rows).
* ``insteval3``: InstEval shape, ``y ~ service + (1 | s) + (1 | d) + (1 | dept:service)``.
* ``movielens``: MovieLens-1M shape, ``y ~ 1 + (1 | user) + (1 | item)`` (about 1,000,000 ratings,
  6,040 x 3,706, log-normal degree skew).
* ``crossed_1m``: 1,000,000 rows, 50,000 x 20,000 uniformly crossed levels (not in the default list).
* group ``small`` (``--workloads small``): ``kb07`` (kb07 shape, 1,789 rows, ``(1 + spkr + prec | subj) +
  (1 + spkr + prec | item)``), ``sleepstudy``, ``penicillin`` (crossed), ``pastes`` (nested). A fit takes
  milliseconds, so both sides are timed as the median of ``--small-repeats`` fits after a warm-up fit,
  wall clock *and* process CPU (on a shared machine the CPU time is the comparable figure).
* group ``panel`` (``--workloads panel``): realistic small and medium shapes beyond those four, timed as
  ``small`` (``PANEL`` below: uncorrelated slopes ``||``, three-level nesting, ML, prior weights, q = 3,
  one factor with 500 / 5,000 subjects, a 10,000-row crossed design, crossed with slopes on one factor,
  ``(1 | g:h)``, and the datasets memoe ships that R also has).

memoe: median wall and process-CPU seconds of ``--repeats`` fits in this process after a small warm-up fit
of the same formula (first-call costs), the design alone, the number of evaluations, the path taken for the
Schur complement (``dense``/``sparse``), and the memory added by one fit (peak RSS during the fit minus the
RSS with the DataFrame loaded, after ``malloc_trim``; compared with rows x used columns x 8 bytes).
The machine is shared: compare CPU seconds and ratios of one run; the load average is printed.
lme4: one ``lmer(..., REML = TRUE)`` in a fresh Rscript, ``system.time`` of the call only.
mixedlm: run when importable, else skipped with a message.

Usage::

    python benchmarks/bench_lmm_speed.py --workloads nested,insteval3 --repeats 3 --json out.json
    python benchmarks/bench_lmm_speed.py --workloads long_1m --profile    # CPU and memory per stage
    python benchmarks/bench_lmm_speed.py --workloads insteval3 --no-r --no-mixedlm --busy-core   # other core busy
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import have_r, machine_facts, run_r, save_results, timed
from lmm_workloads import GROUPS, SIMULATORS

DEFAULT = ("long_1m", "nested", "insteval3", "movielens")
# FitControl for every memoe fit (--optimizer)
_CONTROL: dict = {}
R_CODE = """
suppressMessages(library(lme4))
for (v in {groups}) df[[v]] <- factor(df[[v]])
t <- system.time(fit <- lmer({formula}, data = df, REML = TRUE))[["elapsed"]]
cat(jsonlite::toJSON(list(time = t, loglik = as.numeric(logLik(fit)), version = as.character(packageVersion("lme4"))),
    auto_unbox = TRUE, digits = NA), "\\n")
"""


R_SMALL = """
suppressMessages(library(lme4))
for (v in {groups}) df[[v]] <- factor(df[[v]])
fit <- lmer({formula}, data = df, REML = {reml}{weights})
w <- numeric(0); cpu <- numeric(0)
for (i in seq_len({repeats})) {{
  t <- system.time(fit <- lmer({formula}, data = df, REML = {reml}{weights}))
  w <- c(w, t[["elapsed"]]); cpu <- c(cpu, t[["user.self"]] + t[["sys.self"]])
}}
cat(jsonlite::toJSON(list(time = median(w), cpu = median(cpu), feval = fit@optinfo$feval,
    loglik = as.numeric(logLik(fit)), version = as.character(packageVersion("lme4"))),
    auto_unbox = TRUE, digits = NA), "\\n")
"""


def bench_small(df, formula: str, repeats: int, reml: bool = True, weights: str | None = None) -> dict:
    """memoe on a small problem: median wall and process-CPU seconds of ``repeats`` fits after a warm-up."""
    import statistics
    import warnings

    import memoe

    walls, cpus = [], []
    with warnings.catch_warnings():
        # kb07's maximal model is a singular fit (as in lme4): the warning is not what is measured
        warnings.simplefilter("ignore")
        memoe.lmm(formula, df, weights=weights).fit(reml=reml, control=_CONTROL)
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            fit = memoe.lmm(formula, df, weights=weights).fit(reml=reml, control=_CONTROL)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    return {
        "time": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "feval": int(fit.opt.feval),
        "loglik": float(fit.loglik),
        "schur": fit.model.problem.path,
        "mz": int(fit.model.problem.mz),
    }


def _names(spec: str) -> list[str]:
    """Workload names of ``--workloads`` (groups ``small`` and ``panel`` expanded)."""
    groups = dict(GROUPS, panel=tuple(PANEL))
    return [w for g in spec.split(",") for w in groups.get(g, (g,))]


def _simulate(name: str):
    return PANEL[name][0]() if name in PANEL else SIMULATORS[name]()


# ---- the ``panel`` group: realistic small/medium shapes (deterministic seeds) -------------------------------

def _panel_long(seed: int, n_id: int, visits: int, q3: bool = False, weights: bool = False):
    """Longitudinal ``y ~ t (+ t2) + (t | id)``-type data: n_id subjects x visits, random intercept and slope."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    idx = np.repeat(np.arange(n_id), visits)
    t = np.tile(np.arange(visits, dtype=float), n_id) + rng.uniform(-0.3, 0.3, n_id * visits)
    b = rng.standard_normal((n_id, 3)) * np.array([2.0, 0.5, 0.08])
    y = 10 + 0.8 * t - 0.05 * t**2 + b[idx, 0] + b[idx, 1] * t + (b[idx, 2] * t**2 if q3 else 0.0)
    y = y + rng.normal(0, 1.0, len(idx))
    df = pd.DataFrame({"y": y.round(4), "t": t.round(4), "id": [f"s{v:05d}" for v in idx]})
    df["t2"] = (df["t"] ** 2).round(4)
    df["x"] = rng.standard_normal(len(df)).round(4)
    if weights:
        df["w"] = rng.choice([0.5, 1.0, 2.0, 4.0], len(df))
    return df


def _panel_school(seed: int = 21):
    """Three-level nesting: 60 schools x 5 classes x 10 pupils (3,000 rows), ``(1 | school/class)``."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    school = np.repeat(np.arange(60), 50)
    klass = np.repeat(np.arange(300), 10)
    x = rng.standard_normal(3000)
    y = 50 + 3 * x + rng.normal(0, 4, 60)[school] + rng.normal(0, 2, 300)[klass] + rng.normal(0, 6, 3000)
    df = pd.DataFrame({"y": y.round(3), "x": x.round(4), "school": [f"S{v}" for v in school],
                       "class": [f"c{v % 5}" for v in klass]})
    return df, "y ~ x + (1 | school/class)"


def _panel_crossed(seed: int, n_subj: int, n_item: int, per_subj: int, slope: bool):
    """Crossed subjects x items (each subject sees ``per_subj`` random items)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    subj = np.repeat(np.arange(n_subj), per_subj)
    item = np.concatenate([rng.choice(n_item, per_subj, replace=False) for _ in range(n_subj)])
    c = np.where(rng.random(len(subj)) < 0.5, -0.5, 0.5)
    bs = rng.standard_normal((n_subj, 2)) * np.array([30.0, 15.0])
    y = 400 + 20 * c + bs[subj, 0] + (bs[subj, 1] * c if slope else 0) + rng.normal(0, 20, n_item)[item]
    y = y + rng.normal(0, 50, len(subj))
    df = pd.DataFrame({"y": y.round(2), "c": c, "x": rng.standard_normal(len(subj)).round(4),
                       "subj": [f"P{v}" for v in subj], "item": [f"W{v}" for v in item]})
    return df


def _panel_gh(seed: int = 23):
    """Factor-by-factor random effect: 20 g x 8 h cells, 12 rows each (1,920 rows), ``(1 | g:h)``."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(20), 96)
    h = np.tile(np.repeat(np.arange(8), 12), 20)
    cell = g * 8 + h
    x = rng.standard_normal(len(g))
    y = 5 + x + rng.normal(0, 1.5, 160)[cell] + rng.normal(0, 1, len(g))
    return pd.DataFrame({"y": y.round(4), "x": x.round(4), "g": [f"g{v}" for v in g], "h": [f"h{v}" for v in h]})


def _ds(name: str):
    import memoe

    return memoe.datasets.load(name)


# name -> (simulator returning (df, formula), REML?, prior-weights column)
PANEL = {
    "uncorr": (lambda: (_panel_long(11, 100, 8), "y ~ t + (1 + t || id)"), True, None),
    "uncorr2": (lambda: (_panel_long(11, 100, 8), "y ~ t + (1 | id) + (0 + t | id)"), True, None),
    "school3": (_panel_school, True, None),
    "sleep_ml": (lambda: (_ds("sleepstudy"), "Reaction ~ Days + (Days | Subject)"), False, None),
    "weighted": (lambda: (_panel_long(12, 80, 6, weights=True), "y ~ t + (t | id)"), True, "w"),
    "q3": (lambda: (_panel_long(13, 150, 8, q3=True), "y ~ t + t2 + (1 + t + t2 | id)"), True, None),
    "onefac500": (lambda: (_panel_long(14, 500, 5), "y ~ t + x + (t | id)"), True, None),
    "onefac5000": (lambda: (_panel_long(15, 5000, 5), "y ~ t + x + (t | id)"), True, None),
    "crossed10k": (lambda: (_panel_crossed(16, 200, 100, 50, False), "y ~ x + (1 | subj) + (1 | item)"), True, None),
    "crossed_slope": (lambda: (_panel_crossed(17, 60, 40, 40, True), "y ~ c + (1 + c | subj) + (1 | item)"),
                      True, None),
    "gh": (lambda: (_panel_gh(), "y ~ x + (1 | g:h)"), True, None),
    "orthodont": (lambda: (_ds("Orthodont"), "distance ~ age + Sex + (age | Subject)"), True, None),
    "dyestuff": (lambda: (_ds("Dyestuff"), "Yield ~ 1 + (1 | Batch)"), True, None),
    "dyestuff2": (lambda: (_ds("Dyestuff2"), "Yield ~ 1 + (1 | Batch)"), True, None),
    "oats": (lambda: (_ds("Oats"), "yield ~ nitro + Variety + (1 | Block/Variety)"), True, None),
    "bodyweight": (lambda: (_ds("BodyWeight"), "weight ~ Time + Diet + (Time | Rat)"), True, None),
    "pixel": (lambda: (_ds("Pixel"), "pixel ~ day + I(day^2) + (day | Dog) + (1 | Side:Dog)"), True, None),
}


def _groups(formula: str) -> list[str]:
    import re

    names: set[str] = set()
    for g in re.findall(r"\|+\s*([^)]+)\)", formula):
        names.update(p.strip() for p in re.split(r"[:/]", g))
    return sorted(names)


def _status() -> dict:
    """Current and peak resident memory of this process (MiB), from /proc/self/status (Linux)."""
    try:
        with open("/proc/self/status") as fh:
            text = fh.read()
    except OSError:
        return {}
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) / 1024.0 for k in ("VmRSS", "VmHWM")}


def _reset_peak() -> bool:
    """Free what can be freed and reset the peak-RSS mark (``/proc/self/clear_refs`` = 5)."""
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


def bench_memoe(df, formula: str, repeats: int) -> dict:
    """Median wall and process-CPU seconds of ``repeats`` end-to-end fits, the design alone, the fit alone,
    evaluations, and the memory the first measured fit adds beyond the loaded DataFrame."""
    import memoe
    from memoe.lmm import objective

    memoe.lmm(formula, df.iloc[: min(len(df), 5000)]).fit(control=_CONTROL)
    used = [c for c in df.columns if re.search(rf"\b{re.escape(c)}\b", formula)]
    used_mib = len(df) * len(used) * 8 / 2**20
    mem = None
    if _reset_peak():
        base = _status()["VmRSS"]
        fit = memoe.lmm(formula, df).fit(control=_CONTROL)
        mem = _status()["VmHWM"] - base
        del fit
    walls, cpus, dwalls, dcpus, fwalls = [], [], [], [], []
    calls = _count_calls()
    for _ in range(repeats):
        m, dw, dc = timed(lambda: memoe.lmm(formula, df))
        calls["n"] = 0
        fit, fw, fc = timed(lambda m=m: m.fit(control=_CONTROL))
        walls.append(dw + fw)
        cpus.append(dc + fc)
        dwalls.append(dw)
        dcpus.append(dc)
        fwalls.append(fw)
    return {
        "time": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "runs": walls,
        "cpu_runs": cpus,
        "design": statistics.median(dwalls),
        "design_cpu": statistics.median(dcpus),
        "fit_only": statistics.median(fwalls),
        "evaluations": int(fit.opt.feval),
        # every objective call of the last fit, the derivative check's included (value or value + gradient)
        "calls": int(calls["n"]),
        "criterion": float(fit.opt.fmin),
        "loglik": float(fit.loglik),
        "memory_added_mib": mem,
        "used_columns_mib": used_mib,
        "schur": m.problem.solver,
        # the matrix-free path's settings and the stated error of its log-likelihood
        "matrix_free": m.problem.sparse.describe() if m.problem.solver == "matrix-free" else None,
        "mz": int(m.problem.mz),
        "limits": {"MAX_DENSE_REST": objective.MAX_DENSE_REST, "SPARSE_MAX_FILL": objective.SPARSE_MAX_FILL},
    }


def _count_calls() -> dict:
    """Count the LMM objective calls (``deviance_and_gradient``, ``dense_value``, ``PLSProblem.deviance``)."""
    import importlib

    model = importlib.import_module("memoe.lmm.model")
    objective = importlib.import_module("memoe.lmm.objective")
    calls = {"n": 0}
    if getattr(model.deviance_and_gradient, "_counted", None) is None:
        def counted(fn):
            def wrapper(*a, **k):
                wrapper._counted["n"] += 1
                return fn(*a, **k)
            wrapper._counted = calls
            return wrapper
        model.deviance_and_gradient = counted(model.deviance_and_gradient)
        objective.PLSProblem.deviance = counted(objective.PLSProblem.deviance)
        if hasattr(model, "dense_value"):  # the dense crossed path's values (start and check Hessians)
            model.dense_value = counted(model.dense_value)
    else:
        calls = model.deviance_and_gradient._counted
    objective.PLSProblem.deviance._counted = calls
    return calls


# (module, function or class.method, label) of the stages timed by --profile
STAGES = (
    ("memoe.core.design", "build_frame", "model frame (columns, NA, checks)"),
    ("memoe.core.design", "build_fixed", "fixed design X (scaling, rank check)"),
    ("memoe.core.design", "build_random", "random design Z + grouping codes"),
    ("memoe.lmm.model", "choose_scaling", "scaling check of [X y]"),
    ("memoe.lmm.objective", "PLSProblem.__init__", "per-subject sufficient statistics"),
    ("memoe.lmm.model", "one_factor_start", "moment start"),
    ("memoe.lmm.model", "variance_component_start", "moment start (crossed)"),
    ("memoe.lmm.objective", "PLSProblem.deviance", "objective evaluations (value only)"),
    ("memoe.lmm.model", "deviance_and_gradient", "value + gradient evaluations"),
    ("memoe.lmm.model", "finite_difference_derivatives", "derivative check (inside the evaluations)"),
    ("memoe.lmm.model", "gradient_difference_hessian", "derivative check from gradients (inside)"),
    ("memoe.lmm.model", "LmmResult", "result (solve at the optimum)"),
)


def profile_stages(df, formula: str, repeats: int) -> dict:
    """Process CPU (ms, min over ``repeats`` fits) and tracemalloc memory (MiB held after / peak during) per stage.

    Each stage function is wrapped by a timer for the run (and restored afterwards); nested stages are
    counted in both. Returns ``{label: {"cpu_ms", "calls", "held_mib", "peak_mib"}}`` plus ``"total"``.
    """
    import functools
    import importlib
    import tracemalloc

    import memoe

    acc: dict = {}
    restore = []
    for modname, qual, label in STAGES:
        mod = importlib.import_module(modname)
        owner, name = (getattr(mod, qual.split(".")[0]), qual.split(".")[1]) if "." in qual else (mod, qual)
        fn = getattr(owner, name, None)
        if fn is None:
            continue

        def timed_stage(*a, _fn=fn, _label=label, **k):
            held0 = 0
            if tracemalloc.is_tracing():
                held0 = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()  # the stage's own peak (a nested stage resets its parent's)
            c0 = time.process_time()
            out = _fn(*a, **k)
            rec = acc.setdefault(_label, {"cpu_ms": 0.0, "calls": 0})
            rec["cpu_ms"] += 1000 * (time.process_time() - c0)
            rec["calls"] += 1
            if tracemalloc.is_tracing():
                held, peak = tracemalloc.get_traced_memory()
                rec["held_mib"], rec["peak_mib"] = held / 2**20, peak / 2**20
                rec["before_mib"] = held0 / 2**20
            return out

        setattr(owner, name, functools.wraps(fn)(timed_stage))
        restore.append((owner, name, fn))
    try:
        memoe.lmm(formula, df.iloc[: min(len(df), 5000)]).fit(control=_CONTROL)
        best: dict = {}
        for _ in range(repeats):
            acc.clear()
            c0 = time.process_time()
            memoe.lmm(formula, df).fit(control=_CONTROL)
            acc["total"] = {"cpu_ms": 1000 * (time.process_time() - c0), "calls": 1}
            for k, v in acc.items():
                if k not in best or v["cpu_ms"] < best[k]["cpu_ms"]:
                    best[k] = dict(v)
        # memory: one more fit under tracemalloc (numpy reports its buffers to it)
        acc.clear()
        tracemalloc.start()
        memoe.lmm(formula, df).fit(control=_CONTROL)
        tracemalloc.stop()
        for k, v in acc.items():
            for key in ("before_mib", "held_mib", "peak_mib"):
                if key in v and k in best:
                    best[k][key] = v[key]
    finally:
        for owner, name, fn in restore:
            setattr(owner, name, fn)
    return best


def bench_mixedlm(df, formula: str) -> dict:
    try:
        import mixedlm
    except ImportError:
        return {"skipped": "mixedlm is not installed (pip install mixedlm)"}
    t0 = time.perf_counter()
    fit = mixedlm.lmer(formula, df, REML=True)
    return {"time": time.perf_counter() - t0, "loglik": float(getattr(fit, "loglik", float("nan")))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(DEFAULT))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--small-repeats", type=int, default=10)
    ap.add_argument("--no-r", action="store_true")
    ap.add_argument("--no-mixedlm", action="store_true")
    ap.add_argument("--profile", action="store_true", help="memoe only: CPU and memory per stage")
    ap.add_argument("--r-timeout", type=float, default=900.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--optimizer", default="auto", choices=("auto", "bobyqa"),
                    help="FitControl.optimizer of the memoe fits (auto = analytic gradient where available)")
    ap.add_argument("--busy-core", action="store_true",
                    help="keep one other core busy (a spinning Python process) for the whole run: the two-thread "
                         "paths must then fall back to serial without a slowdown")
    args = ap.parse_args()
    spinner = None
    if args.busy_core:
        import subprocess

        spinner = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
        time.sleep(1.0)  # let /proc/loadavg's running count see it
    try:
        _run(args)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def _run(args) -> None:
    _CONTROL["optimizer"] = args.optimizer
    facts = machine_facts()
    busy = "  (one other core kept busy)" if args.busy_core else ""
    print(f"# {facts['date']}  {facts['cpu']}  {facts['cores']} cores  load {facts['load']:.1f}{busy}")
    rows = []
    if args.profile:
        for name in _names(args.workloads):
            df, formula = _simulate(name)
            prof = profile_stages(df, formula, args.repeats)
            print(f"{name}: process CPU per stage (ms, min of {args.repeats}); tracemalloc MiB before / after / peak")
            for label, v in prof.items():
                mem = " / ".join(f"{v[k]:.1f}" for k in ("before_mib", "held_mib", "peak_mib") if k in v)
                print(f"  {label:45s} {v['cpu_ms']:8.1f} ms  {v['calls']:4d} calls  {mem}")
            rows.append({"workload": name, "profile": prof})
        if args.json:
            save_results(args.json, {"machine": facts, "rows": rows})
        return
    for name in _names(args.workloads):
        df, formula = _simulate(name)
        row = {"workload": name, "rows": len(df), "formula": formula}
        if name in GROUPS["small"]:
            rows.append(_small_row(row, df, formula, args))
            continue
        if name in PANEL:
            rows.append(_small_row(row, df, formula, args, reml=PANEL[name][1], weights=PANEL[name][2]))
            continue
        row["memoe"] = bench_memoe(df, formula, args.repeats)
        if args.no_r or not have_r():
            row["lme4"] = {"skipped": "--no-r" if args.no_r else "Rscript not found"}
        else:
            code = R_CODE.format(groups="c(" + ",".join(f'"{g}"' for g in _groups(formula)) + ")", formula=formula)
            row["lme4"] = run_r(code, data=df, timeout=args.r_timeout)
        row["mixedlm"] = {"skipped": "--no-mixedlm"} if args.no_mixedlm else bench_mixedlm(df, formula)
        rows.append(row)
        me, r4 = row["memoe"], row["lme4"]
        ratio = f"{r4['time'] / me['time']:.1f}x" if "time" in r4 else r4.get("skipped", "")
        dll = f"{me['loglik'] - r4['loglik']:+.2e}" if "loglik" in r4 else "-"
        mem = me["memory_added_mib"]
        mem_txt = "-" if mem is None else f"{mem:.0f} MiB = {mem / me['used_columns_mib']:.2f}x used columns"
        print(
            f"{name:10s} n={len(df):>9,d} memoe {me['time']:.3f} s wall, {me['cpu']:.3f} s CPU (design "
            f"{me['design']:.3f} s, {me['evaluations']} evaluations ({me['calls']} objective calls with the check), "
            f"criterion {me['criterion']!r}, memory added {mem_txt}, "
            f"{me['schur']} m_z={me['mz']}, load {os.getloadavg()[0]:.1f})  lme4 {r4.get('time', float('nan')):.2f} s  "
            f"lme4/memoe {ratio}  logLik memoe-lme4 {dll}  mixedlm: {row['mixedlm'].get('skipped', row['mixedlm'])}",
            flush=True,
        )
    if args.json:
        save_results(args.json, {"machine": facts, "rows": rows})


def _small_row(row: dict, df, formula: str, args, reml: bool = True, weights: str | None = None) -> dict:
    """One ``small``/``panel`` workload: memoe and lme4 timed by repeated fits (wall and CPU)."""
    row["load_before"] = os.getloadavg()[0]
    row["reml"], row["weights"] = reml, weights
    row["memoe"] = me = bench_small(df, formula, args.small_repeats, reml=reml, weights=weights)
    if args.no_r or not have_r():
        row["lme4"] = r4 = {"skipped": "--no-r" if args.no_r else "Rscript not found"}
    else:
        # grouping columns and categorical fixed-effect columns (e.g. BodyWeight's Diet "1".."3") as factors
        cats = {c for c in df.columns if str(df[c].dtype) in ("category", "object")
                and re.search(rf"\b{re.escape(c)}\b", formula)}
        groups = "c(" + ",".join(f'"{g}"' for g in sorted(set(_groups(formula)) | cats)) + ")"
        code = R_SMALL.format(groups=groups, formula=formula, repeats=args.small_repeats,
                              reml="TRUE" if reml else "FALSE", weights=f", weights = {weights}" if weights else "")
        row["lme4"] = r4 = run_r(code, data=df, timeout=args.r_timeout)
    row["load_after"] = os.getloadavg()[0]
    if "cpu" in r4:
        ratio = f"wall {r4['time'] / me['time']:.1f}x  cpu {r4['cpu'] / me['cpu']:.1f}x"
        dll = f"{me['loglik'] - r4['loglik']:+.2e}"
        lme4 = f"lme4 {r4['time'] * 1e3:.0f} ms wall {r4['cpu'] * 1e3:.0f} ms cpu ({r4['feval']} evals)"
    else:
        ratio, dll, lme4 = r4.get("skipped", ""), "-", "lme4 -"
    print(
        f"{row['workload']:10s} n={row['rows']:>6,d} memoe {me['time'] * 1e3:.0f} ms wall {me['cpu'] * 1e3:.0f} ms cpu "
        f"({me['feval']} evals, {me['schur']})  {lme4}  lme4/memoe {ratio}  logLik memoe-lme4 {dll}  "
        f"load {row['load_before']:.1f}/{row['load_after']:.1f}",
        flush=True,
    )
    return row


if __name__ == "__main__":
    main()

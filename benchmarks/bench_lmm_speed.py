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

memoe: median of ``--repeats`` fits in this process after a small warm-up fit of the same formula
(first-call costs), the path taken for the Schur complement (``dense``/``sparse``) reported.
lme4: one ``lmer(..., REML = TRUE)`` in a fresh Rscript, ``system.time`` of the call only.
mixedlm: run when importable, else skipped with a message.

Usage::

    python benchmarks/bench_lmm_speed.py --workloads nested,insteval3 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Timer, have_r, machine_facts, run_r, save_results
from lmm_workloads import GROUPS, SIMULATORS

DEFAULT = ("long_1m", "nested", "insteval3", "movielens")
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
fit <- lmer({formula}, data = df, REML = TRUE)
w <- numeric(0); cpu <- numeric(0)
for (i in seq_len({repeats})) {{
  t <- system.time(fit <- lmer({formula}, data = df, REML = TRUE))
  w <- c(w, t[["elapsed"]]); cpu <- c(cpu, t[["user.self"]] + t[["sys.self"]])
}}
cat(jsonlite::toJSON(list(time = median(w), cpu = median(cpu), feval = fit@optinfo$feval,
    loglik = as.numeric(logLik(fit)), version = as.character(packageVersion("lme4"))),
    auto_unbox = TRUE, digits = NA), "\\n")
"""


def bench_small(df, formula: str, repeats: int) -> dict:
    """memoe on a small problem: median wall and process-CPU seconds of ``repeats`` fits after a warm-up."""
    import statistics
    import warnings

    import memoe

    walls, cpus = [], []
    with warnings.catch_warnings():
        # kb07's maximal model is a singular fit (as in lme4): the warning is not what is measured
        warnings.simplefilter("ignore")
        memoe.lmm(formula, df).fit()
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            fit = memoe.lmm(formula, df).fit()
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


def _groups(formula: str) -> list[str]:
    import re

    names: set[str] = set()
    for g in re.findall(r"\|\s*([^)]+)\)", formula):
        names.update(p.strip() for p in re.split(r"[:/]", g))
    return sorted(names)


def bench_memoe(df, formula: str, repeats: int) -> dict:
    import memoe
    from memoe.lmm import objective

    memoe.lmm(formula, df.iloc[: min(len(df), 5000)]).fit()
    design = Timer.measure(lambda: memoe.lmm(formula, df), repeats=repeats)
    m = design.value
    fit = Timer.measure(lambda: memoe.lmm(formula, df).fit(), repeats=repeats)
    t0 = time.perf_counter()
    m.fit()
    model_only = time.perf_counter() - t0
    return {
        "time": fit.median,
        "runs": fit.runs,
        "design": design.median,
        "fit_only": model_only,
        "loglik": float(fit.value.loglik),
        "schur": "none" if m.problem.mz == 0 else ("sparse" if m.problem.sparse is not None else "dense"),
        "mz": int(m.problem.mz),
        "limits": {"MAX_DENSE_REST": objective.MAX_DENSE_REST, "SPARSE_MAX_FILL": objective.SPARSE_MAX_FILL},
    }


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
    ap.add_argument("--r-timeout", type=float, default=900.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    facts = machine_facts()
    print(f"# {facts['date']}  {facts['cpu']}  {facts['cores']} cores  load {facts['load']:.1f}")
    rows = []
    names = [w for g in args.workloads.split(",") for w in GROUPS.get(g, (g,))]
    for name in names:
        df, formula = SIMULATORS[name]()
        row = {"workload": name, "rows": len(df), "formula": formula}
        if name in GROUPS["small"]:
            rows.append(_small_row(row, df, formula, args))
            continue
        row["memoe"] = bench_memoe(df, formula, args.repeats)
        if args.no_r or not have_r():
            row["lme4"] = {"skipped": "--no-r" if args.no_r else "Rscript not found"}
        else:
            code = R_CODE.format(groups="c(" + ",".join(f'"{g}"' for g in _groups(formula)) + ")", formula=formula)
            row["lme4"] = run_r(code, data=df, timeout=args.r_timeout)
        row["mixedlm"] = bench_mixedlm(df, formula)
        rows.append(row)
        me, r4 = row["memoe"], row["lme4"]
        ratio = f"{r4['time'] / me['time']:.1f}x" if "time" in r4 else r4.get("skipped", "")
        dll = f"{me['loglik'] - r4['loglik']:+.2e}" if "loglik" in r4 else "-"
        print(
            f"{name:10s} n={len(df):>9,d} memoe {me['time']:.3f} s (design {me['design']:.3f} s, "
            f"{me['schur']} m_z={me['mz']})  lme4 {r4.get('time', float('nan')):.2f} s  "
            f"lme4/memoe {ratio}  logLik memoe-lme4 {dll}  mixedlm: {row['mixedlm'].get('skipped', row['mixedlm'])}",
            flush=True,
        )
    if args.json:
        save_results(args.json, {"machine": facts, "rows": rows})


def _small_row(row: dict, df, formula: str, args) -> dict:
    """One ``small``-group workload: memoe and lme4 timed by repeated fits (wall and CPU)."""
    row["load_before"] = os.getloadavg()[0]
    row["memoe"] = me = bench_small(df, formula, args.small_repeats)
    if args.no_r or not have_r():
        row["lme4"] = r4 = {"skipped": "--no-r" if args.no_r else "Rscript not found"}
    else:
        groups = "c(" + ",".join(f'"{g}"' for g in _groups(formula)) + ")"
        code = R_SMALL.format(groups=groups, formula=formula, repeats=args.small_repeats)
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

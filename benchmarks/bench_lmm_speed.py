"""LMM speed (issue 13): memoe against lme4 (Rscript) and mixedlm, same run, same data.

Workloads (``lmm_workloads.py``, deterministic seeds):

* ``long_1m``: ``y ~ t + x + (t | id)``, 100,000 subjects x 10 visits, REML, end to end from the
  DataFrame (formula, factor coding, sufficient statistics, fit); the design is also timed alone.
* ``nested``: ``y ~ x + (1 | g) + (1 | g:h)``, 10,000 g x 2 h (the issue-13 crash report, 60,000 rows).
* ``insteval3``: InstEval shape, ``y ~ service + (1 | s) + (1 | d) + (1 | dept:service)``.
* ``movielens``: MovieLens-1M shape, ``y ~ 1 + (1 | user) + (1 | item)`` (about 1,000,000 ratings,
  6,040 x 3,706, log-normal degree skew).
* ``crossed_1m``: 1,000,000 rows, 50,000 x 20,000 uniformly crossed levels (not in the default list).

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
from lmm_workloads import SIMULATORS

DEFAULT = ("long_1m", "nested", "insteval3", "movielens")
R_CODE = """
suppressMessages(library(lme4))
for (v in {groups}) df[[v]] <- factor(df[[v]])
t <- system.time(fit <- lmer({formula}, data = df, REML = TRUE))[["elapsed"]]
cat(jsonlite::toJSON(list(time = t, loglik = as.numeric(logLik(fit)), version = as.character(packageVersion("lme4"))),
    auto_unbox = TRUE, digits = NA), "\\n")
"""


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
        "schur": m.problem.solver,
        # the matrix-free path's settings and the stated error of its log-likelihood
        "matrix_free": m.problem.sparse.describe() if m.problem.solver == "matrix-free" else None,
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
    ap.add_argument("--no-r", action="store_true")
    ap.add_argument("--r-timeout", type=float, default=900.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    facts = machine_facts()
    print(f"# {facts['date']}  {facts['cpu']}  {facts['cores']} cores  load {facts['load']:.1f}")
    rows = []
    for name in args.workloads.split(","):
        df, formula = SIMULATORS[name]()
        row = {"workload": name, "rows": len(df), "formula": formula}
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


if __name__ == "__main__":
    main()

"""Benchmark of memoe's nlme-style path (``memoe.gls`` / ``memoe.lme`` with residual structures).

Data (simulated here, deterministic seed): N subjects x 6 planned visits (visit = 0..5), each visit
missing with probability 0.1 (so ~5.4 rows per subject, groups of 1-6 rows), continuous time =
visit + U(-0.2, 0.2), a subject-level treatment ``trt`` and a row-level covariate ``x``;
``y = 1 + 0.5 time + 0.3 x + 0.2 trt time + b0 + b1 time + e`` with random intercept and slope (SD 1 and
0.3) and AR(1) residuals within subject (phi 0.5) whose SD grows with the visit (1.0 ... 1.5).
N = 1,000 / 10,000 / 50,000.

Models (REML, nlme's defaults):

* ``lme_ri_ar1``: ``memoe.lme("y ~ time + x + (1 | id)", correlation=AR1(visit="visit"))``
* ``lme_rs_car1``: ``memoe.lme("y ~ time + x + (time | id)", correlation=CAR1("time"))``
* ``gls_mmrm``: ``memoe.gls("y ~ C(visit) * trt", correlation=Symm("id", visit="visit"),
  weights=VarIdent("visit"))`` (unstructured 6 x 6 correlation + 6 SDs: an MMRM).

There is no Python implementation of these estimators. As reference points only (different models:
no residual correlation or variance function) the same fixed and random parts are fitted with
statsmodels ``MixedLM`` (``method="lbfgs"``) and memoe's own ``memoe.lmm``.

Method: as ``bench_lmm.py`` (helpers imported from it): one fit per fresh process after a small
warm-up fit of the same model; tools and repeats interleaved; medians. Evaluations = every call of
the profiled (RE)ML objective (start-value search, both BOBYQA runs). statsmodels sizes projected
(previous size x row ratio) beyond ``--sm-cap`` seconds are skipped.

Usage::

    python benchmarks/bench_marginal.py                        # all models and sizes, 3 repeats
    python benchmarks/bench_marginal.py --sizes 1000 --models lme_ri_ar1 --tools memoe
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_lmm import _reset_peak, _status, machine_facts

MODELS = ("lme_ri_ar1", "lme_rs_car1", "gls_mmrm")
SIZES = (1_000, 10_000, 50_000)
TOOLS = ("memoe", "memoe_lmm", "statsmodels")
# the random part of each model without its residual structure, for the reference tools
REFERENCE = {
    "lme_ri_ar1": ("y ~ time + x + (1 | id)", "1"),
    "lme_rs_car1": ("y ~ time + x + (time | id)", "~time"),
}


def simulate(N: int, seed: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed + N)
    visits = 6
    ids = np.repeat(np.arange(N), visits)
    visit = np.tile(np.arange(visits), N)
    time_ = visit + rng.uniform(-0.2, 0.2, len(ids))
    trt = rng.integers(0, 2, N)[ids]
    x = rng.standard_normal(len(ids))
    b = rng.multivariate_normal([0, 0], [[1.0, 0.3 * 0.3], [0.3 * 0.3, 0.09]], size=N)
    e = np.empty((N, visits))
    e[:, 0] = rng.standard_normal(N)
    for j in range(1, visits):
        e[:, j] = 0.5 * e[:, j - 1] + np.sqrt(1 - 0.25) * rng.standard_normal(N)
    e = (e * np.linspace(1.0, 1.5, visits)[None, :]).ravel()
    y = 1 + 0.5 * time_ + 0.3 * x + 0.2 * trt * time_ + b[ids, 0] + b[ids, 1] * time_ + e
    keep = rng.random(len(ids)) >= 0.1
    return pd.DataFrame({"y": y, "time": time_, "x": x, "trt": trt, "visit": visit, "id": ids})[keep].reset_index(
        drop=True
    )


def _fit_memoe(model: str, df: pd.DataFrame) -> dict:
    import memoe
    from memoe.marginal import AR1, CAR1, Symm, VarIdent
    from memoe.marginal.problem import MarginalProblem

    calls = [0]
    original = MarginalProblem.deviance

    def counted(self, params, reml):
        calls[0] += 1
        return original(self, params, reml)

    MarginalProblem.deviance = counted
    try:
        t0 = time.perf_counter()
        if model == "lme_ri_ar1":
            fit = memoe.lme("y ~ time + x + (1 | id)", df, correlation=AR1(visit="visit")).fit()
        elif model == "lme_rs_car1":
            fit = memoe.lme("y ~ time + x + (time | id)", df, correlation=CAR1("time")).fit()
        else:
            fit = memoe.gls(
                "y ~ C(visit) * trt", df, correlation=Symm("id", visit="visit"), weights=VarIdent("visit")
            ).fit()
        seconds = time.perf_counter() - t0
    finally:
        MarginalProblem.deviance = original
    return {
        "seconds": seconds,
        "crit": float(-2.0 * fit.loglik),
        "bobyqa_evals": int(fit.feval),
        "evals": calls[0],
        "nparams": len(fit.params_unconstrained),
        "fixef": [float(v) for v in fit.fixef.to_numpy()],
    }


def _fit_memoe_lmm(model: str, df: pd.DataFrame) -> dict:
    import memoe

    formula, _ = REFERENCE[model]
    t0 = time.perf_counter()
    fit = memoe.lmm(formula, df).fit(reml=True)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "crit": float(fit.reml_criterion), "evals": None}


def _fit_statsmodels(model: str, df: pd.DataFrame) -> dict:
    import warnings

    import statsmodels.formula.api as smf

    _, re_formula = REFERENCE[model]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        fit = smf.mixedlm("y ~ time + x", df, groups=df["id"], re_formula=re_formula).fit(reml=True, method="lbfgs")
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "crit": float(-2.0 * fit.llf), "evals": None}


FITTERS = {"memoe": _fit_memoe, "memoe_lmm": _fit_memoe_lmm, "statsmodels": _fit_statsmodels}


def worker(tool: str, model: str, N: int) -> dict:
    import warnings

    warnings.simplefilter("ignore")
    fitter = FITTERS[tool]
    df = simulate(N)
    fitter(model, simulate(100))  # warm-up
    exact = _reset_peak()
    base = _status()["VmRSS"]
    out = fitter(model, df)
    peak = _status()["VmHWM"]
    out.update(tool=tool, model=model, N=N, rows=len(df), added_mib=peak - base, peak_reset=exact)
    return out


def run_one(tool: str, model: str, N: int, timeout: float, pythonpath: str | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", tool, model, str(N)]
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "model": model, "N": N, "error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"tool": tool, "model": model, "N": N, "error": tail[0][:200]}
    return json.loads(lines[-1])


def _fmt_s(v):
    if v is None:
        return "-"
    return f"{v:.3g} s" if v < 10 else f"{v:.1f} s"


def summarise(runs: list[dict], models: list[str], sizes: list[int], tool: str = "memoe") -> str:
    def med(t, m, N, field):
        vals = [
            r[field] for r in runs if r["tool"] == t and r["model"] == m and r["N"] == N and r.get(field) is not None
        ]
        return statistics.median(vals) if vals else None

    lines = [
        "| model | subjects | rows | memoe time (runs) | evaluations (BOBYQA) | ms / evaluation | memory added "
        "| -2 log L_R | memoe.lmm, no residual structure | statsmodels MixedLM, no residual structure |",
        "|" + "---|" * 10,
    ]
    for m in models:
        for N in sizes:
            rs = [r for r in runs if r["tool"] == tool and r["model"] == m and r["N"] == N and "seconds" in r]
            if not rs:
                continue
            t = med(tool, m, N, "seconds")
            runs_s = ", ".join(f"{r['seconds']:.2f}" for r in rs)
            ev = med(tool, m, N, "evals")
            lines.append(
                f"| {m} | {N:,} | {rs[0]['rows']:,} | {_fmt_s(t)} ({runs_s}) "
                f"| {ev:.0f} ({med(tool, m, N, 'bobyqa_evals'):.0f}) | {1000 * t / ev:.1f} "
                f"| {med(tool, m, N, 'added_mib'):.0f} MiB | {rs[0]['crit']:.4f} "
                f"| {_fmt_s(med('memoe_lmm', m, N, 'seconds'))} | {_fmt_s(med('statsmodels', m, N, 'seconds'))} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--sm-cap", type=float, default=120.0, help="statsmodels: skip sizes projected above this")
    ap.add_argument("--old", metavar="PATH", help="also run memoe with PATH first on PYTHONPATH ('memoe_old')")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.worker:
        tool, model, N = args.worker
        real = "memoe" if tool == "memoe_old" else tool
        print(json.dumps(worker(real, model, int(N)) | {"tool": tool}))
        return 0
    models = [m for m in args.models.split(",") if m]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    tools = [t for t in args.tools.split(",") if t]
    if args.old:
        tools = ["memoe_old", *tools]
    facts = machine_facts()
    print("machine:", json.dumps(facts))
    runs: list[dict] = []
    skipped: dict = {}
    for rep in range(args.repeats):
        for m in models:
            for N in sizes:
                for tool in tools:
                    if tool in ("memoe_lmm", "statsmodels") and m not in REFERENCE:
                        continue
                    if (tool, m, N) in skipped:
                        continue
                    if tool == "statsmodels":
                        prev = [s for s in sizes if s < N]
                        times = [
                            r["seconds"] for r in runs
                            if r["tool"] == tool and r["model"] == m and prev and r["N"] == prev[-1] and "seconds" in r
                        ]
                        if times and statistics.median(times) * N / prev[-1] > args.sm_cap:
                            skipped[(tool, m, N)] = (
                                f"projected {statistics.median(times) * N / prev[-1]:.0f} s > cap {args.sm_cap:.0f} s"
                            )
                            print(f"skip {tool} {m} {N}: {skipped[(tool, m, N)]}", flush=True)
                            continue
                    r = run_one(tool, m, N, args.timeout, args.old if tool == "memoe_old" else None)
                    r["repeat"] = rep
                    runs.append(r)
                    if "error" in r:
                        skipped[(tool, m, N)] = r["error"]
                        msg = r["error"]
                    else:
                        msg = f"{r['seconds']:.3f} s, +{r['added_mib']:.0f} MiB, crit {r['crit']:.6f}"
                        if r.get("evals"):
                            msg += f", evals {r['evals']} (BOBYQA {r['bobyqa_evals']})"
                    print(f"[{rep + 1}/{args.repeats}] {m:12s} {N:6d} {tool:12s} {msg}", flush=True)
    print()
    print(summarise(runs, models, sizes))
    if args.old:
        print()
        print(summarise(runs, models, sizes, tool="memoe_old"))
    for k, v in skipped.items():
        print(f"- {k[0]} {k[1]} N={k[2]}: {v}")
    if args.json:
        with open(args.json, "w") as fh:
            skips = {str(k): v for k, v in skipped.items()}
            json.dump({"machine": facts, "runs": runs, "skipped": skips}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

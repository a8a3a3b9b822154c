"""Benchmark of memoe's GLMM fit (lme4's glmer algorithm), with statsmodels' variational Bayes as a reference.

Workloads (data simulated here, deterministic seeds):

* ``crossed_binary``: ``y ~ x + (1 | subj) + (1 | item)``, binomial (logit), 316 subjects x 24 items
  fully crossed = 7,584 rows (the size of ANCHORS.md's glmer anchor); SDs 1.0 (subject), 0.6 (item).
* ``long_binomial`` / ``long_poisson``: ``y ~ t + x + (t | id)``, 10,000 groups x 10 rows = 100,000 rows,
  correlated random intercept and slope (t = 0, 1/9, ..., 1), Laplace.
* ``long_binomial_agq10`` / ``long_poisson_agq10``: ``y ~ t + x + (1 | id)`` on the same sizes, nAGQ = 10.
* ``crossed_large``: ``y ~ x + (1 | subj) + (1 | item)``, binomial, 3,000 subjects x 1,000 items, each
  subject 1-46 distinct items (mean 23.3) = ~70,000 rows, items of unequal popularity.

What is timed: the whole call from the loaded DataFrame, model-matrix building included:
``memoe.glmm(formula, df, family).fit(nAGQ=...)``. Reference (a different estimator, never a
baseline for the same numbers): statsmodels ``BinomialBayesMixedGLM`` / ``PoissonBayesMixedGLM``
``.from_formula(...).fit_vb()`` (mean-field variational Bayes, posterior means, not the ML estimate).

Method (as ``bench_lmm.py``, whose helpers this imports): every fit runs in a fresh process after a small
warm-up fit of the same formula and family; tools and repeats are interleaved; medians of the repeats.
Memory added = peak RSS during the fit - RSS after the warm-up (``gc.collect``, ``malloc_trim``, peak
mark reset through ``/proc/self/clear_refs``).

Evaluation counts (memoe): BOBYQA evaluations of stage 1 (nAGQ = 0, theta) and stage 2 (Laplace / AGQ
of (theta, beta)); all deviance evaluations including the finite-difference Hessian; PIRLS iterations
(= weighted PLS solves) summed over all evaluations.

Usage::

    python benchmarks/bench_glmm.py                                  # all workloads, 3 repeats
    python benchmarks/bench_glmm.py --workloads crossed_binary --tools memoe,statsmodels_vb
    python benchmarks/bench_glmm.py --json glmm_results.json
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

# name: (kind, family, nAGQ)
WORKLOADS = {
    "crossed_binary": ("crossed", "binomial", 1),
    "long_binomial": ("long_slope", "binomial", 1),
    "long_poisson": ("long_slope", "poisson", 1),
    "long_binomial_agq10": ("long_int", "binomial", 10),
    "long_poisson_agq10": ("long_int", "poisson", 10),
    "crossed_large": ("crossed_large", "binomial", 1),
}
DEFAULT_WORKLOADS = tuple(WORKLOADS)
FORMULAS = {
    "crossed": "y ~ x + (1 | subj) + (1 | item)",
    "crossed_large": "y ~ x + (1 | subj) + (1 | item)",
    "long_slope": "y ~ t + x + (t | id)",
    "long_int": "y ~ t + x + (1 | id)",
}
TOOLS = ("memoe", "statsmodels_vb")
# statsmodels VB only where its dense random-effects design stays small
SM_WORKLOADS = ("crossed_binary",)


# ---------------------------------------------------------------------------------------------- data
def _draw(eta: np.ndarray, family: str, rng: np.random.Generator) -> np.ndarray:
    if family == "binomial":
        return (rng.random(len(eta)) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    return rng.poisson(np.exp(eta)).astype(float)


def simulate_crossed(family: str, n_s: int = 316, n_i: int = 24, seed: int = 7584) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    subj = np.repeat(np.arange(n_s), n_i)
    item = np.tile(np.arange(n_i), n_s)
    x = rng.standard_normal(len(subj))
    eta = -0.3 + 0.5 * x + rng.normal(0, 1.0, n_s)[subj] + rng.normal(0, 0.6, n_i)[item]
    return pd.DataFrame({"y": _draw(eta, family, rng), "x": x, "subj": subj, "item": item})


def simulate_crossed_large(family: str, n_s: int = 3_000, n_i: int = 1_000, seed: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    k = np.clip(rng.poisson(23.3, n_s), 1, 46)
    logw = rng.normal(0.0, 0.8, n_i)  # unequal item popularity
    keys = logw[None, :] + rng.gumbel(size=(n_s, n_i))
    order = np.argsort(-keys, axis=1)
    del keys
    take = np.arange(n_i)[None, :] < k[:, None]
    subj = np.repeat(np.arange(n_s), k)
    item = order[take]
    x = rng.standard_normal(len(subj))
    eta = -0.3 + 0.5 * x + rng.normal(0, 1.0, n_s)[subj] + rng.normal(0, 0.6, n_i)[item]
    return pd.DataFrame({"y": _draw(eta, family, rng), "x": x, "subj": subj, "item": item})


def simulate_long(family: str, N: int = 10_000, visits: int = 10, slope: bool = True, seed: int = 100_000):
    rng = np.random.default_rng(seed + (1 if family == "poisson" else 0))
    n = N * visits
    ids = np.repeat(np.arange(N), visits)
    t = np.tile(np.arange(visits) / (visits - 1.0), N)
    x = rng.standard_normal(n)
    if family == "binomial":
        b0, b1, sd0, sd1 = -0.5, 1.0, 1.0, 0.5
    else:
        b0, b1, sd0, sd1 = 0.5, 0.3, 0.5, 0.3
    cov = np.array([[sd0**2, 0.3 * sd0 * sd1], [0.3 * sd0 * sd1, sd1**2]])
    b = rng.multivariate_normal([0.0, 0.0], cov, size=N)
    eta = b0 + b1 * t + 0.3 * x + b[ids, 0] + (b[ids, 1] * t if slope else 0.0)
    return pd.DataFrame({"y": _draw(eta, family, rng), "t": t, "x": x, "id": ids})


def simulate(workload: str, small: bool = False) -> pd.DataFrame:
    kind, family, _ = WORKLOADS[workload]
    if kind == "crossed":
        return simulate_crossed(family, n_s=40 if small else 316, n_i=12 if small else 24)
    if kind == "crossed_large":
        return simulate_crossed_large(family, n_s=150 if small else 3_000, n_i=60 if small else 1_000)
    return simulate_long(family, N=200 if small else 10_000, slope=kind == "long_slope")


# ---------------------------------------------------------------------------------------------- fitters
def _fit_memoe(workload: str, df: pd.DataFrame) -> dict:
    import memoe
    from memoe.glmm.pirls import PirlsProblem

    kind, family, nagq = WORKLOADS[workload]
    counts = {"solves": 0, "pirls_iterations": 0}
    original = PirlsProblem.solve

    def counted(self, *a, **k):
        st = original(self, *a, **k)
        counts["solves"] += 1
        counts["pirls_iterations"] += st.iterations
        return st

    PirlsProblem.solve = counted
    try:
        t0 = time.perf_counter()
        fit = memoe.glmm(FORMULAS[kind], df, family).fit(nAGQ=nagq)
        seconds = time.perf_counter() - t0
    finally:
        PirlsProblem.solve = original
    return {
        "seconds": seconds,
        "criterion": float(fit.criterion),
        "loglik": float(fit.loglik),
        "fixef": [float(v) for v in fit.fixef.to_numpy()],
        "theta": [float(v) for v in fit.theta.to_numpy()],
        "stage1_evals": int(fit.stage1.opt.feval),
        "stage2_evals": int(fit.stage2.opt.feval) if fit.stage2 is not None else 0,
        "evals": counts["solves"],
        "pirls_iterations": counts["pirls_iterations"],
        "converged": bool(fit.converged),
    }


def _fit_statsmodels_vb(workload: str, df: pd.DataFrame) -> dict:
    import warnings

    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM, PoissonBayesMixedGLM

    kind, family, _ = WORKLOADS[workload]
    if kind != "crossed":
        raise NotImplementedError("statsmodels VB is run on crossed_binary only")
    cls = BinomialBayesMixedGLM if family == "binomial" else PoissonBayesMixedGLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        model = cls.from_formula("y ~ x", {"subj": "0 + C(subj)", "item": "0 + C(item)"}, df)
        res = model.fit_vb()
        seconds = time.perf_counter() - t0
    # posterior means of the fixed effects and of the log-SDs of the variance components
    fe = res.fe_mean
    return {
        "seconds": seconds,
        "fixef": [float(v) for v in fe],
        "vc_sd": [float(np.exp(v)) for v in res.vcp_mean],
        "evals": None,
    }


FITTERS = {"memoe": _fit_memoe, "statsmodels_vb": _fit_statsmodels_vb}


def worker(tool: str, workload: str) -> dict:
    import warnings

    warnings.simplefilter("ignore")
    fitter = FITTERS[tool]
    df = simulate(workload)
    fitter(workload, simulate(workload, small=True))  # warm-up: imports, first-call costs
    exact = _reset_peak()
    base = _status()["VmRSS"]
    out = fitter(workload, df)
    peak = _status()["VmHWM"]
    out.update(tool=tool, workload=workload, rows=len(df), base_rss_mib=base, added_mib=peak - base, peak_reset=exact)
    return out


# ---------------------------------------------------------------------------------------------- driver
def run_one(tool: str, workload: str, timeout: float, pythonpath: str | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", tool, workload]
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
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


def summarise(runs: list[dict], workloads: list[str]) -> str:
    def med(tool, w, field):
        vals = [r[field] for r in runs if r["tool"] == tool and r["workload"] == w and r.get(field) is not None]
        return statistics.median(vals) if vals else None

    lines = [
        "| workload | rows | family, method | memoe time (runs) | evaluations: stage 1 / stage 2 / all "
        "| PIRLS iterations | memory added | -2 logLik | statsmodels VB (different estimator) |",
        "|" + "---|" * 9,
    ]
    for w in workloads:
        rs = [r for r in runs if r["workload"] == w and r["tool"] == "memoe" and "seconds" in r]
        if not rs:
            continue
        _kind, family, nagq = WORKLOADS[w]
        times = ", ".join(f"{r['seconds']:.2f}" for r in rs)
        vb = med("statsmodels_vb", w, "seconds")
        lines.append(
            f"| {w} | {rs[0]['rows']:,} | {family}, {'Laplace' if nagq == 1 else f'nAGQ={nagq}'} "
            f"| {_fmt_s(med('memoe', w, 'seconds'))} ({times}) "
            f"| {med('memoe', w, 'stage1_evals'):.0f} / {med('memoe', w, 'stage2_evals'):.0f} / "
            f"{med('memoe', w, 'evals'):.0f} | {med('memoe', w, 'pirls_iterations'):.0f} "
            f"| {med('memoe', w, 'added_mib'):.0f} MiB | {rs[0]['criterion']:.4f} | {_fmt_s(vb)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", nargs=2, metavar=("TOOL", "WORKLOAD"), help=argparse.SUPPRESS)
    ap.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS), help=f"any of {', '.join(WORKLOADS)}")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900.0, help="per fit, seconds")
    ap.add_argument(
        "--old", metavar="PATH",
        help="also run memoe with PATH (e.g. a checkout's src/) first on PYTHONPATH, as tool 'memoe_old'",
    )
    ap.add_argument("--json", help="write all runs and the machine facts here")
    args = ap.parse_args(argv)
    if args.worker:
        tool = "memoe" if args.worker[0] == "memoe_old" else args.worker[0]
        print(json.dumps(worker(tool, args.worker[1]) | {"tool": args.worker[0]}))
        return 0

    workloads = [w for w in args.workloads.split(",") if w]
    tools = [t for t in args.tools.split(",") if t]
    if args.old:
        tools = ["memoe_old", *tools]
    facts = machine_facts()
    print("machine:", json.dumps(facts))
    runs: list[dict] = []
    for rep in range(args.repeats):
        for w in workloads:
            for tool in tools:
                if tool == "statsmodels_vb" and w not in SM_WORKLOADS:
                    continue
                r = run_one(tool, w, args.timeout, args.old if tool == "memoe_old" else None)
                r["repeat"] = rep
                runs.append(r)
                if "error" in r:
                    msg = r["error"]
                elif tool.startswith("memoe"):
                    msg = (
                        f"{r['seconds']:.3f} s, +{r['added_mib']:.0f} MiB, evals {r['stage1_evals']}/"
                        f"{r['stage2_evals']}/{r['evals']}, PIRLS {r['pirls_iterations']}, -2logL {r['criterion']:.6f}"
                    )
                else:
                    msg = f"{r['seconds']:.3f} s, +{r['added_mib']:.0f} MiB, fe {np.round(r['fixef'], 4)}"
                print(f"[{rep + 1}/{args.repeats}] {w:22s} {tool:15s} {msg}", flush=True)
    print()
    print(summarise(runs, workloads))
    if args.old:
        print()
        print(summarise([r | {"tool": "memoe"} for r in runs if r["tool"] == "memoe_old"], workloads))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": facts, "runs": runs}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

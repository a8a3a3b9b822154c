"""Coverage of the model-based and sandwich 95% Wald intervals of a binomial MEMoE (Laplace-EM).

Usage::

    python benchmarks/coverage_memoe_laplace.py [--reps 100] [--subjects 300]

Each replicate draws a binomial K = 2 MEMoE (random intercept and slope, gate ``~ w1 + w2``, 8 visits),
fits it with 3 starts and records whether each gating and fixed-effect interval covers the truth.
Label switching is resolved by the canonical order (increasing intercept), matching the truth's order.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import memoe

BETA = np.array([[-1.5, 0.8, 0.6], [1.2, -0.8, -0.6]])
GAMMA = np.array([[0.0, 0.0, 0.0], [0.3, 1.0, -0.8]])
SDS = np.array([[0.8, 0.3], [0.6, 0.3]])


def simulate(n: int, rng: np.random.Generator, visits: int = 8) -> pd.DataFrame:
    w1, w2 = rng.normal(size=n), rng.binomial(1, 0.5, n).astype(float)
    eta = np.column_stack([np.ones(n), w1, w2]) @ GAMMA.T
    p2 = 1.0 / (1.0 + np.exp(-(eta[:, 1] - eta[:, 0])))
    z = (rng.uniform(size=n) < p2).astype(int)
    b = rng.normal(size=(n, 2)) * SDS[z]
    sid = np.repeat(np.arange(n), visits)
    t = np.tile(np.linspace(0.0, 3.0, visits), n)
    x = rng.normal(size=n * visits)
    lin = BETA[z[sid], 0] + BETA[z[sid], 1] * t + BETA[z[sid], 2] * x + b[sid, 0] + b[sid, 1] * t
    y = (rng.uniform(size=n * visits) < 1.0 / (1.0 + np.exp(-lin))).astype(float)
    return pd.DataFrame({"id": sid, "time": t, "x": x, "w1": w1[sid], "w2": w2[sid], "y": y})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--subjects", type=int, default=300)
    args = ap.parse_args()
    truth = {f"gating[2]:{t}": GAMMA[1, j] for j, t in enumerate(["(Intercept)", "w1", "w2"])}
    terms = ["(Intercept)", "time", "x"]
    truth.update({f"fixed[{k + 1}]:{t}": BETA[k, j] for k in range(2) for j, t in enumerate(terms)})
    rng = np.random.default_rng(2026)
    hits = {"model": [], "sandwich": []}
    t0 = time.perf_counter()
    for rep in range(args.reps):
        df = simulate(args.subjects, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=df,
                              family="binomial").fit(n_starts=3, seed=int(rng.integers(1 << 30)), progress=False)
        for kind, robust in (("model", None), ("sandwich", "sandwich")):
            tab = fit.coef_table(robust=robust)
            row = {n: abs(tab.loc[n, "estimate"] - v) <= 1.959964 * tab.loc[n, "std_error"] for n, v in truth.items()}
            hits[kind].append(row)
        if (rep + 1) % 10 == 0:
            print(f"  {rep + 1} replicates, {time.perf_counter() - t0:.0f} s", flush=True)
    elapsed = time.perf_counter() - t0
    out = pd.DataFrame({k: pd.DataFrame(v).mean() for k, v in hits.items()})
    print(f"{args.reps} replicates, {args.subjects} subjects x 8 visits, K = 2 binomial; {elapsed:.0f} s")
    print("coverage of 95% Wald intervals:")
    print(out.round(3).to_string())
    print("mean over parameters:", out.mean().round(3).to_dict())
    # Monte Carlo SE of a 95% coverage estimate: sqrt(0.95 * 0.05 / reps)
    print(f"Monte Carlo SE of each coverage: {np.sqrt(0.95 * 0.05 / args.reps):.3f}")


if __name__ == "__main__":
    main()

"""Time a MEMoE with class-specific AR(1) residuals (issue 12, memoe.moe.structured).

Usage::

    python benchmarks/bench_memoe_structured.py [--subjects 2000] [--visits 8] [--starts 1 5]

Data: K = 3 classes with trajectories ``(b0 + b1 t)`` plus class-specific AR(1) residuals
(phi = 0.2, 0.5, 0.8) and a late-visit SD ratio (1, 1.5, 2), random intercept and slope, a gate on w1.
Model: ``MEMoE("y ~ time + x + (time | id)", gating="~ w1", k=3, correlation=AR1())`` (and with
``weights=VarIdent("visit")``). Prints wall and process CPU time of ``fit(n_starts=s, se=False)``, EM
iterations, log-likelihood, MAP accuracy, the estimated phi_k, then the time of the standard errors.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import memoe
from memoe.marginal import AR1, VarIdent

FORMULA = "y ~ time + x + (time | id)"


def simulate(n: int, visits: int, seed: int = 11) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=n)
    eta = np.column_stack([np.zeros(n), 0.3 + 1.0 * w1, -0.2 - 1.0 * w1])
    prob = np.exp(eta - eta.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    z = (rng.random(n)[:, None] > np.cumsum(prob, axis=1)).sum(axis=1)
    betas = np.array([[0.0, 1.0, 0.5], [2.0, -0.5, 0.5], [4.0, 0.3, -0.5]])
    sds = np.array([[1.0, 0.3], [0.8, 0.2], [0.6, 0.2]])
    sig = np.array([1.0, 0.8, 0.6])
    phis, ratios = np.array([0.2, 0.5, 0.8]), np.array([1.0, 1.5, 2.0])
    t = np.arange(visits, dtype=float)
    late = t >= visits // 2
    phi = phis[z]
    e = np.zeros((n, visits))
    e[:, 0] = rng.normal(size=n)
    for j in range(1, visits):
        e[:, j] = phi * e[:, j - 1] + np.sqrt(1 - phi**2) * rng.normal(size=n)
    s = np.where(late[None, :], ratios[z][:, None], 1.0)
    b = rng.normal(size=(n, 2)) * sds[z]
    x = rng.normal(size=(n, visits))
    B = betas[z]
    y = (B[:, [0]] + b[:, [0]]) + (B[:, [1]] + b[:, [1]]) * t + B[:, [2]] * x + sig[z][:, None] * s * e
    df = pd.DataFrame({
        "id": np.repeat(np.arange(n), visits), "time": np.tile(t, n),
        "visit": np.tile(np.where(late, "late", "early"), n), "x": x.ravel(), "w1": np.repeat(w1, visits),
        "y": y.ravel(),
    })
    return df, z


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=2000)
    ap.add_argument("--visits", type=int, default=8)
    ap.add_argument("--starts", type=int, nargs="+", default=[1, 5])
    args = ap.parse_args()
    df, z = simulate(args.subjects, args.visits)
    for label, kw in (("AR1", {"correlation": AR1()}),
                      ("AR1 + VarIdent", {"correlation": AR1(), "weights": VarIdent("visit")})):
        for s in args.starts:
            t0, c0 = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = memoe.MEMoE(FORMULA, gating="~ w1", k=3, data=df, **kw).fit(
                    n_starts=s, seed=1, se=False, progress=False
                )
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            acc = memoe.metrics.accuracy(fit.classify().to_numpy() - 1, z)
            phi = [round(float(fit.params[f"cor[{k}]:Phi"]), 3) for k in (1, 2, 3)]
            print(f"{label}: n_starts={s}: {wall:.1f} s wall, {cpu:.1f} s CPU, {fit.n_iter} EM iterations, "
                  f"loglik {fit.loglik:.4f}, accuracy {acc:.4f}, Phi {phi}", flush=True)
        t0 = time.perf_counter()
        _ = fit.inference
        print(f"{label}: standard errors (observed information + sandwich): {time.perf_counter() - t0:.1f} s",
              flush=True)


if __name__ == "__main__":
    main()

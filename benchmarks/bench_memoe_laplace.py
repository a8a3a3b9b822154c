"""Time one Laplace-EM run of a binomial MEMoE (issue 12): 2,000 subjects x 8 visits, K = 3.

Usage::

    python benchmarks/bench_memoe_laplace.py [--repeat 3] [--subjects 2000]

Data: a binomial (logit) MEMoE with random intercept and slope per subject, gate of two baseline
covariates, three experts with different trajectories (the truth is printed with the estimates).
Timed: ``MEMoE(..., family="binomial").fit(n_starts=1, se=False)``, i.e. model build, one EM run
from the k-means start to convergence (with the quasi-Newton finish), no standard errors; then the
standard errors (observed information + sandwich) separately. Median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np
import pandas as pd

import memoe

FORMULA = "y ~ time + x + (time | id)"
GATING = "~ w1 + w2"
BETA = np.array([[-1.5, 0.6, 0.5], [1.0, -0.5, -0.5], [0.0, 0.0, 1.0]])
GAMMA = np.array([[0.0, 0.0, 0.0], [0.2, 1.0, -0.8], [-0.3, -0.8, 0.9]])
SDS = np.array([[0.8, 0.3], [0.6, 0.2], [0.7, 0.25]])


def simulate(n_subjects: int, visits: int = 8, seed: int = 1) -> tuple[pd.DataFrame, np.ndarray]:
    """Binomial MEMoE data (vectorised); returns the data and the true classes (0-based)."""
    rng = np.random.default_rng(seed)
    N = n_subjects
    w1, w2 = rng.normal(size=N), rng.binomial(1, 0.5, N).astype(float)
    eta = np.column_stack([np.ones(N), w1, w2]) @ GAMMA.T
    pi = np.exp(eta - eta.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    z = (rng.uniform(size=N)[:, None] > np.cumsum(pi, axis=1)).sum(axis=1)
    b = rng.normal(size=(N, 2)) * SDS[z]
    sid = np.repeat(np.arange(N), visits)
    t = np.tile(np.arange(visits) / 2.0, N)
    x = rng.normal(size=N * visits)
    lin = BETA[z[sid], 0] + BETA[z[sid], 1] * t + BETA[z[sid], 2] * x + b[sid, 0] + b[sid, 1] * t
    y = (rng.uniform(size=N * visits) < 1.0 / (1.0 + np.exp(-lin))).astype(float)
    df = pd.DataFrame({"id": sid, "time": t, "x": x, "w1": w1[sid], "w2": w2[sid], "y": y})
    return df, z


def accuracy(fit_classes: np.ndarray, true: np.ndarray, K: int) -> float:
    return max(float(np.mean(np.asarray(p)[fit_classes] == true)) for p in itertools.permutations(range(K)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--subjects", type=int, default=2000)
    args = ap.parse_args()
    data, z = simulate(args.subjects)
    times, se_times = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        fit = memoe.MEMoE(FORMULA, gating=GATING, k=3, data=data, family="binomial").fit(
            n_starts=1, seed=1, progress=False, se=False
        )
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _ = fit.inference
        se_times.append(time.perf_counter() - t0)
    print(f"binomial MEMoE, {args.subjects} subjects x 8 visits, K = 3, random intercept and slope")
    print(f"one Laplace-EM run (fit, n_starts=1, no SEs): median {statistics.median(times):.2f} s  {times}")
    print(f"standard errors (information + sandwich):     median {statistics.median(se_times):.2f} s")
    print(f"EM iterations {fit.n_iter}, converged {fit.converged}, logLik {fit.loglik:.4f}")
    print(f"MAP accuracy {accuracy(fit.classify().to_numpy() - 1, z, 3):.4f}")
    print(fit.fixef_table.round(3))
    print("truth:\n", BETA)


if __name__ == "__main__":
    main()

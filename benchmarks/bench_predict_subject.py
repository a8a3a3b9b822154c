"""Benchmark of dynamic prediction (``predict_subject``) for 100,000 subjects.

Data (simulated here, deterministic seed): 2,000 subjects x 6 visits to fit the model; then
``--subjects`` (default 100,000) *new* subjects, each with a history of 1 to 6 visits (uniform) at
continuous times ``visit + U(-0.2, 0.2)``, predicted at 3 future times (7, 8, 10) given as an array.
``y = 1 + 0.5 time + b0 + b1 time + e`` (SD of b0, b1: 1, 0.3; residual SD 1, serial correlation for
the structured models).

Models:

* ``lmm``: ``memoe.lmm("y ~ time + (time | id)")`` (``V_i = Z_i G Z_i' + sigma^2 I``);
* ``lme_car1``: ``memoe.lme("y ~ time + (time | id)", correlation=CAR1("time"))``;
* ``lme_exp_nugget``: ``memoe.lme("y ~ time + (1 | id)", correlation=Exp("time", nugget=True))``.

Timed: the ``predict_subject`` call alone (build of the design rows of history and targets, grouping
of the subjects by history length, the batched conditional normal), best of ``--repeat`` runs.

Usage::

    python benchmarks/bench_predict_subject.py
    python benchmarks/bench_predict_subject.py --subjects 10000 --repeat 1
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd


def simulate(n: int, visits_max: int, rng: np.random.Generator, full: bool) -> pd.DataFrame:
    nv = np.full(n, visits_max) if full else rng.integers(1, visits_max + 1, n)
    ids = np.repeat(np.arange(n), nv)
    visit = np.concatenate([np.arange(k) for k in nv]).astype(float)
    t = visit + rng.uniform(-0.2, 0.2, len(visit))
    b0, b1 = rng.normal(0, 1.0, n), rng.normal(0, 0.3, n)
    # AR(1)-like serial noise in visit order (phi 0.5) plus white noise
    e = rng.normal(0, 0.8, len(t))
    first = np.concatenate(([True], ids[1:] != ids[:-1]))
    for j in range(1, len(e)):  # data generation only; not part of the timing
        if not first[j]:
            e[j] += 0.5 * e[j - 1]
    y = 1 + 0.5 * t + b0[ids] + b1[ids] * t + e
    return pd.DataFrame({"id": ids, "time": t, "y": y})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import memoe
    from memoe.marginal import CAR1, Exp

    rng = np.random.default_rng(2024)
    train = simulate(2_000, 6, rng, full=True)
    hist = simulate(args.subjects, 6, rng, full=False)
    hist["id"] += 10**7  # new subjects
    times = np.array([7.0, 8.0, 10.0])
    models = {
        "lmm": lambda: memoe.lmm("y ~ time + (time | id)", train).fit(),
        "lme_car1": lambda: memoe.lme("y ~ time + (time | id)", train, correlation=CAR1("time")).fit(),
        "lme_exp_nugget": lambda: memoe.lme("y ~ time + (1 | id)", train, correlation=Exp("time", nugget=True)).fit(),
    }
    print(f"{args.subjects:,} subjects, {len(hist):,} history rows, {args.subjects * len(times):,} predictions")
    for name, make in models.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = make()
        best = np.inf
        for _ in range(args.repeat):
            start = time.perf_counter()
            out = fit.predict_subject(hist, times, time="time")
            best = min(best, time.perf_counter() - start)
        assert np.isfinite(out[["fit", "sd"]].to_numpy()).all()
        print(f"{name:16s} {best:7.2f} s")


if __name__ == "__main__":
    main()

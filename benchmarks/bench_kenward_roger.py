"""Time Kenward-Roger and Satterthwaite inference on sleepstudy and a 1,000-subject random-slope model.

Usage::

    python benchmarks/bench_kenward_roger.py [--subjects 1000] [--visits 10] [--repeat 5] [--dense]
                                             [--mmrm-subjects 400] [--mmrm-visits 6]

The last line times Kenward-Roger on an MMRM (``gls`` with an unstructured correlation over the visits,
per-visit variances and 10% missed visits; :mod:`memoe.marginal.kenward_roger`).

Each timing is the best of ``--repeat`` runs with the per-fit cache cleared, so it includes the
marginal moments (batched over subjects), the adjusted covariance / the Hessian in (theta, sigma),
the coefficient table and a type III ANOVA table. ``--dense`` also times a pbkrtest-style dense
computation (n x n inverse of V and n x n products per variance parameter) on a few smaller sizes,
for comparison; R itself is not available on this machine.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import memoe
from memoe.inference import ddf as ddf_module


def simulate(subjects: int, visits: int, seed: int = 1) -> pd.DataFrame:
    """Random intercept and slope per subject, a between-subject factor and a within-subject covariate."""
    rng = np.random.default_rng(seed)
    sub = np.repeat(np.arange(subjects), visits)
    t = np.tile(np.arange(visits, dtype=float), subjects)
    b0 = rng.normal(0.0, 2.0, subjects)
    b1 = rng.normal(0.0, 0.5, subjects)
    grp = rng.integers(0, 2, subjects)
    x = rng.normal(size=subjects * visits)
    y = 1.0 + 0.5 * t + 0.3 * x + 0.4 * grp[sub] + b0[sub] + b1[sub] * t + rng.normal(0.0, 1.0, len(sub))
    return pd.DataFrame(
        {
            "y": y,
            "t": t,
            "x": x,
            "grp": pd.Categorical(grp[sub].astype(str)),
            "id": pd.Categorical(sub.astype(str)),
        }
    )


def simulate_mmrm(subjects: int, visits: int, seed: int = 2) -> pd.DataFrame:
    """Two arms, AR(0.6)-like correlation and increasing SDs over the visits, 10% of visits missed."""
    rng = np.random.default_rng(seed)
    lag = np.abs(np.subtract.outer(np.arange(visits), np.arange(visits)))
    sd = np.linspace(1.0, 2.0, visits)
    cov = 0.6**lag * np.outer(sd, sd)
    arm = rng.integers(0, 2, subjects)
    y = rng.multivariate_normal(np.zeros(visits), cov, subjects) + 0.3 * np.arange(visits) * arm[:, None]
    frame = pd.DataFrame(
        {
            "y": y.ravel(),
            "visit": np.tile(np.arange(1, visits + 1), subjects),
            "arm": np.repeat(arm, visits).astype(str),
            "id": np.repeat(np.arange(subjects), visits).astype(str),
        }
    )
    keep = (rng.random(len(frame)) > 0.1) | (frame["visit"] == 1)
    return frame[keep].reset_index(drop=True)


def time_mmrm(subjects: int, visits: int, repeat: int) -> None:
    from memoe.marginal import Symm, VarIdent

    data = simulate_mmrm(subjects, visits)
    t0 = time.perf_counter()
    fit = memoe.gls(
        "y ~ C(visit) * arm", data, correlation=Symm("id", visit="visit"), weights=VarIdent("visit")
    ).fit()
    t_fit = time.perf_counter() - t0

    def kr():
        fit.__dict__.pop("_kr_cache", None)
        fit.coef_table(ddf="kenward-roger")
        fit.coef_table(ddf="kenward-roger-linear")

    def satt():
        fit.__dict__.pop("_satterthwaite", None)
        fit.coef_table(ddf="satterthwaite")

    print(f"MMRM gls (n={fit.nobs}, {subjects} subjects, {visits} visits, Symm + VarIdent): fit {t_fit:.1f} s")
    print(f"    {'KR both variants (table)':28s} {best_of(kr, repeat) * 1e3:8.2f} ms")
    print(f"    {'Satterthwaite (table)':28s} {best_of(satt, repeat) * 1e3:8.2f} ms")


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def time_inference(fit, repeat: int) -> dict[str, float]:
    def fresh(method: str):
        def run():
            ddf_module._CACHE.pop(fit, None)
            fit.coef_table(ddf=method)
            fit.anova(ddf=method, type=3)

        return run

    def vcov_adjusted():
        ddf_module._CACHE.pop(fit, None)
        ddf_module.ingredient(fit, "kr")

    return {
        "KR vcovAdj": best_of(vcov_adjusted, repeat),
        "KR table+anova": best_of(fresh("kenward-roger"), repeat),
        "Satterthwaite table+anova": best_of(fresh("satterthwaite"), repeat),
    }


def dense_pbkrtest_like(fit) -> None:
    """The dominant cost of pbkrtest's vcovAdj: V^-1 and G_r V^-1 (n x n) for each parameter."""
    from memoe.inference.marginal import natural_parameters

    d = fit.design
    n = d.n
    blk = d.blocks[0]
    q = blk.q
    Z = np.zeros((n, blk.nlevels * q))
    for a in range(q):
        Z[np.arange(n), blk.factor.codes * q + a] = blk.Z[:, a]
    params = natural_parameters(fit)
    G = []
    for i, j in zip(params.row, params.col, strict=True):
        E = np.zeros((q, q))
        E[i, j] = E[j, i] = 1.0
        G.append(Z @ np.kron(np.eye(blk.nlevels), E) @ Z.T)
    G.append(np.eye(n))
    V = sum(v * g for v, g in zip(params.values, G, strict=True))
    Vi = np.linalg.inv(V)
    H = [g @ Vi for g in G]
    _ = [[np.sum(a.T * b) for b in H] for a in H]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=1000)
    ap.add_argument("--visits", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dense", action="store_true", help="also time a pbkrtest-style dense n x n computation")
    ap.add_argument("--mmrm-subjects", type=int, default=400)
    ap.add_argument("--mmrm-visits", type=int, default=6)
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    cases = [
        ("sleepstudy (n=180, 18 subjects)", "Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")),
        (
            f"simulated (n={args.subjects * args.visits}, {args.subjects} subjects)",
            "y ~ t * grp + x + (t | id)",
            simulate(args.subjects, args.visits),
        ),
    ]
    for label, formula, data in cases:
        t0 = time.perf_counter()
        fit = memoe.lmm(formula, data=data).fit(reml=True)
        t_fit = time.perf_counter() - t0
        res = time_inference(fit, args.repeat)
        print(f"{label}: fit {t_fit * 1e3:.1f} ms")
        for name, sec in res.items():
            print(f"    {name:28s} {sec * 1e3:8.2f} ms")
    if args.dense:
        for subjects in (50, 100, 200):
            fit = memoe.lmm("y ~ t * grp + x + (t | id)", data=simulate(subjects, args.visits)).fit(reml=True)
            sec = best_of(lambda f=fit: dense_pbkrtest_like(f), 1)
            ours = best_of(lambda f=fit: (ddf_module._CACHE.pop(f, None), ddf_module.ingredient(f, "kr")), 3)
            print(f"dense pbkrtest-style, n={fit.nobs}: {sec * 1e3:9.1f} ms   (batched: {ours * 1e3:.2f} ms)")
    if args.mmrm_subjects > 0:
        time_mmrm(args.mmrm_subjects, args.mmrm_visits, args.repeat)


if __name__ == "__main__":
    main()

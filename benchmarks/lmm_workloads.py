"""Simulated workloads of ``bench_lmm_speed.py`` (deterministic seeds, shapes of well-known data sets)."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "GROUPS", "SIMULATORS", "crossed_large", "insteval3", "kb07", "long", "movielens", "nested", "pastes",
    "penicillin", "sleepstudy",
]


def _degrees(rng: np.random.Generator, n_levels: int, total: int, minimum: int, sigma: float) -> np.ndarray:
    """Log-normal degrees with a floor, rescaled to sum to ``total`` (realistic skew: few heavy users)."""
    raw = rng.lognormal(0.0, sigma, n_levels)
    d = minimum + np.floor(raw / raw.sum() * (total - minimum * n_levels)).astype(np.int64)
    d[np.argsort(-raw)[: total - d.sum()]] += 1
    return d


def _bipartite(rng, n_a: int, n_b: int, total: int, min_a: int, sigma_a: float, sigma_b: float):
    """Distinct (a, b) pairs: a's degree log-normal, b picked by a log-normal popularity (Gumbel top-k)."""
    deg = _degrees(rng, n_a, total, min_a, sigma_a)
    deg = np.minimum(deg, n_b)
    logp = rng.normal(0.0, sigma_b, n_b)
    a_out, b_out = [], []
    # benchmark data only: one vectorised top-k per a-level (6,040 levels for MovieLens)
    for a, k in enumerate(deg):
        g = logp - np.log(-np.log(rng.random(n_b)))
        b_out.append(np.argpartition(-g, k - 1)[:k])
        a_out.append(np.full(k, a))
    return np.concatenate(a_out), np.concatenate(b_out)


def movielens(seed: int = 1) -> tuple[pd.DataFrame, str]:
    """MovieLens-1M shape: 1,000,209 ratings, 6,040 users (>= 20 ratings each) x 3,706 items."""
    rng = np.random.default_rng(seed)
    u, i = _bipartite(rng, 6040, 3706, 1_000_209, 20, 1.0, 1.4)
    y = 3.6 + 0.4 * rng.normal(size=6040)[u] + 0.5 * rng.normal(size=3706)[i] + 0.9 * rng.normal(size=len(u))
    df = pd.DataFrame({"y": np.clip(np.round(y), 1, 5), "user": u, "item": i})
    return df, "y ~ 1 + (1 | user) + (1 | item)"


def insteval3(seed: int = 2) -> tuple[pd.DataFrame, str]:
    """InstEval shape: 73,421 rows, 2,972 students x 1,128 lecturers (distinct pairs), 14 depts x service."""
    rng = np.random.default_rng(seed)
    s, d = _bipartite(rng, 2972, 1128, 73_421, 1, 0.6, 1.2)
    dept = rng.integers(0, 14, 1128)[d]
    service = rng.integers(0, 2, len(s))
    y = (
        3.2
        + 0.3 * rng.normal(size=2972)[s]
        + 0.5 * rng.normal(size=1128)[d]
        + 0.1 * rng.normal(size=28)[dept * 2 + service]
        + 1.1 * rng.normal(size=len(s))
    )
    df = pd.DataFrame({"y": y, "s": s, "d": d, "dept": dept.astype(str), "service": service.astype(str)})
    return df, "y ~ service + (1 | s) + (1 | d) + (1 | dept:service)"


def crossed_large(seed: int = 3, n: int = 1_000_000, n_a: int = 50_000, n_b: int = 20_000) -> tuple[pd.DataFrame, str]:
    """1,000,000 rows, 50,000 x 20,000 crossed levels drawn uniformly (the sparse-path stress case)."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n_a, n), rng.integers(0, n_b, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=n_a)[a] + 0.7 * rng.normal(size=n_b)[b] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "a": a, "b": b}), "y ~ x + (1 | a) + (1 | b)"


def nested(seed: int = 4, G: int = 10_000) -> tuple[pd.DataFrame, str]:
    """The issue-13 crash report: 10,000 g x 2 h, 3 rows each, ``(1 | g) + (1 | g:h)``."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(G), 6)
    h = np.tile(np.repeat(np.arange(2), 3), G)
    x = rng.normal(size=len(g))
    y = 1 + 0.5 * x + rng.normal(size=G)[g] + 0.7 * rng.normal(size=2 * G)[g * 2 + h] + rng.normal(size=len(g))
    return pd.DataFrame({"y": y, "x": x, "g": g, "h": h}), "y ~ x + (1 | g) + (1 | g:h)"


def long(seed: int = 5, N: int = 100_000, visits: int = 10) -> tuple[pd.DataFrame, str]:
    """``y ~ t + x + (t | id)``: N subjects x 10 visits (1,000,000 rows at N = 100,000)."""
    rng = np.random.default_rng(seed)
    idx = np.repeat(np.arange(N), visits)
    t = np.tile(np.arange(visits, dtype=float), N)
    x = rng.normal(size=N * visits)
    b = rng.multivariate_normal([0, 0], [[1.0, 0.2], [0.2, 0.25]], size=N)
    # float64 columns (t as floats), an int64 id column
    y = 1 + 0.3 * t + 0.5 * x + b[idx, 0] + b[idx, 1] * t + rng.normal(size=N * visits)
    return pd.DataFrame({"y": y, "t": t, "x": x, "id": idx}), "y ~ t + x + (t | id)"


def kb07(seed: int = 7) -> tuple[pd.DataFrame, str]:
    """kb07 shape (Kronmueller & Barr 2007): 1,789 of 56 subjects x 32 items, three 2-level factors,
    the "maximal" ``(1 + spkr + prec | subj) + (1 + spkr + prec | item)`` (264 random effects)."""
    rng = np.random.default_rng(seed)
    subj, item = np.repeat(np.arange(56), 32), np.tile(np.arange(32), 56)
    keep = np.sort(rng.permutation(len(subj))[:1789])
    subj, item = subj[keep], item[keep]
    spkr = np.where((item + subj) % 2 == 0, "new", "old")
    prec = np.where((item // 2 + subj) % 2 == 0, "break", "maintain")
    load = np.where((item // 4 + subj) % 2 == 0, "yes", "no")
    Ls = np.linalg.cholesky(np.array([[1, 0.3, 0.2], [0.3, 0.5, 0.1], [0.2, 0.1, 0.4]])) * 300
    Li = np.linalg.cholesky(np.array([[1, 0.4, 0.3], [0.4, 0.6, 0.2], [0.3, 0.2, 0.5]])) * 400
    bs, bi = rng.standard_normal((56, 3)) @ Ls.T, rng.standard_normal((32, 3)) @ Li.T
    X = np.c_[np.ones(len(subj)), spkr == "old", prec == "maintain"]
    y = (2000 + 150 * X[:, 1] - 300 * X[:, 2] + 50 * (load == "yes") + (X * bs[subj]).sum(1)
         + (X * bi[item]).sum(1) + rng.normal(0, 700, len(subj)))
    df = pd.DataFrame({"rt_trunc": y.round(1), "spkr": spkr, "prec": prec, "load": load,
                       "subj": [f"S{v}" for v in subj], "item": [f"I{v}" for v in item]})
    return df, "rt_trunc ~ spkr + prec + load + (1 + spkr + prec | subj) + (1 + spkr + prec | item)"


def _dataset(name: str) -> pd.DataFrame:
    import memoe

    return memoe.datasets.load(name)


def sleepstudy() -> tuple[pd.DataFrame, str]:
    """lme4's sleepstudy (180 rows, 18 subjects): one grouping factor, vector random effects."""
    return _dataset("sleepstudy"), "Reaction ~ Days + (Days | Subject)"


def penicillin() -> tuple[pd.DataFrame, str]:
    """lme4's Penicillin (144 rows): fully crossed 24 plates x 6 samples."""
    return _dataset("Penicillin"), "diameter ~ 1 + (1 | plate) + (1 | sample)"


def pastes() -> tuple[pd.DataFrame, str]:
    """lme4's Pastes (60 rows): 30 casks nested in 10 batches, ``(1 | batch/cask)``."""
    return _dataset("Pastes"), "strength ~ 1 + (1 | batch/cask)"


# named groups of workloads for ``--workloads``
GROUPS = {"small": ("kb07", "sleepstudy", "penicillin", "pastes")}

SIMULATORS = {
    "movielens": movielens,
    "insteval3": insteval3,
    "crossed_1m": crossed_large,
    "nested": nested,
    "long_1m": long,
    "long_10m": lambda: long(N=1_000_000),
    "kb07": kb07,
    "sleepstudy": sleepstudy,
    "penicillin": penicillin,
    "pastes": pastes,
}

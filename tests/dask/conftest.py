"""A LocalCluster of 2 worker processes shared by the Dask tests (skipped without ``memoe[dask]``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("dask.distributed")


@pytest.fixture(scope="session")
def client():
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=50)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def simulate(n_sub: int = 120, seed: int = 1, family: str = "gaussian") -> pd.DataFrame:
    """Unbalanced longitudinal data (1-7 rows per subject), rows in random order, a 3-level factor, NaN rows."""
    rng = np.random.default_rng(seed)
    ni = rng.integers(1, 8, n_sub)
    sub = np.repeat(np.arange(n_sub), ni)
    t = rng.uniform(0, 5, len(sub))
    x = rng.normal(size=len(sub))
    g = rng.choice(["a", "b", "c"], len(sub))
    b0, b1 = rng.normal(0, 1, n_sub), rng.normal(0, 0.4, n_sub)
    eta = 0.5 + 0.3 * t + 0.4 * x + 0.3 * (g == "b") + b0[sub] + b1[sub] * t
    if family == "gaussian":
        y = eta + rng.normal(0, 0.7, len(sub))
    elif family == "binomial":
        eta = eta - 1.5 - 0.3 * t
        y = rng.binomial(1, 1.0 / (1.0 + np.exp(-eta))).astype(float)
    else:
        y = rng.poisson(np.exp(0.3 * eta - 0.2)).astype(float)
    df = pd.DataFrame({"id": sub, "t": t, "x": x, "g": g, "y": y})
    df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df.loc[[3, 17, 40], "x"] = np.nan
    df.loc[[8], "y"] = np.nan
    return df


def single_subject_partitions(df: pd.DataFrame):
    """Partitions aligned by subject, the first holding a single subject."""
    import dask.dataframe as dd

    s = df.sort_values("id", kind="stable")
    ids = s["id"].to_numpy()
    pieces = [s[ids == ids.min()], s[(ids > ids.min()) & (ids < 40)], s[(ids >= 40) & (ids < 90)], s[ids >= 90]]
    return dd.concat([dd.from_pandas(p, npartitions=1, sort=False) for p in pieces])

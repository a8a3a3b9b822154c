"""Cluster-robust (sandwich) covariances of ``gls`` / ``lme`` fits, as clubSandwich's ``vcovCR``.

The working covariance is the fitted marginal one, W_i = Z_i D Z_i' + S_i C_i S_i (sigma^2 cancels
between bread and meat), the clusters are the groups of the residual structure (clubSandwich's
default for ``gls`` and ``lme``: the grouping factor), and the residuals are marginal, y - X beta.
The estimators themselves (CR0, CR1, CR1S, CR2, CR3) are memoe's LMM ones
(:func:`memoe.inference.sandwich.sandwich_from_clusters`), fed with per-cluster arrays padded to the largest group.
For ``gls`` ML fits the result is scaled by (N / (N - p))^2 as clubSandwich's is (its bread is nlme's
inflated ML ``vcov``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.errors import MemoeError
from memoe.inference.sandwich import CR_TYPES, ClusterArrays, sandwich_from_clusters

__all__ = ["vcov_cr"]


def _cluster_arrays(fit) -> ClusterArrays:
    P = fit.model.problem
    lay = fit.model.layout
    J, m, p = lay.ngroups, lay.max_size, P.p
    V = np.zeros((J, m, m))
    V[:, np.arange(m), np.arange(m)] = 1.0  # padding: independent unit-variance rows, zero X and r
    X = np.zeros((J, m, p))
    r = np.zeros((J, m))
    resid = P.y - P.X @ fit.fixef.to_numpy()
    for bucket, W in zip(lay.buckets, P.covariances(fit.params_unconstrained), strict=True):
        n = bucket.n
        V[bucket.groups, :n, :n] = W
        X[bucket.groups, :n] = P.X[bucket.rows]
        r[bucket.groups, :n] = resid[bucket.rows]
    sizes = np.bincount(lay.codes, minlength=J)
    return ClusterArrays(codes=lay.codes, labels=pd.Index(lay.levels), pos=lay.position, sizes=sizes, V=V, X=X, r=r)


def vcov_cr(fit, type: str = "CR2") -> pd.DataFrame:
    """Cluster-robust covariance of the fixed effects (clusters = the groups of the residual structure).

    Parameters
    ----------
    fit : MarginalResult
    type : {"CR0", "CR1", "CR1S", "CR2", "CR3"}

    Returns
    -------
    pandas.DataFrame, shape (p, p)
    """
    type = str(type).upper()
    if type not in CR_TYPES:
        raise MemoeError(f"unknown cluster-robust type {type!r}; choose one of {', '.join(CR_TYPES)}")
    if fit.model.layout.name is None:
        raise MemoeError("cluster-robust covariances need groups: give the correlation structure a group")
    ca = _cluster_arrays(fit)
    if ca.J < 2:
        raise MemoeError("cluster-robust covariances need at least 2 clusters")
    v = sandwich_from_clusters(ca, fit._s.vcov_unscaled, type)
    if fit.kind == "gls" and not fit.reml:
        # clubSandwich's bread is vcov(fit) / sigma^2, and nlme's gls ML vcov carries N / (N - p)
        # (see MarginalResult.vcov): the factor enters both breads
        v = v * (fit.nobs / (fit.nobs - fit.design.p)) ** 2
    names = fit.design.fixef_names
    return pd.DataFrame(v, index=names, columns=names)

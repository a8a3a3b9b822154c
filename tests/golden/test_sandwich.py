"""Cluster-robust covariances against clubSandwich's ``vcovCR`` (CR0, CR2) for every nested lmer case.

Sensitivity to theta: every reference design here is balanced with the random-effects columns inside
the fixed-effects span of each cluster (sleepstudy, Dyestuff, Pastes, Orthodont), and for such designs
the CR0/CR2 estimators do not depend on theta at all (the weights factor as a Kronecker product and
cancel between bread and meat; clubSandwich's REML and ML matrices are identical for that reason).
So lme4's default-fit slack in theta (up to 2e-3 for orthodont_lmer_reml) costs nothing and 1e-6 is met
at our own optimum; ``test_reference_designs_are_theta_invariant`` quantifies that. Because the golden
cases cannot detect a wrong working covariance, the formulas are also checked on unbalanced data
against a dense, loop-per-cluster oracle and against CR2's defining unbiasedness property.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.linalg as sla

import memoe
from memoe.errors import MemoeError
from memoe.inference.sandwich import cluster_arrays, sandwich_from_clusters, vcov_cr
from tests.conftest import LMER_CASES, fitted_case, r_matrix, reference, reference_data

AVAILABLE = sorted(c for c in LMER_CASES if reference(c)["results"]["clubSandwich"]["available"])
CROSSED = sorted(c for c in LMER_CASES if not reference(c)["results"]["clubSandwich"]["available"])


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _fit(formula, df, reml=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memoe.lmm(formula, data=df).fit(reml=reml)


@pytest.mark.parametrize("case", AVAILABLE)
@pytest.mark.parametrize("type", ["CR0", "CR2"])
def test_matches_clubsandwich(case, type):
    cs = reference(case)["results"]["clubSandwich"]
    ref = r_matrix(cs[type])
    fit = fitted_case(case)
    ours = fit.vcov(robust=type).loc[ref.index, ref.columns]
    assert _rel(ours, ref) < 1e-6
    # and at the theta of lme4's default fit (what clubSandwich saw)
    theta_r = pd.Series(reference(case)["results"]["theta"])[fit.theta.index].to_numpy()
    assert _rel(vcov_cr(fit, type, theta=theta_r).loc[ref.index, ref.columns], ref) < 1e-6
    n_clusters = cluster_arrays(fit).J
    assert n_clusters == cs["n_clusters"]


@pytest.mark.parametrize("case", ["sleepstudy_corr_slope_reml", "orthodont_lmer_reml", "pastes_ml"])
def test_reference_designs_are_theta_invariant(case):
    """Relative change of CR2 per unit change of theta (finite differences) is at rounding level."""
    fit = fitted_case(case)
    base = vcov_cr(fit, "CR2").to_numpy()
    slack = reference(case)["results"]["tight_refit"]["max_abs_diff_theta"]
    for k in range(len(fit.state.theta)):
        theta = fit.state.theta.copy()
        theta[k] += 1e-3
        change = _rel(vcov_cr(fit, "CR2", theta=theta), base) / 1e-3
        assert change < 1e-6
        assert change * slack < 1e-9  # lme4's slack cannot move CR2 by more than this


@pytest.mark.parametrize("case", CROSSED)
def test_crossed_factors_are_refused(case):
    with pytest.raises(MemoeError, match="not nested within the clusters"):
        fitted_case(case).vcov(robust="CR2")


# --------------------------------------------------------------------------- dense oracle, unbalanced data


def _dense_cr(fit, cluster_codes, type):
    """CR0/CR2 from the full n x n marginal covariance, one cluster at a time (independent of the code)."""
    d = fit.design
    n = d.n
    lambdas = fit.relative_factors()
    Zs, Ls = [], []
    for blk, lam in zip(d.blocks, lambdas, strict=True):
        Zfull = np.zeros((n, blk.nlevels * blk.q))
        for i in range(n):
            c = blk.factor.codes[i]
            Zfull[i, c * blk.q : (c + 1) * blk.q] = blk.Z[i]
        Zs.append(Zfull)
        Ls.append(np.kron(np.eye(blk.nlevels), lam))
    Z = np.hstack(Zs)
    Lam = sla.block_diag(*Ls)
    V = np.eye(n) + Z @ Lam @ Lam.T @ Z.T
    X, y = d.X, d.y
    W = np.linalg.inv(V)
    M = np.linalg.inv(X.T @ W @ X)
    beta = M @ X.T @ W @ y
    r = y - X @ beta
    meat = np.zeros((d.p, d.p))
    for j in np.unique(cluster_codes):
        rows = np.flatnonzero(cluster_codes == j)
        Vj, Xj, rj = V[np.ix_(rows, rows)], X[rows], r[rows]
        Wj = np.linalg.inv(Vj)
        if type == "CR2":
            R = np.linalg.cholesky(Vj).T
            G = R @ (Vj - Xj @ M @ Xj.T) @ R.T
            w, Q = np.linalg.eigh(G)
            A = R.T @ (Q @ np.diag(w**-0.5) @ Q.T) @ R
        else:
            A = np.eye(len(rows))
        u = Xj.T @ Wj @ A @ rj
        meat += np.outer(u, u)
    return M @ meat @ M


@pytest.fixture(scope="module")
def unbalanced():
    df = reference_data("sleepstudy_corr_slope_reml")
    keep = np.random.default_rng(11).random(len(df)) > 0.3
    return df[keep]


@pytest.mark.parametrize("formula", ["Reaction ~ Days + (Days | Subject)", "Reaction ~ Days + (1 | Subject)"])
@pytest.mark.parametrize("type", ["CR0", "CR2"])
def test_dense_oracle_unbalanced(unbalanced, formula, type):
    fit = _fit(formula, unbalanced)
    codes = fit.design.blocks[0].factor.codes
    oracle = _dense_cr(fit, codes, type)
    assert _rel(vcov_cr(fit, type), oracle) < 1e-9
    # here the working covariance matters: CR2 moves with theta
    theta = fit.state.theta * 1.5
    assert _rel(vcov_cr(fit, "CR2", theta=theta), vcov_cr(fit, "CR2")) > 1e-4


def test_dense_oracle_nested_and_unbalanced():
    df = reference_data("pastes_ml")
    keep = np.random.default_rng(5).random(len(df)) > 0.25
    df = df[keep].assign(x=np.random.default_rng(6).standard_normal(int(keep.sum())))
    fit = _fit("strength ~ x + (1 | batch/cask)", df, reml=False)
    cl = fit.design.blocks[[b.factor.name for b in fit.design.blocks].index("batch")].factor.codes
    for type in ("CR0", "CR2"):
        assert _rel(vcov_cr(fit, type), _dense_cr(fit, cl, type)) < 1e-9


def test_cr2_is_unbiased_under_the_working_model(unbalanced):
    """E[CR2] = M (the model-based covariance / sigma^2) when r ~ (I - H) V (I - H)' (Pustejovsky & Tipton)."""
    fit = _fit("Reaction ~ Days + (Days | Subject)", unbalanced)
    ca = cluster_arrays(fit)
    M = fit.state.vcov_unscaled
    # E[r_j r_j'] = V_j - X_j M X_j'; the estimator is quadratic in r, so summing it over the columns
    # of a square root of that matrix gives its expectation
    B = ca.V - np.einsum("jap,pq,jbq->jab", ca.X, M, ca.X)
    w, Q = np.linalg.eigh(B)
    root = Q * np.sqrt(np.clip(w, 0, None))[:, None, :]
    expected = sum(
        sandwich_from_clusters(dataclasses.replace(ca, r=np.ascontiguousarray(root[:, :, k])), M, "CR2")
        for k in range(root.shape[2])
    )
    assert _rel(expected, M) < 1e-9
    # CR0 is biased downwards under the same model
    expected0 = sum(
        sandwich_from_clusters(dataclasses.replace(ca, r=np.ascontiguousarray(root[:, :, k])), M, "CR0")
        for k in range(root.shape[2])
    )
    assert np.all(np.diag(expected0) < np.diag(M))


def test_small_sample_scalings_and_cluster_argument(unbalanced):
    fit = _fit("Reaction ~ Days + (Days | Subject)", unbalanced)
    J, N, p = fit.ngroups["Subject"], fit.nobs, 2
    cr0 = vcov_cr(fit, "CR0")
    np.testing.assert_allclose(vcov_cr(fit, "CR1"), cr0 * J / (J - 1), rtol=1e-12)
    np.testing.assert_allclose(vcov_cr(fit, "cr1s"), cr0 * J * (N - 1) / ((J - 1) * (N - p)), rtol=1e-12)
    cr3 = vcov_cr(fit, "CR3")
    assert np.all(np.diag(cr3) > np.diag(vcov_cr(fit, "CR2")))  # the jackknife is the most conservative
    # the cluster may be named, or given per row of the input data or of the fit
    by_name = vcov_cr(fit, "CR2", cluster="Subject")
    per_row = vcov_cr(fit, "CR2", cluster=unbalanced["Subject"].to_numpy())
    np.testing.assert_allclose(by_name, vcov_cr(fit, "CR2"), rtol=1e-12)
    np.testing.assert_allclose(per_row, by_name, rtol=1e-12)
    with pytest.raises(MemoeError, match="unknown cluster-robust type"):
        vcov_cr(fit, "HC3")
    with pytest.raises(MemoeError, match="values; the fit used"):
        vcov_cr(fit, "CR2", cluster=np.arange(5))
    # a cluster coarser than the grouping factor is fine; a finer one is not
    coarse = (unbalanced["Subject"].astype(int) % 3).to_numpy()
    assert np.all(np.isfinite(vcov_cr(fit, "CR2", cluster=coarse).to_numpy()))
    with pytest.raises(MemoeError, match="not nested"):
        vcov_cr(fit, "CR2", cluster=unbalanced["Days"].to_numpy())

"""Invariances the LMM fit must respect, and the objective against the dense marginal likelihood."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import memoe


def _fit(formula, df, reml=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memoe.lmm(formula, data=df).fit(reml=reml)


@pytest.fixture(scope="module")
def sleep():
    return memoe.datasets.load("sleepstudy")


def test_row_permutation_changes_nothing(sleep):
    f0 = _fit("Reaction ~ Days + (Days | Subject)", sleep)
    perm = np.random.default_rng(1).permutation(len(sleep))
    shuffled = sleep.iloc[perm]
    f1 = _fit("Reaction ~ Days + (Days | Subject)", shuffled)
    assert abs(f0.loglik - f1.loglik) < 1e-9
    np.testing.assert_allclose(f0.fixef, f1.fixef, rtol=1e-7)
    # fitted values follow their rows
    np.testing.assert_allclose(f1.fitted.loc[sleep.index].to_numpy(), f0.fitted.to_numpy(), rtol=1e-6)


def test_relabelling_groups_changes_nothing(sleep):
    f0 = _fit("Reaction ~ Days + (Days | Subject)", sleep)
    relabel = sleep.assign(Subject=sleep["Subject"].astype(str).map(lambda s: f"s{999 - int(s)}"))
    f1 = _fit("Reaction ~ Days + (Days | Subject)", relabel)
    assert abs(f0.loglik - f1.loglik) < 1e-9
    np.testing.assert_allclose(f0.theta.to_numpy(), f1.theta.to_numpy(), rtol=1e-5)


def test_scaling_response_scales_beta_and_sigma(sleep):
    f0 = _fit("Reaction ~ Days + (Days | Subject)", sleep)
    f1 = _fit("Reaction ~ Days + (Days | Subject)", sleep.assign(Reaction=10 * sleep["Reaction"]))
    np.testing.assert_allclose(f1.fixef, 10 * f0.fixef, rtol=1e-6)
    np.testing.assert_allclose(f1.sigma, 10 * f0.sigma, rtol=1e-6)
    np.testing.assert_allclose(f1.theta, f0.theta, rtol=1e-4, atol=1e-6)
    # the REML log-likelihood shifts by -(n - p) log 10
    assert abs(f1.loglik - (f0.loglik - (f0.nobs - 2) * np.log(10))) < 1e-6


def _dense_minus2ll(fit, reml):
    """-2 log L from the dense marginal covariance V = sigma^2 (I + Z Lambda Lambda' Z')."""
    d = fit.design
    n = d.n
    Zs, Ls = [], []
    for blk, lam in zip(d.blocks, fit.relative_factors(), strict=True):
        l, q = blk.nlevels, blk.q
        Z = np.zeros((n, l * q))
        for c in range(q):
            Z[np.arange(n), blk.factor.codes * q + c] = blk.Z[:, c]
        Zs.append(Z)
        Ls.append(np.kron(np.eye(l), lam))
    Z = np.hstack(Zs)
    Lam = np.zeros((Z.shape[1], Z.shape[1]))
    o = 0
    for L in Ls:
        Lam[o : o + L.shape[0], o : o + L.shape[0]] = L
        o += L.shape[0]
    s2 = fit.sigma**2
    V = s2 * (np.eye(n) + Z @ Lam @ Lam.T @ Z.T)
    r = d.y - d.X @ fit.fixef.to_numpy()
    _, logdet = np.linalg.slogdet(V)
    val = logdet + r @ np.linalg.solve(V, r) + n * np.log(2 * np.pi)
    if reml:
        XtVX = d.X.T @ np.linalg.solve(V, d.X)
        val += np.linalg.slogdet(XtVX)[1] - d.p * np.log(2 * np.pi)
    return val


@pytest.mark.parametrize(
    ("name", "formula"),
    [
        ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
        ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
        ("Pastes", "strength ~ 1 + (1 | batch/cask)"),
        ("Orthodont", "distance ~ age * Sex + (age || Subject)"),
    ],
)
@pytest.mark.parametrize("reml", [True, False])
def test_objective_equals_dense_likelihood(name, formula, reml):
    fit = _fit(formula, memoe.datasets.load(name), reml)
    assert abs(fit.deviance - _dense_minus2ll(fit, reml)) < 1e-7 * max(1.0, abs(fit.deviance))


def test_crossed_random_slopes_against_dense():
    rng = np.random.default_rng(3)
    n = 400
    df = pd.DataFrame(
        {
            "a": rng.integers(0, 15, n).astype(str),
            "b": rng.integers(0, 8, n).astype(str),
            "x": rng.normal(size=n),
        }
    )
    df["y"] = 1 + 0.5 * df["x"] + rng.normal(size=n) + df["a"].map(
        dict(zip(map(str, range(15)), rng.normal(size=15), strict=True))
    ) + df["x"] * df["b"].map(dict(zip(map(str, range(8)), rng.normal(size=8), strict=True)))
    fit = _fit("y ~ x + (1 | a) + (x | b)", df, reml=True)
    assert abs(fit.deviance - _dense_minus2ll(fit, True)) < 1e-7 * abs(fit.deviance)

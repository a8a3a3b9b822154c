"""The GLMM speed paths (issue 13) give the exact path's answers.

* warm starts of PIRLS across evaluations reach the cold-start optimum;
* the Poisson deviances from eta, the log-likelihood as deviance + constant and the canonical-link working
  weights equal the families' general formulas;
* the separation certificate never hides a separation the linear programme finds, and does skip it on a
  well-posed fit;
* the single-factor weighted PLS from raw per-level sums equals the general penalised least squares.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import special

from memoe.glmm import GlmmControl, glmm
from memoe.glmm.design import no_separation_certificate, separating_direction
from memoe.glmm.families import Binomial, Poisson


def _logistic_slope(seed: int = 3, groups: int = 40, per: int = 25) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per)
    trt = rng.integers(0, 2, len(g)).astype(float)
    anger = rng.integers(10, 40, len(g)).astype(float)  # uncentred: intercept and slope strongly correlated
    b = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.3], [0.3, 0.5]], groups)
    eta = -1.5 + 0.05 * anger + 0.7 * trt + b[g, 0] + b[g, 1] * trt
    y = (rng.random(len(g)) < special.expit(eta)).astype(float)
    return pd.DataFrame({"y": y, "trt": trt, "anger": anger, "g": g})


def _poisson(seed: int = 5, groups: int = 200, per: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per)
    x = rng.standard_normal(len(g))
    eta = 0.3 + 0.4 * x + rng.normal(0, 0.6, groups)[g]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "x": x, "g": g})


@pytest.mark.parametrize(
    "formula, make, family",
    [
        ("y ~ trt + anger + (trt | g)", _logistic_slope, "binomial"),
        ("y ~ x + (1 | g)", _poisson, "poisson"),
    ],
)
def test_warm_starts_reach_the_cold_optimum(formula, make, family):
    df = make()
    warm = glmm(formula, df, family).fit(warn=False)
    cold = glmm(formula, df, family).fit(warn=False, control=GlmmControl(warm_start=False))
    # both stop within BOBYQA's ftol_abs (1e-11) of one optimum; a few 1e-9 of slack for PIRLS' stopping error
    assert warm.loglik >= cold.loglik - 1e-8
    assert abs(warm.loglik - cold.loglik) < 1e-6
    # estimates within what a 1e-8 change of the deviance allows at this curvature (H ~ 10-1000): 1e-3
    np.testing.assert_allclose(warm.fixef.to_numpy(), cold.fixef.to_numpy(), atol=2e-3)
    np.testing.assert_allclose(warm.theta.to_numpy(), cold.theta.to_numpy(), atol=2e-3)
    # the Hessian-based covariance comes from a deterministic objective either way
    np.testing.assert_allclose(np.diag(warm.vcov()), np.diag(cold.vcov()), rtol=1e-2)


def test_fast_family_paths_equal_the_general_formulas():
    rng = np.random.default_rng(0)
    df = _poisson()
    m = glmm("y ~ x + (1 | g)", df, "poisson")
    P = m.problem
    eta = rng.normal(0.3, 1.0, P.n)
    mu = Poisson().linkinv(eta)
    general = Poisson().dev_resids(P.y, mu, P.wt)
    np.testing.assert_allclose(P.dev_resids(mu, eta), general, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(P.dev_resids(mu), general, rtol=1e-12, atol=1e-12)
    full = -2.0 * Poisson().loglik(P.y, mu, P.wt, P.ntrials)
    first = P.loglik_terms(mu, general)  # sets the constant
    mu2 = Poisson().linkinv(eta + 0.3)
    assert first == pytest.approx(full, rel=1e-13)
    assert P.loglik_terms(mu2, P.dev_resids(mu2)) == pytest.approx(
        -2.0 * Poisson().loglik(P.y, mu2, P.wt, P.ntrials), rel=1e-12
    )
    # canonical logit weights: wt mu (1 - mu) = wt mu_eta^2 / V
    b = glmm("y ~ trt + (1 | g)", _logistic_slope(), "binomial").problem
    eta = rng.normal(0.0, 2.0, b.n)
    mu = Binomial().linkinv(eta)
    dmu, w = b._weights(eta, mu)
    fam = Binomial()
    np.testing.assert_allclose(dmu, fam.mu_eta(eta), rtol=1e-12)
    np.testing.assert_allclose(w, b.wt * fam.mu_eta(eta) ** 2 / fam.variance(mu), rtol=1e-12)


def test_single_factor_wpls_equals_the_general_solver():
    df = _logistic_slope()
    m = glmm("y ~ trt + anger + (trt | g)", df, "binomial")
    P = m.problem
    assert P.single is not None
    rng = np.random.default_rng(1)
    w = rng.uniform(0.05, 0.25, P.n)
    z = rng.standard_normal(P.n)
    theta = np.array([0.9, 0.2, 0.5])
    for with_beta in (True, False):
        u1, b1, ld1 = P.single.solve(theta, w, z, with_beta)
        sol = P.wls_problem(w, z, with_beta).solve(theta, reml=False)
        u2 = np.concatenate([uk.ravel() for uk in sol.u])
        np.testing.assert_allclose(u1, u2, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b1, sol.beta, rtol=1e-10, atol=1e-12)
        assert ld1 == pytest.approx(float(sol.factor.logdet_Z), rel=1e-12)


def test_separation_certificate_is_sound():
    df = _logistic_slope()
    m = glmm("y ~ trt + anger + (1 | g)", df, "binomial")
    st = m.problem.solve(np.array([0.8]), beta=None)
    assert st.converged
    assert no_separation_certificate(m.design.X, m.gdesign.y, m.gdesign.wt, st.mu, m.family)
    # a separated design: x > 0 exactly where y = 1; whatever means are offered, no certificate
    sep = df.copy()
    sep["x"] = np.where(sep["y"] > 0, 1.0, -1.0) * (1.0 + np.arange(len(sep)) % 3)
    ms = glmm("y ~ x + (1 | g)", sep, "binomial")
    assert separating_direction(ms.design.X, ms.gdesign.y, ms.gdesign.wt) is not None
    for mu in (np.full(ms.problem.n, 0.5), np.clip(special.expit(sep["x"].to_numpy()), 1e-9, 1 - 1e-9)):
        assert not no_separation_certificate(ms.design.X, ms.gdesign.y, ms.gdesign.wt, mu, ms.family)
    with pytest.warns(Warning):
        fit = ms.fit()
    assert "x" in ms.separation()
    assert any("separation" in msg for msg in fit.messages)


def test_stage2_evaluations_on_correlated_coefficients():
    """Uncentred covariate (intercept and slope correlated ~ -0.98): the whitened second stage needs far
    fewer evaluations than BOBYQA on the raw coefficients, at no worse an optimum."""
    df = _logistic_slope()
    fit = glmm("y ~ trt + anger + (trt | g)", df, "binomial").fit(warn=False)
    assert fit.stage2.opt.feval < 150
    assert fit.converged


def _crossed_binary(seed: int = 11, n_s: int = 60, n_i: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    s, i = np.repeat(np.arange(n_s), n_i), np.tile(np.arange(n_i), n_s)
    x = rng.standard_normal(len(s))
    keep = rng.random(len(s)) < 0.85  # unbalanced: not every subject sees every item
    eta = -0.3 + 0.5 * x + rng.normal(0, 1.0, n_s)[s] + rng.normal(0, 0.6, n_i)[i]
    y = (rng.random(len(s)) < special.expit(eta)).astype(float)
    return pd.DataFrame({"y": y, "x": x, "s": s, "i": i}).loc[keep]


@pytest.mark.parametrize("dense_g", [True, False])
def test_crossed_scalar_first_factor_wpls_equals_the_general_solver(dense_g):
    """The q1 = 1 crossed path (diagonal L_1, G_z dense or on its pair map) solves the same penalised least
    squares as the LMM's general solver, with a random slope in the second factor."""
    m = glmm("y ~ x + (1 | s) + (x | i)", _crossed_binary(), "binomial")
    P = m.problem
    assert P.dense is not None and P.dense._pairs is not None
    P.dense._dense_g = dense_g
    rng = np.random.default_rng(2)
    w = rng.uniform(0.05, 0.25, P.n)
    z = rng.standard_normal(P.n)
    theta = np.array([0.9, 0.6, 0.1, 0.4])
    for with_beta in (True, False):
        u1, b1, ld1 = P.dense.solve(theta, w, z, with_beta)
        sol = P.wls_problem(w, z, with_beta).solve(theta, reml=False)
        u2 = np.concatenate([uk.ravel() for uk in sol.u])
        np.testing.assert_allclose(u1, u2, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(b1, sol.beta, rtol=1e-9, atol=1e-11)
        assert ld1 == pytest.approx(float(sol.factor.logdet_Z), rel=1e-12)


def test_poisson_deviance_sums_and_fixed_predictor():
    """The step-halving test's Poisson deviance sum (two dot products) equals the unit deviances' sum, falls
    back to them where the log link's floor binds, and ``offset + X beta`` from X' equals the product."""
    df = _poisson()
    df["e"] = np.linspace(0.5, 2.0, len(df))
    P = glmm("y ~ x + (1 | g)", df, "poisson", offset=np.log(df["e"].to_numpy())).problem
    rng = np.random.default_rng(4)
    eta = rng.normal(0.3, 1.0, P.n)
    mu = Poisson().linkinv(eta)
    d, total = P._deviance(mu, eta)
    assert d is None and total == pytest.approx(float(P.dev_resids(mu, eta).sum()), rel=1e-12)
    eta[3] = -800.0  # exp(eta) floors at eps: the sum comes from the unit deviances
    mu = Poisson().linkinv(eta)
    d, total = P._deviance(mu, eta)
    assert d is not None and total == float(d.sum())
    beta = np.array([0.3, -0.7])
    np.testing.assert_allclose(P.fixed_predictor(beta), P.offset + P.X @ beta, rtol=1e-14, atol=1e-14)
    P.X = P.X[:, :1].copy()  # the GLM's null model replaces X: the cached X' follows
    np.testing.assert_allclose(P.fixed_predictor(beta[:1]), P.offset + P.X @ beta[:1], rtol=1e-14, atol=1e-14)


def test_hessian_from_the_estimates_modes_is_the_cold_hessian():
    """The Hessian evaluations start at the estimates' modes with three PIRLS iterations: the covariance equals
    the one from a cold start (zero modes, five or more iterations) to finite-difference accuracy, on a
    crossed binary fit."""
    df = _crossed_binary()
    fit = glmm("y ~ x + (1 | s) + (1 | i)", df, "binomial").fit(warn=False)
    cold = glmm("y ~ x + (1 | s) + (1 | i)", df, "binomial").result_at(fit.theta.to_numpy(), fit.fixef.to_numpy())
    v1, v2 = fit.vcov().to_numpy(), cold.vcov().to_numpy()
    # on the scale of the variances (an off-diagonal entry may be 1e-3 of them): the cold objective's own
    # stopping error, ~1e-11 / h^2 = 1e-3 on Hessian entries of 10^2-10^3, allows ~1e-5 of that scale
    scale = np.sqrt(np.outer(np.diag(v2), np.diag(v2)))
    assert np.max(np.abs(v1 - v2) / scale) < 1e-5
    assert fit.converged


# ------------------------------------------------------------------ issue 13, third round: row passes and q <= 2
def _layout(df: pd.DataFrame, layout: str) -> pd.DataFrame:
    """Balanced rows sorted by group, sorted with unequal group sizes, or shuffled (three summation paths)."""
    if layout == "unbalanced":
        return df[~((df["g"] % 3 == 0) & (df.groupby("g").cumcount() < 4))].reset_index(drop=True)
    if layout == "shuffled":
        return df.sample(frac=1.0, random_state=11).reset_index(drop=True)
    return df


@pytest.mark.parametrize("layout", ["balanced", "unbalanced", "shuffled"])
@pytest.mark.parametrize(
    "formula",
    ["y ~ trt + anger + (1 | g)", "y ~ trt + anger + (trt | g)", "y ~ trt + (anger | g)", "y ~ anger + (0 + trt | g)"],
)
def test_small_q_closed_form_wpls_equals_the_general_solver(formula, layout):
    """The q <= 2 closed-form per-level factors, for every summation path (matrix-vector product for balanced
    sorted rows, reduceat for sorted rows, bincount otherwise), X columns equal to Z columns or not: the same
    modes, fixed effects and log-determinant as the LMM's general penalised least squares (rounding level of a
    few small factorisations)."""
    df = _layout(_logistic_slope(), layout)
    P = glmm(formula, df, "binomial").problem
    W = P.single
    assert W is not None and W.q <= 2
    assert (W.m is not None) == (layout == "balanced")
    rng = np.random.default_rng(2)
    w = rng.uniform(0.05, 0.25, P.n)
    z = rng.standard_normal(P.n)
    theta = np.array([0.9, -0.2, 0.5])[: P.theta_map.size]
    for with_beta in (True, False, True):  # the work arrays are reused: a second joint call must not see stale rows
        u1, b1, ld1 = W.solve(theta, w, z, with_beta)
        sol = P.wls_problem(w, z, with_beta).solve(theta, reml=False)
        u2 = np.concatenate([uk.ravel() for uk in sol.u])
        np.testing.assert_allclose(u1, u2, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(b1, sol.beta, rtol=1e-9, atol=1e-11)
        assert ld1 == pytest.approx(float(sol.factor.logdet_Z), rel=1e-12)


@pytest.mark.parametrize("layout", ["balanced", "shuffled"])
def test_predictors_into_work_arrays_equal_the_plain_products(layout):
    """``Z Lambda u`` broadcast over balanced sorted rows (or gathered into work arrays) and ``offset + X beta``
    by column additions equal the plain computations."""
    df = _layout(_logistic_slope(), layout)
    P = glmm("y ~ trt + anger + (trt | g)", df, "binomial").problem
    rng = np.random.default_rng(3)
    theta = np.array([0.8, 0.3, 0.6])
    u = rng.standard_normal(P.q)
    out, scratch = np.full(P.n, np.nan), np.full(P.n, np.nan)
    b = u.reshape(-1, 2) @ P.theta_map.lambdas(theta)[0].T
    expected = b[P.codes[0], 0] + b[P.codes[0], 1] * df["trt"].to_numpy()
    assert P.re_predictor(theta, u, out=out, scratch=scratch) is out
    np.testing.assert_allclose(out, expected, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(P.re_predictor(theta, u), out)  # the allocating path, bit for bit
    beta = np.array([-1.2, 0.7, 0.05])
    got = P.fixed_predictor(beta, out=out, scratch=scratch)
    assert got is out
    np.testing.assert_allclose(out, P.X @ beta, rtol=1e-14, atol=1e-14)


def test_link_means_into_work_arrays_are_the_links_formulas():
    """PIRLS' in-place logit and log means are bit for bit the links' own (R's ``t / (1 + t)`` with eta clipped
    at +-30), the logit one within a few ulp of scipy's expit, and the range flag is right."""
    df = _logistic_slope()
    P = glmm("y ~ trt + (1 | g)", df, "binomial").problem
    eta = np.linspace(-40.0, 40.0, P.n)
    out, tmp = np.empty(P.n), np.empty(P.n)
    mu, inside = P._linkinv_into(eta, out, tmp)
    assert mu is out and inside is False
    np.testing.assert_array_equal(mu, Binomial().linkinv(eta))
    np.testing.assert_allclose(mu, special.expit(np.clip(eta, -30.0, 30.0)), rtol=4 * np.finfo(float).eps)
    mu, inside = P._linkinv_into(eta / 2.0, out, tmp)
    assert inside is True
    np.testing.assert_array_equal(mu, Binomial().linkinv(eta / 2.0))
    Pp = glmm("y ~ x + (1 | g)", _poisson(), "poisson").problem
    eta = np.linspace(-50.0, 5.0, Pp.n)
    mu, inside = Pp._linkinv_into(eta, np.empty(Pp.n), np.empty(Pp.n))
    assert inside is None
    np.testing.assert_array_equal(mu, Poisson().linkinv(eta))


@pytest.mark.parametrize("family, make, formula", [
    ("binomial", _logistic_slope, "y ~ trt + (trt | g)"),
    ("poisson", _poisson, "y ~ x + (1 | g)"),
])
def test_transient_states_and_owned_states(family, make, formula):
    """A transient PIRLS state forms its unit deviances on demand (equal to the family's, summing to the deviance
    sum PIRLS kept); an ordinary state owns its arrays (a later solve does not change them)."""
    P = glmm(formula, make(), family).problem
    theta = P.theta_map.initial()
    st = P.solve(theta, beta=None, transient=True)
    assert st.converged
    d = P.dev_resids(st.mu.copy(), st.eta.copy())
    assert st.dev_sum == pytest.approx(float(d.sum()), rel=1e-12)
    np.testing.assert_array_equal(st.dev_resid, d)
    owned = P.solve(theta, beta=None)
    eta, mu, w = owned.eta.copy(), owned.mu.copy(), owned.w.copy()
    P.solve(0.5 * theta, beta=owned.beta + 0.1, u0=owned.u)
    np.testing.assert_array_equal(owned.eta, eta)
    np.testing.assert_array_equal(owned.mu, mu)
    np.testing.assert_array_equal(owned.w, w)
    assert owned.dev_sum == pytest.approx(float(owned.dev_resid.sum()), rel=1e-12)

"""The analytic Laplace gradient and the gradient-based stages (issue 13, small GLMMs).

* the (theta, beta) gradient of lme4's Laplace deviance and the theta gradient of the nAGQ = 0 deviance equal
  central differences of the deviance (scalar and 2 x 2 random effects, binary / trials binomial, Poisson with an
  offset, prior weights);
* the quasi-Newton stages reach BOBYQA's optimum (``GlmmControl(optimizer="bobyqa")``) with fewer evaluations;
* the derivative check from gradient differences gives the value-differenced Hessian;
* the response arithmetic and the binomial-with-trials deviance sums equal the general paths.
"""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.optim import finite_difference_derivatives
from memoe.errors import ArgumentError
from memoe.glmm import GlmmControl, glmm
from memoe.glmm.crossed_gradient import CrossedGradient
from memoe.glmm.design import _arithmetic
from memoe.glmm.families import Binomial
from memoe.glmm.laplace import theta_objective


def _data(seed: int, family: str, slope: bool, trials: bool = False, offset: bool = False, weights: bool = False,
          link: str = "logit"):
    rng = np.random.default_rng(seed)
    G, m = 30, 8
    g = np.repeat(np.arange(G), m)
    keep = rng.random(len(g)) < 0.8  # unbalanced
    g = g[keep]
    n = len(g)
    x = rng.standard_normal(n)
    t = rng.integers(0, 2, n).astype(float)
    eta = -0.3 + 0.5 * x + rng.normal(0, 0.8, G)[g] + (rng.normal(0, 0.5, G)[g] * t if slope else 0.0)
    df = pd.DataFrame({"x": x, "t": t, "g": g})
    kw = {}
    if offset:
        df["e"] = rng.uniform(0.5, 2.0, n)
        eta = eta + np.log(df["e"])
    if family == "poisson":
        df["y"] = rng.poisson(np.exp(eta)).astype(float)
    elif trials:
        df["size"] = rng.integers(1, 15, n)
        df["y"] = rng.binomial(df["size"], Binomial(link=link).linkinv(eta))
    else:
        df["y"] = (rng.random(n) < Binomial(link=link).linkinv(eta)).astype(float)
    if weights:
        df["w"] = rng.integers(1, 4, n).astype(float)
        kw["weights"] = "w"
    if slope == "q3":  # three correlated random effects per level
        eta = eta + rng.normal(0, 0.4, G)[g] * x
    rhs = "x + t + (1 + x + t | g)" if slope == "q3" else "x + t + (t | g)" if slope else "x + (1 | g)"
    if offset:
        rhs += " + offset(np.log(e))"
    lhs = "cbind(y, size - y)" if trials else "y"
    return f"{lhs} ~ {rhs}", df, kw


CASES = [
    (1, "binomial", False, False, False, False),
    (2, "binomial", True, False, False, True),
    (3, "binomial", False, True, False, False),
    (4, "binomial", True, True, False, False),
    (5, "poisson", False, False, True, False),
    (6, "poisson", True, False, True, True),
    (7, "binomial", "q3", False, False, False),
    (8, "poisson", "q3", False, True, True),
]
# non-canonical binomial links (Fisher scoring; the modes move with the observed curvature): (seed, link, slope,
# trials, weights)
LINK_CASES = [
    (11, "probit", False, False, False),
    (12, "probit", True, False, True),
    (13, "cloglog", False, True, False),
    (14, "cloglog", True, True, False),
    (15, "probit", True, True, False),
    (16, "probit", "q3", False, False),
]


def _deviance(P, theta, beta):
    """The Laplace deviance from a cold PIRLS start run to rounding (the finite differences' reference)."""
    st = P.solve(theta, beta, u0=np.zeros(P.q), min_iter=8)
    return P.loglik_terms(st.mu, dev_sum=st.dev_sum) + st.sqrL + st.ldL2


def _family(family: str, link: str):
    return Binomial(link=link) if link != "logit" else family


@pytest.mark.parametrize(
    "seed, family, slope, trials, offset, weights, link",
    [(*c, "logit") for c in CASES] + [(s, "binomial", sl, tr, False, w, lk) for s, lk, sl, tr, w in LINK_CASES],
)
def test_laplace_gradient_equals_central_differences(seed, family, slope, trials, offset, weights, link):
    formula, df, kw = _data(seed, family, slope, trials, offset, weights, link)
    m = glmm(formula, df, _family(family, link), **kw)
    P = m.problem
    k = P.theta_map.size
    theta = np.where(P.theta_map.row == P.theta_map.col, 0.7, 0.2)[:k]
    beta = np.linspace(-0.4, 0.4, P.p)
    x = np.concatenate([theta, beta])
    st = P.solve(theta, beta, u0=np.zeros(P.q), min_iter=8)
    g = P.laplace_gradient(theta, st)
    assert g is not None and g.shape == (k + P.p,)
    h = 1e-5
    fd = np.array([(_deviance(P, (x + h * e)[:k], (x + h * e)[k:]) - _deviance(P, (x - h * e)[:k], (x - h * e)[k:]))
                   / (2 * h) for e in np.eye(len(x))])
    # central differences: truncation ~h^2 f''' and rounding ~eps |f| / h (|f| ~ 1e3): 1e-6 of the gradient's scale
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-6 * max(1.0, np.abs(fd).max()))

    # the nAGQ = 0 deviance (u and beta joint) in theta
    def d0(t):
        s = P.solve(t, None, min_iter=8)
        return P.loglik_terms(s.mu, dev_sum=s.dev_sum) + s.sqrL + s.ldL2

    sj = P.solve(theta, None, min_iter=8)
    gj = P.laplace_gradient(theta, sj, joint=True)
    fdj = np.array([(d0(theta + h * e) - d0(theta - h * e)) / (2 * h) for e in np.eye(k)])
    np.testing.assert_allclose(gj, fdj, rtol=0, atol=1e-6 * max(1.0, np.abs(fdj).max()))


def test_gradient_not_offered_outside_its_conditions(monkeypatch):
    formula, df, _ = _data(1, "binomial", False)
    # a link outside the gradient's scope (binomial log: means not bounded away from 1 by the link)
    m = glmm(formula, df, Binomial(link="log"))
    st = m.problem.solve(np.array([0.5]), np.full(m.problem.p, -1.0))
    assert m.problem.laplace_gradient(np.array([0.5]), st) is None
    assert not m._gradient_available(1, "expected")
    # a probit mean at the link's clamp (|eta| >= 8): no gradient at that point
    mp = glmm(formula, df, Binomial(link="probit"))
    far = np.zeros(mp.problem.p)
    far[0] = 9.0
    stp = mp.problem.solve(np.array([0.5]), far)
    assert mp.problem.laplace_gradient(np.array([0.5]), stp) is None
    # crossed factors with more random effects in all than the dense gradient takes
    df2 = df.assign(h=np.arange(len(df)) % 7)
    m2 = glmm("y ~ x + (1 | g) + (1 | h)", df2, "binomial")
    assert m2._gradient_available(1, "expected")
    for module in ("memoe.glmm.model", "memoe.glmm.pirls"):  # memoe.glmm.glmm (the function) hides the package path
        monkeypatch.setattr(importlib.import_module(module), "CROSSED_GRADIENT_MAX_Q", 30)
    assert not m2._gradient_available(1, "expected")
    st2 = m2.problem.solve(np.array([0.5, 0.5]), np.zeros(m2.problem.p))
    assert m2.problem.laplace_gradient(np.array([0.5, 0.5]), st2) is None
    # adaptive quadrature has its own gradient (memoe.glmm.agq.agq_gradient) for the same families only
    assert glmm(formula, df, "binomial")._gradient_available(5, "expected")
    assert not m._gradient_available(5, "expected")


@pytest.mark.parametrize("seed, family, slope, trials, offset, weights", CASES)
def test_quasi_newton_stages_reach_the_bobyqa_optimum(seed, family, slope, trials, offset, weights):
    formula, df, kw = _data(seed, family, slope, trials, offset, weights)
    qn = glmm(formula, df, family, **kw).fit(warn=False)
    bq = glmm(formula, df, family, **kw).fit(warn=False, control=GlmmControl(optimizer="bobyqa"))
    assert qn.stage2.opt.optimizer == "projected BFGS" and bq.stage2.opt.optimizer != "projected BFGS"
    # the same optimum: never lower than BOBYQA's beyond its stopping slack (ftol_abs 1e-11 plus PIRLS' ~1e-10)
    assert qn.loglik >= bq.loglik - 1e-8 * abs(bq.loglik)
    assert abs(qn.loglik - bq.loglik) < 1e-6
    # estimates within what a 1e-8 change of the deviance allows at these curvatures
    np.testing.assert_allclose(qn.fixef.to_numpy(), bq.fixef.to_numpy(), atol=2e-3)
    np.testing.assert_allclose(qn.theta.to_numpy(), bq.theta.to_numpy(), atol=2e-3)
    assert qn.singular == bq.singular and qn.converged == bq.converged
    # fewer evaluations in both stages
    assert qn.stage1.opt.feval + qn.stage2.opt.feval < bq.stage1.opt.feval + bq.stage2.opt.feval
    # the Hessian from gradient differences against lme4's value differences (both O(h^2); value differences
    # carry a rounding error ~4 eps |f| / h^2 ~ 1e-4 of the entries here)
    np.testing.assert_allclose(np.diag(qn.vcov()), np.diag(bq.vcov()), rtol=1e-3)


def test_derivative_check_from_gradients_equals_value_differences():
    formula, df, _ = _data(2, "binomial", True)
    m = glmm(formula, df, "binomial")
    fit = m.fit(warn=False)
    x = np.concatenate([fit.stage2.theta, fit.stage2.beta])
    k = len(fit.stage2.theta)
    lower = np.concatenate([m.design.theta_map.lower_bounds, np.full(m.design.p, -np.inf)])
    f = m.objective(1, u0=fit.state.pirls.u, min_iter=3)
    g_ref, H_ref = finite_difference_derivatives(f, x, lower, delta=1e-4)
    g, H = m._derivatives(m.objective(1, u0=fit.state.pirls.u, min_iter=3), x, lower, GlmmControl(), None, 1,
                          "expected")
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-9 * abs(fit.criterion))
    scale = np.sqrt(np.outer(np.abs(np.diag(H_ref)), np.abs(np.diag(H_ref))))
    assert np.max(np.abs(H - H_ref) / scale) < 1e-4
    assert k == 3


def test_bad_optimizer_is_refused():
    formula, df, _ = _data(1, "binomial", False)
    with pytest.raises(ArgumentError, match="optimizer"):
        glmm(formula, df, "binomial").fit(control={"optimizer": "nelder-mead"})


def test_response_arithmetic_equals_formulaic():
    cbpp = memoe.datasets.load("cbpp")
    frame = cbpp.assign(size=cbpp["size"].astype(float))
    v = _arithmetic(frame, "I(size - incidence)")
    np.testing.assert_array_equal(v, (cbpp["size"] - cbpp["incidence"]).to_numpy(dtype=float))
    np.testing.assert_array_equal(_arithmetic(frame, "2 * size / 4 + -incidence"),
                                  2 * frame["size"].to_numpy() / 4 - cbpp["incidence"].to_numpy())
    # anything else goes through formulaic: a function call, a power, a factor, an unknown name
    for expr in ("np.log(size)", "size ** 2", "herd - size", "nothere - size"):
        assert _arithmetic(frame, expr) is None
    fit = glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, "binomial").fit()
    assert round(fit.loglik, 3) == -92.026


def test_binomial_trials_deviance_sum_equals_unit_deviances():
    formula, df, _ = _data(3, "binomial", False, trials=True)
    P = glmm(formula, df, "binomial").problem
    assert not P._y_binary
    rng = np.random.default_rng(0)
    eta = rng.normal(0.0, 2.0, P.n)
    mu = P.family.linkinv(eta)
    d, total = P._deviance(mu, eta)
    assert d is None  # the closed form, not the unit deviances
    ref = P.family.dev_resids(P.y, mu, P.wt).sum()
    assert total == pytest.approx(ref, rel=1e-12, abs=1e-10)


def _crossed(seed: int, family: str, link: str = "logit", slope: bool = False):
    """Crossed subjects x items (unbalanced), optionally a random slope on the subjects."""
    rng = np.random.default_rng(seed)
    S, n_items = 15, 12
    subj, item = np.repeat(np.arange(S), n_items), np.tile(np.arange(n_items), S)
    keep = rng.random(len(subj)) < 0.85
    subj, item = subj[keep], item[keep]
    n = len(subj)
    x = rng.standard_normal(n)
    eta = -0.2 + 0.4 * x + rng.normal(0, 0.7, S)[subj] + rng.normal(0, 0.5, n_items)[item]
    if slope:
        eta = eta + rng.normal(0, 0.4, S)[subj] * x
    df = pd.DataFrame({"x": x, "subj": subj, "item": item})
    if family == "poisson":
        df["y"] = rng.poisson(np.exp(eta)).astype(float)
    else:
        df["y"] = (rng.random(n) < Binomial(link=link).linkinv(eta)).astype(float)
    re = "(x | subj) + (1 | item)" if slope else "(1 | subj) + (1 | item)"
    return f"y ~ x + {re}", df


@pytest.mark.parametrize("seed, family, link, slope", [
    (21, "binomial", "logit", False), (22, "poisson", "logit", False), (23, "binomial", "probit", False),
    (24, "binomial", "logit", True), (25, "poisson", "logit", True),
])
def test_crossed_laplace_gradient_equals_central_differences(seed, family, link, slope):
    formula, df = _crossed(seed, family, link, slope)
    m = glmm(formula, df, _family(family, link))
    P = m.problem
    assert P.dense is not None and m._gradient_available(1, "expected")
    k = P.theta_map.size
    theta = np.where(P.theta_map.row == P.theta_map.col, 0.7, 0.2)[:k]
    beta = np.linspace(-0.4, 0.4, P.p)
    x = np.concatenate([theta, beta])
    st = P.solve(theta, beta, u0=np.zeros(P.q), min_iter=8)
    g = P.laplace_gradient(theta, st)
    h = 1e-5
    fd = np.array([(_deviance(P, (x + h * e)[:k], (x + h * e)[k:]) - _deviance(P, (x - h * e)[:k], (x - h * e)[k:]))
                   / (2 * h) for e in np.eye(len(x))])
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-6 * max(1.0, np.abs(fd).max()))

    def d0(t):
        s = P.solve(t, None, min_iter=8)
        return P.loglik_terms(s.mu, dev_sum=s.dev_sum) + s.sqrL + s.ldL2

    sj = P.solve(theta, None, min_iter=8)
    gj = P.laplace_gradient(theta, sj, joint=True)
    fdj = np.array([(d0(theta + h * e) - d0(theta - h * e)) / (2 * h) for e in np.eye(k)])
    np.testing.assert_allclose(gj, fdj, rtol=0, atol=1e-6 * max(1.0, np.abs(fdj).max()))
    # and the fit reaches BOBYQA's optimum
    qn = glmm(formula, df, _family(family, link)).fit(warn=False)
    bq = glmm(formula, df, _family(family, link)).fit(warn=False, control=GlmmControl(optimizer="bobyqa"))
    assert qn.stage2.opt.optimizer == "projected BFGS"
    assert qn.loglik >= bq.loglik - 1e-8 * abs(bq.loglik)
    assert qn.singular == bq.singular


def test_em_start_blocks_are_the_dense_posterior():
    """The crossed EM start reads the diagonal blocks of (Lambda' Z' W Z Lambda + I)^-1 per factor; checked against
    the inverse formed from the dense Z."""
    formula, df = _crossed(24, "binomial", slope=True)
    m = glmm(formula, df, "binomial")
    P = m.problem
    theta = np.array([0.8, 0.1, 0.5, 0.6])[: P.theta_map.size]
    st = P.solve(theta, None, min_iter=8)
    cg = CrossedGradient(P.X, P.codes, P.nlevels, P.Zraw, P.theta_map)
    blocks = cg.posterior_blocks(theta, st.w, st.u)
    Z = cg.Zs.toarray()
    lam = cg._lambda(theta)[0]
    V = Z @ lam
    Ainv = np.linalg.inv(V.T @ (st.w[:, None] * V) + np.eye(P.q))
    for b, (u, Ab) in enumerate(blocks):
        nl, q = P.nlevels[b], P.qk[b]
        idx = cg.offsets[b] + np.arange(nl * q).reshape(nl, q)
        np.testing.assert_allclose(Ab, Ainv[idx[:, :, None], idx[:, None, :]], rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(u, st.u[idx])
    # the EM step is a valid start, and the fit from it reaches BOBYQA's optimum (test above)
    f = theta_objective(P, warm=True)
    em = m._em_theta(m.design.theta_map.initial(), f)
    assert em is not None and np.all(em >= m.design.theta_map.lower_bounds)

"""The analytic gradient of lme4's adaptive Gauss-Hermite deviance (nAGQ > 1) and its use in stage 2 (issue 13).

* :func:`memoe.glmm.agq.agq_gradient` equals central differences of the AGQ deviance with the modes re-found at
  every point (nAGQ 3, 5, 7, 9, 25; binary, trials binomial, Poisson with an offset and prior weights; the probit
  and cloglog links; a scalar random slope), and the check fails when the weights' derivative (the third
  derivative of the log-density) or the modes' movement is left out;
* the cumulant form of the node deviances equals the family's unit deviances;
* the quasi-Newton stage 2 reaches BOBYQA's optimum (``GlmmControl(optimizer="bobyqa")``) in fewer evaluations,
  with the same derivative check and the same warnings;
* no gradient (BOBYQA) where a node's mean is at the link's clamp, or for families outside its scope.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from memoe.errors import SingularFitWarning
from memoe.glmm import GlmmControl, glmm
from memoe.glmm import agq as agq_module
from memoe.glmm.agq import agq_deviance, agq_gradient, gh_rule
from memoe.glmm.families import Binomial

EPS = np.finfo(float).eps


def _data(seed: int, family: str, trials: bool = False, offset: bool = False, weights: bool = False,
          link: str = "logit", slope: bool = False):
    rng = np.random.default_rng(seed)
    G, m = 25, 6
    g = np.repeat(np.arange(G), m)
    keep = rng.random(len(g)) < 0.8  # unbalanced
    g = g[keep]
    n = len(g)
    x = rng.standard_normal(n)
    eta = -0.3 + 0.5 * x + (rng.normal(0, 0.6, G)[g] * x if slope else rng.normal(0, 1.0, G)[g])
    df = pd.DataFrame({"x": x, "g": g})
    kw = {}
    if offset:
        df["e"] = rng.uniform(0.5, 2.0, n)
        eta = eta + np.log(df["e"])
    if family == "poisson":
        df["y"] = rng.poisson(np.exp(eta)).astype(float)
    elif trials:
        df["size"] = rng.integers(1, 12, n)
        df["y"] = rng.binomial(df["size"], Binomial(link=link).linkinv(eta))
    else:
        df["y"] = (rng.random(n) < Binomial(link=link).linkinv(eta)).astype(float)
    if weights:
        df["w"] = rng.integers(1, 4, n).astype(float)
        kw["weights"] = "w"
    rhs = "x + (0 + x | g)" if slope else "x + (1 | g)"
    if offset:
        rhs += " + offset(np.log(e))"
    lhs = "cbind(y, size - y)" if trials else "y"
    fam = family if link == "logit" else Binomial(link=link)
    return glmm(f"{lhs} ~ {rhs}", df, fam, **kw)


def _deviance(P, x, nAGQ):
    """The AGQ deviance with modes from a cold PIRLS start run to rounding (the finite differences' reference)."""
    st = P.solve(x[:1], x[1:], u0=np.zeros(P.q), min_iter=8)
    return agq_deviance(P, st, x[:1], nAGQ)


def _central(P, x, nAGQ, h=1e-5):
    return np.array([(_deviance(P, x + h * e, nAGQ) - _deviance(P, x - h * e, nAGQ)) / (2 * h) for e in np.eye(len(x))])


def _tolerance(fd, f, h=1e-5):
    # truncation ~h^2 f''' (1e-10 of the gradient's scale) and rounding ~eps |f| / h of the differences; the
    # gradient itself is exact to the modes' stopping error (1e-10)
    return 1e-8 * max(1.0, float(np.abs(fd).max())) + 10 * EPS * abs(f) / h


# (seed, family, trials, offset, weights, link, slope, nAGQ, theta)
CASES = [
    (1, "binomial", False, False, False, "logit", False, 5, 0.8),
    (2, "binomial", False, False, True, "logit", False, 25, 1.5),
    (3, "binomial", True, False, False, "logit", False, 9, 0.6),
    (4, "binomial", True, False, True, "logit", False, 3, 0.3),
    (5, "poisson", False, True, False, "logit", False, 9, 0.9),
    (6, "poisson", False, True, True, "logit", False, 25, 0.4),
    (7, "poisson", False, False, False, "logit", True, 7, 0.7),
    (8, "binomial", False, False, False, "probit", False, 7, 0.8),
    (9, "binomial", True, False, True, "probit", False, 5, 0.5),
    (10, "binomial", True, False, False, "cloglog", False, 9, 0.7),
    (11, "binomial", False, False, False, "cloglog", True, 3, 0.6),
    (12, "binomial", True, False, False, "logit", True, 5, 0.9),
]


@pytest.mark.parametrize("seed, family, trials, offset, weights, link, slope, nAGQ, theta", CASES)
def test_agq_gradient_equals_central_differences(seed, family, trials, offset, weights, link, slope, nAGQ, theta):
    m = _data(seed, family, trials, offset, weights, link, slope)
    P = m.problem
    x = np.concatenate([[theta], np.linspace(-0.4, 0.3, P.p)])
    st = P.solve(x[:1], x[1:], u0=np.zeros(P.q), min_iter=8)
    f = agq_deviance(P, st, x[:1], nAGQ)
    g = agq_gradient(P, st, x[:1], nAGQ)
    assert g is not None and g.shape == (1 + P.p,)
    fd = _central(P, x, nAGQ)
    np.testing.assert_allclose(g, fd, rtol=0, atol=_tolerance(fd, f))


def test_agq_gradient_without_its_cache_is_the_same():
    # the gradient recomputes the node quantities when the deviance was not evaluated at that state just before
    m = _data(3, "binomial", trials=True)
    P = m.problem
    theta, beta = np.array([0.6]), np.linspace(-0.4, 0.3, P.p)
    st = P.solve(theta, beta, u0=np.zeros(P.q), min_iter=8)
    cold = agq_gradient(P, st, theta, 9)
    agq_deviance(P, st, theta, 9)
    np.testing.assert_array_equal(agq_gradient(P, st, theta, 9), cold)
    # a stale cache of another nAGQ is not reused
    agq_deviance(P, st, theta, 5)
    np.testing.assert_array_equal(agq_gradient(P, st, theta, 9), cold)


@pytest.mark.parametrize("broken", ["third_derivative", "mode_movement"])
def test_central_difference_check_detects_a_broken_term(monkeypatch, broken):
    # the check above has the power to see each term: without the weights' derivative (lme4's L_jj moves with
    # the modes' weights) or without the modes' movement (the AGQ sum is not stationary at the mode) it fails.
    # Few nodes: with many the quadrature is nearly exact, so nearly independent of the modes and their spread,
    # and these terms shrink with its error
    m = _data(3, "binomial", trials=True)
    P = m.problem
    x = np.concatenate([[1.2], np.linspace(-0.4, 0.3, P.p)])
    fd = _central(P, x, 3)
    st = P.solve(x[:1], x[1:], u0=np.zeros(P.q), min_iter=8)
    f = agq_deviance(P, st, x[:1], 3)
    original = agq_module._curvatures

    def broken_curvatures(problem, state):
        dw, wo = original(problem, state)
        # no dw: the third derivative dropped; a huge observed curvature: the modes (almost) do not move
        return (0.0 * dw, wo) if broken == "third_derivative" else (dw, wo * 1e12)

    monkeypatch.setattr(agq_module, "_curvatures", broken_curvatures)
    g = agq_gradient(P, st, x[:1], 3)
    assert np.abs(g - fd).max() > 30 * _tolerance(fd, f)


@pytest.mark.parametrize("seed, family, trials, link", [(1, "binomial", False, "logit"), (3, "binomial", True, "logit"),
                                                         (5, "poisson", False, "logit")])
def test_cumulant_node_deviances_equal_the_family_unit_deviances(monkeypatch, seed, family, trials, link):
    m = _data(seed, family, trials, offset=family == "poisson", link=link)
    P = m.problem
    for theta in (0.0, 0.7, 3.0):
        th, beta = np.array([theta]), np.linspace(-0.4, 0.3, P.p)
        st = P.solve(th, beta, u0=np.zeros(P.q), min_iter=8)
        fast = agq_deviance(P, st, th, 7)
        with monkeypatch.context() as mp:
            mp.setattr(agq_module, "_canonical", lambda problem, eta: None)  # the family's unit deviances
            general = agq_deviance(P, st, th, 7)
        # the two forms differ by the rounding of sums of ~n terms of size |f| / n
        assert abs(fast - general) <= 1e-13 * abs(general)


def test_gauss_hermite_rule_integrates_normal_moments():
    z, w = gh_rule(7)
    assert abs(w.sum() - 1.0) < 1e-14 and abs(w @ z**2 - 1.0) < 1e-13 and abs(w @ z**4 - 3.0) < 1e-12


FIT_CASES = [
    (1, "binomial", False, False, False, "logit", 5),
    (3, "binomial", True, False, True, "logit", 9),
    (5, "poisson", False, True, False, "logit", 25),
    (6, "poisson", False, True, True, "logit", 3),
    (8, "binomial", False, False, False, "probit", 7),
    (10, "binomial", True, False, False, "cloglog", 5),
]


@pytest.mark.parametrize("seed, family, trials, offset, weights, link, nAGQ", FIT_CASES)
def test_quasi_newton_stage_reaches_the_bobyqa_optimum(seed, family, trials, offset, weights, link, nAGQ):
    m = _data(seed, family, trials, offset, weights, link)
    qn = m.fit(nAGQ=nAGQ)
    bq = m.fit(nAGQ=nAGQ, control=GlmmControl(optimizer="bobyqa"))
    assert qn.stage2.opt.optimizer == "projected BFGS" and bq.stage2.opt.optimizer == "nlopt LN_BOBYQA"
    assert qn.stage2.opt.feval < bq.stage2.opt.feval
    # never below BOBYQA's optimum by more than the objective's rounding and PIRLS' stopping error
    assert qn.loglik >= bq.loglik - 1e-8 * abs(bq.loglik)
    # and never below the start point's value
    assert qn.stage2.opt.fmin <= m.objective(nAGQ, u0=np.zeros(m.problem.q), min_iter=8)(qn.stage2.opt.x0) * (1 + 1e-8)
    # estimates within the optimisers' tolerances, in units of their standard errors
    se = np.sqrt(np.diag(bq.vcov()))
    assert np.all(np.abs(np.asarray(qn.stage2.beta) - np.asarray(bq.stage2.beta)) < 1e-3 * se)
    assert abs(float(qn.stage2.theta[0]) - float(bq.stage2.theta[0])) < 1e-3 * max(1.0, float(bq.stage2.theta[0]))
    np.testing.assert_allclose(np.diag(qn.vcov()), np.diag(bq.vcov()), rtol=1e-3)
    assert qn.convergence.converged and bq.convergence.converged


def test_derivative_check_from_agq_gradients_equals_value_differences():
    m = _data(3, "binomial", trials=True)
    fit = m.fit(nAGQ=9)
    x = np.concatenate([fit.stage2.theta, fit.stage2.beta])
    f = m.objective(9, u0=np.zeros(m.problem.q), min_iter=8)
    lower = np.array([0.0] + [-np.inf] * m.problem.p)
    g_grad, h_grad = m._derivatives(f, x, lower, GlmmControl(), None, 9, "expected")
    m_values = _data(3, "binomial", trials=True)
    m_values._gradient_available = lambda nAGQ, laplace: False  # lme4's value differences
    g_val, h_val = m_values._derivatives(f, x, lower, GlmmControl(), None, 9, "expected")
    np.testing.assert_allclose(g_grad, g_val, rtol=0, atol=1e-12 * abs(fit.criterion) + 1e-9)
    # value second differences carry rounding ~4 eps |f| / h^2 (h = 1e-4): 1e-4 relative of this Hessian
    np.testing.assert_allclose(h_grad, h_val, rtol=1e-4, atol=1e-4 * np.abs(h_val).max())


def test_no_gradient_at_a_clamped_node_and_outside_the_families():
    m = _data(8, "binomial", link="probit")
    P = m.problem
    far = np.zeros(P.p)
    far[0] = 6.0  # the modes' means inside (-8, 8), but nodes at theta = 3 reach the clamp
    st = P.solve(np.array([3.0]), far, u0=np.zeros(P.q), min_iter=8)
    assert agq_gradient(P, st, np.array([3.0]), 25) is None
    # a binomial log link: no gradient, BOBYQA in stage 2
    assert not _data(1, "binomial", link="log")._gradient_available(5, "expected")

def test_singular_fit_warns_as_bobyqa():
    rng = np.random.default_rng(0)
    G, m = 20, 8
    df = pd.DataFrame({"g": np.repeat(np.arange(G), m), "x": rng.standard_normal(G * m)})
    df["y"] = (rng.random(G * m) < 0.4).astype(float)  # no group variance
    kinds = []
    for control in (GlmmControl(), GlmmControl(optimizer="bobyqa")):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            fit = glmm("y ~ x + (1 | g)", df).fit(nAGQ=5, control=control)
        kinds.append(sorted({type(w.message).__name__ for w in rec}))
        assert fit.singular
    assert kinds[0] == kinds[1]
    assert SingularFitWarning.__name__ in kinds[0]

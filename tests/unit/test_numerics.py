"""Numerically hard but valid data fit as their centred/scaled versions (memoe.core.design.scaling)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.design.scaling import choose_scaling
from memoe.errors import DataError, MemoeWarning
from memoe.lmm.objective import PLSProblem

# The optimiser stops when theta moves less than xtol_abs = 1e-8; the deviance is flat to second order
# there, so log-likelihoods agree to ~1e-12 relative and estimates (first order in theta) to ~1e-7.
LOGLIK_RTOL = 1e-8
EST_RTOL = 1e-6


@pytest.fixture(scope="module")
def sleep():
    return memoe.datasets.load("sleepstudy")


def _fit(formula, data, reml):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemoeWarning)  # a right answer needs no warning
        return memoe.lmm(formula, data).fit(reml=reml)


@pytest.mark.parametrize("reml", [False, True])
def test_epoch_offset_in_the_fixed_part(sleep, reml):
    c = 1.7e9
    f = "Reaction ~ Days + (1 | Subject)"
    ref = _fit(f, sleep, reml)
    fit = _fit(f, sleep.assign(Days=sleep.Days + c), reml)
    # a shift is a unimodular reparameterisation: ML and REML criteria are unchanged
    assert fit.loglik == pytest.approx(ref.loglik, rel=LOGLIK_RTOL)
    assert fit.sigma == pytest.approx(ref.sigma, rel=EST_RTOL)
    b1 = ref.fixef["Days"]
    assert fit.fixef["Days"] == pytest.approx(b1, rel=EST_RTOL)
    # the intercept at Days = -c is known to the slope's precision times c
    assert fit.fixef["(Intercept)"] == pytest.approx(ref.fixef["(Intercept)"] - c * b1, rel=EST_RTOL)
    V = ref.vcov().to_numpy()
    se0 = math.sqrt(V[0, 0] - 2 * c * V[0, 1] + c * c * V[1, 1])
    np.testing.assert_allclose(fit.bse.to_numpy(), [se0, ref.bse["Days"]], rtol=EST_RTOL)
    # fitted values: X beta cancels ~1.8e10 down to ~300, losing eps * 1.8e10 ~ 4e-6 absolute
    np.testing.assert_allclose(fit.fitted.to_numpy(), ref.fitted.to_numpy(), rtol=EST_RTOL, atol=1e-5)


@pytest.mark.parametrize("reml", [False, True])
def test_nanosecond_scale_in_the_fixed_part(sleep, reml):
    k = 86400e9
    f = "Reaction ~ Days + (1 | Subject)"
    ref = _fit(f, sleep, reml)
    fit = _fit(f, sleep.assign(Days=sleep.Days * k), reml)
    # ML is invariant; REML's log det(X'V^-1 X) gains 2 log k, so its log-likelihood loses log k
    expected = ref.loglik - (math.log(k) if reml else 0.0)
    assert fit.loglik == pytest.approx(expected, rel=LOGLIK_RTOL)
    assert fit.fixef["Days"] * k == pytest.approx(ref.fixef["Days"], rel=EST_RTOL)
    assert fit.bse["Days"] * k == pytest.approx(ref.bse["Days"], rel=EST_RTOL)
    assert fit.fixef["(Intercept)"] == pytest.approx(ref.fixef["(Intercept)"], rel=EST_RTOL)


@pytest.mark.parametrize("reml", [False, True])
def test_response_shifted_by_1e12(sleep, reml):
    f = "Reaction ~ Days + (Days | Subject)"
    shifted = sleep.assign(Reaction=sleep.Reaction + 1e12)
    # compare with the rounded data shifted back (exact subtraction), so only the fit's error remains
    back = shifted.assign(Reaction=shifted.Reaction - 1e12)
    ref = _fit(f, back, reml)
    fit = _fit(f, shifted, reml)
    assert fit.loglik == pytest.approx(ref.loglik, rel=LOGLIK_RTOL)
    assert fit.sigma == pytest.approx(ref.sigma, rel=EST_RTOL)
    assert fit.fixef["(Intercept)"] - 1e12 == pytest.approx(ref.fixef["(Intercept)"], rel=EST_RTOL)
    assert fit.fixef["Days"] == pytest.approx(ref.fixef["Days"], rel=EST_RTOL)
    np.testing.assert_allclose(fit.bse.to_numpy(), ref.bse.to_numpy(), rtol=EST_RTOL)
    np.testing.assert_allclose(fit.theta.to_numpy(), ref.theta.to_numpy(), rtol=1e-5, atol=1e-7)


def test_response_scaled_by_1e_minus_9_gains_the_jacobian(sleep):
    f = "Reaction ~ Days + (Days | Subject)"
    s = 1e-9
    ref = _fit(f, sleep, False)
    fit = _fit(f, sleep.assign(Reaction=sleep.Reaction * s), False)
    # y -> s y: the density of each observation gains 1/s
    assert fit.loglik == pytest.approx(ref.loglik - ref.nobs * math.log(s), rel=LOGLIK_RTOL)
    assert fit.sigma / s == pytest.approx(ref.sigma, rel=EST_RTOL)
    np.testing.assert_allclose(fit.fixef.to_numpy() / s, ref.fixef.to_numpy(), rtol=EST_RTOL)


def test_random_slope_on_nanoseconds_is_refused_naming_the_column(sleep):
    with pytest.raises(DataError, match=r"'Days' of term '\(Days \| Subject\)'.*rescale"):
        memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep.assign(Days=sleep.Days * 86400e9))


def test_epoch_offset_in_a_fixed_only_covariate_is_not_aliased(sleep):
    # R's qr on raw columns would call Days + 1.7e9 a multiple of the intercept (1.7e-9 < 1e-7)
    fit = _fit("Reaction ~ Days + (1 | Subject)", sleep.assign(Days=sleep.Days + 1.7e9), False)
    assert fit.design.fixed.dropped == []


@pytest.mark.parametrize("reml", [False, True])
def test_forced_scaling_reproduces_every_output(sleep, reml):
    """The back-transformation is exact: a scaled problem equals the plain one at the same theta."""
    m = memoe.lmm("Reaction ~ Days + (Days | Subject) + (1 | Days)", sleep.assign(Days=sleep.Days))
    d = m.design
    args = dict(y=d.y, X=d.X, codes=[b.factor.codes for b in d.blocks], nlevels=[b.nlevels for b in d.blocks],
                Z=[b.Z for b in d.blocks], theta_map=d.theta_map)
    plain = PLSProblem(**args)
    scaled = PLSProblem(**args, scaling=choose_scaling(d.X, d.y, force=True))
    theta = np.array([0.9, 0.1, 0.3, 0.5])[: d.theta_map.size]
    # rounding of O(cond) ulps in the Cholesky factors of well-conditioned data
    rtol = 1e-10
    assert scaled.deviance(theta, reml) == pytest.approx(plain.deviance(theta, reml), rel=rtol)
    a, b = plain.solve(theta, reml), scaled.solve(theta, reml)
    np.testing.assert_allclose(b.beta, a.beta, rtol=rtol)
    np.testing.assert_allclose(b.vcov_unscaled, a.vcov_unscaled, rtol=rtol, atol=1e-14)
    assert b.sigma == pytest.approx(a.sigma, rel=rtol)
    for ub, ua in zip(b.u, a.u, strict=True):
        np.testing.assert_allclose(ub, ua, rtol=1e-8, atol=1e-10)
    fa, fb = plain.factorize(theta), scaled.factorize(theta)
    np.testing.assert_allclose(fb.Lr, fa.Lr, rtol=1e-8, atol=1e-8 * np.abs(fa.Lr).max())
    np.testing.assert_allclose(fb.C, fa.C, rtol=1e-8, atol=1e-8 * np.abs(fa.C).max())
    assert fb.logdet_X == pytest.approx(fa.logdet_X, rel=rtol)
    assert fb.pwrss == pytest.approx(fa.pwrss, rel=rtol)
    cv_a, cv_b = plain.conditional_variances(a), scaled.conditional_variances(b)
    for x, y in zip(cv_b, cv_a, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-8)


def test_ordinary_data_are_not_rescaled(sleep):
    m = memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep)
    assert m.problem.scaling is None
    X = np.column_stack([np.ones(5), np.arange(5.0) + 2005])
    assert choose_scaling(X, np.arange(5.0)) is not None


def test_ill_conditioned_objective_reports_instead_of_crashing():
    from memoe.core.optim.checks import check_convergence

    rep = check_convergence(np.array([np.inf, 0.0]), np.full((2, 2), np.nan), np.array([True, True]))
    assert not rep.converged and "not finite" in rep.messages[0]


def test_inputs_are_not_mutated(sleep):
    d = sleep.assign(Days=sleep.Days + 1.7e9, Reaction=sleep.Reaction + 1e12)
    before = d.copy(deep=True)
    _fit("Reaction ~ Days + (1 | Subject)", d, True)
    pd.testing.assert_frame_equal(d, before)

"""Analytic gradient on the dense small path (memoe.lmm.gradient_small, issue 13) and the fits that use it.

Checked against a 4-point central difference of the criterion (tolerance derivation in
test_lmm_gradient: ``FD_TOL (|f| + |g|)`` bounds the difference's rounding for a Cholesky-based pwrss),
on random theta, ML and REML, 2-3 factors, crossed and nested, scalar and vector-valued random effects
on every factor, prior weights and centred/scaled columns; and against the blocked dense path's
independent derivation (memoe.lmm.gradient) where that one exists (scalar later factors).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import SingularFitWarning
from memoe.lmm.gradient import deviance_and_gradient
from memoe.lmm.gradient_small import small_deviance_and_gradient, small_gradient_available
from memoe.lmm.objective import PLSProblem

from .test_lmm_gradient import FD_TOL, _fd, _random_theta, _simulated_problem


def _problem(qs, nlev, seed, scaled=False, weights=False, nested=False, schur="dense_small"):
    """2-3 factors (crossed, or the first nested in the second) with q_k columns each."""
    rng = np.random.default_rng(seed)
    n = 12 * nlev[0]
    if nested:
        # first factor's level j sits in outer level j % nlev[1]
        c0 = rng.integers(0, nlev[0], size=n)
        c0[: nlev[0]] = np.arange(nlev[0])
        codes = [c0, c0 % nlev[1]] + [rng.integers(0, L, size=n) for L in nlev[2:]]
    else:
        codes = [rng.integers(0, L, size=n) for L in nlev]
        for c, L in zip(codes, nlev, strict=True):
            c[:L] = np.arange(L)
    return _simulated_problem(rng, codes, nlev, qs, scaled=scaled, weights=weights, schur=schur, third="x")


def _check(pb, theta, reml):
    d, g = small_deviance_and_gradient(pb, theta, reml)
    d0 = pb.deviance(theta, reml)
    assert abs(d - d0) <= 1e-10 * abs(d0)
    fd = _fd(pb, theta, reml)
    np.testing.assert_allclose(g, fd, rtol=0, atol=FD_TOL * (abs(d0) + np.abs(fd).max()))
    return g


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize(
    "qs, nlev, scaled, weights, nested",
    [
        ([1, 1], [30, 8], False, False, False),
        ([1, 1, 1], [30, 8, 5], False, False, False),  # two scalar later blocks, different lambdas
        ([1, 1], [30, 6], False, False, True),  # nested (Pastes-like)
        ([2, 2], [25, 8], False, False, False),  # vector-valued on both factors (kb07-like)
        ([3, 2, 1], [20, 7, 4], False, False, False),
        ([1, 3], [25, 6], False, True, False),
        ([2, 1, 1], [25, 7, 4], True, True, False),
        ([2, 2], [24, 6], True, False, True),
    ],
)
def test_small_gradient_matches_finite_differences(qs, nlev, scaled, weights, nested, reml):
    pb = _problem(qs, nlev, seed=sum(nlev) + len(qs), scaled=scaled, weights=weights, nested=nested)
    assert pb.solver == "dense_small" and small_gradient_available(pb)
    rng = np.random.default_rng(len(qs) + 7)
    for _ in range(2):
        _check(pb, _random_theta(qs, rng), reml)


@pytest.mark.parametrize("reml", [True, False])
def test_small_gradient_equals_the_blocked_dense_derivation(reml):
    # two derivations of the same gradient: this module and memoe.lmm.gradient's blocked dense path
    theta = np.array([0.8, -0.2, 0.5, 1.1, 0.3])
    small = _problem([2, 1, 1], [30, 8, 5], seed=4)
    dense = _problem([2, 1, 1], [30, 8, 5], seed=4, schur="dense")
    d1, g1 = deviance_and_gradient(small, theta, reml)
    d2, g2 = deviance_and_gradient(dense, theta, reml)
    assert d1 == pytest.approx(d2, rel=1e-11)
    np.testing.assert_allclose(g1, g2, rtol=1e-7, atol=1e-9 * np.abs(g2).max())


def test_small_gradient_at_zero_theta():
    # on the bound: finite, the criterion is even in a scalar theta (derivative exactly 0), and a
    # zero first-block lambda (no Cholesky of lambda needed) still agrees with differences
    pb = _problem([1, 1, 1], [30, 8, 5], seed=9)
    _, g = small_deviance_and_gradient(pb, np.array([0.7, 0.0, 0.4]), True)
    assert np.all(np.isfinite(g)) and g[1] == 0.0
    vec = _problem([2, 2], [25, 8], seed=3)
    theta = np.array([0.0, 0.0, 0.0, 0.9, 0.2, 0.6])
    d, g = small_deviance_and_gradient(vec, theta, False)
    assert np.isfinite(d) and np.all(np.isfinite(g))


def test_small_gradient_not_finite_outside_the_domain():
    pb = _problem([1, 1], [30, 8], seed=1)
    d, g = small_deviance_and_gradient(pb, np.array([np.nan, 1.0]), True)
    assert d == np.inf and np.all(np.isnan(g))


# ------------------------------------------------------------------------------------ fits
def _crit(fit):
    return fit.opt.fmin


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize(
    "name, formula",
    [
        ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
        ("Pastes", "strength ~ 1 + (1 | batch/cask)"),
    ],
)
def test_gradient_fit_equals_bobyqa_fit_on_small_data(name, formula, reml):
    data = memoe.datasets.load(name)
    fg = memoe.lmm(formula, data).fit(reml=reml)
    assert fg.model.problem.solver == "dense_small"
    assert fg.opt.optimizer.startswith("projected BFGS")
    fb = memoe.lmm(formula, data).fit(reml=reml, control={"optimizer": "bobyqa"})
    assert fb.opt.optimizer.startswith("nlopt")
    assert abs(_crit(fg) - _crit(fb)) <= 1e-9 * abs(_crit(fb))
    np.testing.assert_allclose(fg.theta, fb.theta, rtol=2e-4)
    assert fg.convergence.converged


def _vector_data(seed=11, slope_sd=0.5):
    rng = np.random.default_rng(seed)
    s, i = np.meshgrid(np.arange(24), np.arange(10), indexing="ij")
    s, i = s.ravel(), i.ravel()
    x = rng.choice([-0.5, 0.5], len(s))
    y = (1 + 0.4 * x + rng.normal(size=24)[s] * 0.8 + x * slope_sd * rng.normal(size=24)[s]
         + rng.normal(size=10)[i] * 0.6 + x * 0.4 * rng.normal(size=10)[i] + rng.normal(size=len(s)))
    return pd.DataFrame({"y": y, "x": x, "s": s.astype(str), "i": i.astype(str)})


@pytest.mark.parametrize("reml", [True, False])
def test_gradient_fit_vector_random_effects_on_both_factors(reml):
    df = _vector_data()
    formula = "y ~ x + (1 + x | s) + (1 + x | i)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        fg = memoe.lmm(formula, df).fit(reml=reml)
        fb = memoe.lmm(formula, df).fit(reml=reml, control={"optimizer": "bobyqa"})
    assert fg.model.problem.solver == "dense_small" and fg.opt.optimizer.startswith("projected BFGS")
    # never a worse optimum than the derivative-free fit
    assert _crit(fg) <= _crit(fb) + 1e-9 * abs(_crit(fb))


def test_gradient_fit_on_the_boundary_lands_on_zero_and_warns():
    # no variation between the i levels: its standard deviation's optimum is 0
    rng = np.random.default_rng(5)
    s, i = np.meshgrid(np.arange(20), np.arange(6), indexing="ij")
    s, i = s.ravel(), i.ravel()
    y = rng.normal(size=20)[s] + rng.normal(size=len(s))
    y -= pd.Series(y).groupby(i).transform("mean").to_numpy()
    df = pd.DataFrame({"y": y, "s": s.astype(str), "i": i.astype(str)})
    with pytest.warns(SingularFitWarning):
        fg = memoe.lmm("y ~ 1 + (1 | s) + (1 | i)", df).fit()
    assert fg.opt.optimizer.startswith("projected BFGS")
    assert fg.singular and fg.theta.iloc[1] == 0.0
    fb = memoe.lmm("y ~ 1 + (1 | s) + (1 | i)", df).fit(control={"optimizer": "bobyqa"}, warn=False)
    assert abs(_crit(fg) - _crit(fb)) <= 1e-9 * abs(_crit(fb))


# ------------------------------------------------------------------------------------ set-up and centring
@pytest.mark.parametrize("qs, nlev", [([1, 1], [24, 6]), ([3, 3], [20, 8]), ([2, 1, 3], [20, 7, 4])])
def test_dense_cross_products_equal_the_sparse_ones(qs, nlev):
    import scipy.sparse as sp

    from memoe.lmm.objective import _dense_cross_products

    rng = np.random.default_rng(len(qs))
    n = 300
    codes = [rng.integers(0, L, n) for L in nlev]
    Z = [rng.normal(size=(n, q)) for q in qs]
    xy = [rng.normal(size=n) for _ in range(3)]
    blocks = [PLSProblem._sparse_block(np.arange(n), c, L, z) for c, L, z in zip(codes, nlev, Z, strict=True)]
    Zr = sp.hstack(blocks[1:], format="csc")
    Z1tZr, ZrtZr, ZrtXY = _dense_cross_products(xy, codes, nlev, Z)
    scale = max(np.abs(z).max() for z in Z) ** 2 * n
    np.testing.assert_allclose(Z1tZr, (blocks[0].T @ Zr).toarray(), atol=1e-13 * scale)
    np.testing.assert_allclose(ZrtZr, (Zr.T @ Zr).toarray(), atol=1e-13 * scale)
    np.testing.assert_allclose(ZrtXY, np.column_stack([Zr.T @ c for c in xy]), atol=1e-13 * scale)


def test_centred_dense_small_factor_equals_the_blocked_factor():
    # the dense small path works on [X y] centred against the intercept; its factor, mapped back, is the
    # blocked path's (same C, [X y] rows of the factor, log-determinants and pwrss)
    pen = memoe.datasets.load("Penicillin")
    pen = pen.assign(x=np.arange(len(pen)) % 7 + 100.0)
    small = memoe.lmm("diameter ~ x + (1 | plate) + (1 | sample)", pen).problem
    dense = memoe.lmm("diameter ~ x + (1 | plate) + (1 | sample)", pen).problem
    dense.set_solver("dense")
    assert small.dense_small.Binv is not None
    theta = np.array([1.3, 2.9])
    a, b = small.factorize(theta), dense.factorize(theta)
    for name in ("logdet_Z", "logdet_X", "pwrss"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-10), name
    np.testing.assert_allclose(a.C, b.C, rtol=1e-9, atol=1e-9 * np.abs(b.C).max())
    np.testing.assert_allclose(a.Lr, b.Lr, rtol=1e-8, atol=1e-9 * np.abs(b.Lr).max())
    sa, sb = small.solve(theta, True), dense.solve(theta, True)
    np.testing.assert_allclose(sa.beta, sb.beta, rtol=1e-9)


def test_ml_gradient_fit_does_not_stall_at_the_rounding_level():
    # a response with a large mean: without the centring the deviance's rounding noise (~1e-13 relative)
    # made the line search backtrack at the rounding level (41-130 evaluations in 5 of 40 such fits)
    rng = np.random.default_rng(3)
    counts = []
    for _ in range(12):
        lb, k = rng.integers(5, 15), rng.integers(2, 5)
        b = np.repeat(np.arange(lb), 2 * k)
        c = np.tile(np.repeat(np.arange(k), 2), lb)
        y = 60 + rng.normal(size=lb)[b] * rng.uniform(0, 2) + rng.normal(size=lb * k)[b * k + c] * 3 + rng.normal(
            size=len(b))
        df = pd.DataFrame({"y": y, "b": b.astype(str), "c": c.astype(str)})
        counts.append(memoe.lmm("y ~ 1 + (1 | b/c)", df).fit(reml=False).opt.feval)
    assert max(counts) <= 20, counts

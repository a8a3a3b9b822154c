"""One-factor value + gradient (memoe.lmm.gradient_small.one_factor_deviance_and_gradient, issue 13).

Checked against the lean / chunked value kernels of PLSProblem.deviance (same criterion to rounding) and
against a 4-point central difference of that criterion (tolerance derivation in test_lmm_gradient:
``FD_TOL (|f| + |g|)``), for q_1 = 1 (vector path), 2 (closed-form 2 x 2 path) and 3-4 (batched path),
ML and REML, prior weights and centred/scaled columns, correlated and uncorrelated (``||``) terms; and the
fits "auto" takes with it (q_1 >= 3, few levels) against BOBYQA's optimum.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.lmm.gradient import deviance_and_gradient
from memoe.lmm.gradient_small import (
    ONE_FACTOR_GRADIENT_MAX_LEVELS,
    ONE_FACTOR_GRADIENT_Q2_MAX_LEVELS,
    one_factor_deviance_and_gradient,
    one_factor_gradient_available,
    small_gradient_available,
)
from memoe.lmm.objective import PLSProblem

from .test_lmm_gradient import FD_TOL, _fd, _random_theta, _simulated_problem
from .test_pls import _theta_map


def _one(q: int, nlev: int, seed: int, scaled: bool = False, weights: bool = False):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, nlev, size=8 * nlev)
    codes[:nlev] = np.arange(nlev)
    if q <= 3:
        return _simulated_problem(rng, [codes], [nlev], [q], scaled=scaled, weights=weights, schur="auto")
    # q = 4: a random slope on x next to [1, t, t^2]
    n = len(codes)
    t = rng.uniform(0, 3, n)
    X = np.column_stack([np.ones(n), t, rng.normal(size=n)])
    Z = np.column_stack([np.ones(n), t, t**2, X[:, 2]])
    y = X @ np.array([5.0, 1.0, -0.5]) + (Z * (rng.normal(size=(nlev, 4)) * 0.5)[codes]).sum(1) + rng.normal(size=n)
    return PLSProblem(y, X, [codes], [nlev], [Z], _theta_map([4]))


def _check(pb, theta, reml):
    d, g = one_factor_deviance_and_gradient(pb, theta, reml)
    d0 = pb.deviance(theta, reml)
    # both sum the same per-level terms in a different order: rounding of a sum of l_1 terms of size |d0|
    assert abs(d - d0) <= 1e-10 * abs(d0)
    fd = _fd(pb, theta, reml)
    np.testing.assert_allclose(g, fd, rtol=0, atol=FD_TOL * (abs(d0) + np.abs(fd).max()))


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize(
    "q, nlev, scaled, weights",
    [(1, 12, False, False), (1, 30, True, True), (2, 18, False, False), (2, 40, True, False),
     (2, 25, False, True), (3, 30, False, False), (3, 20, True, True)],
)
def test_one_factor_gradient_matches_finite_differences(q, nlev, scaled, weights, reml):
    pb = _one(q, nlev, seed=q * 100 + nlev, scaled=scaled, weights=weights)
    assert not pb.multi
    rng = np.random.default_rng(q + nlev)
    for _ in range(2):
        _check(pb, _random_theta([q], rng), reml)


@pytest.mark.parametrize("reml", [True, False])
def test_one_factor_gradient_q4(reml):
    pb = _one(4, 25, seed=3)
    _check(pb, _random_theta([4], np.random.default_rng(5)), reml)


def test_one_factor_gradient_at_the_boundary_and_invalid_theta():
    pb = _one(2, 20, seed=1)
    # a zero variance (boundary): still finite, equal to the value kernel
    _check(pb, np.array([0.0, 0.0, 0.7]), True)
    for bad in (np.array([np.nan, 0.1, 0.5]), np.array([np.inf, 0.0, 1.0])):
        d, g = one_factor_deviance_and_gradient(pb, bad, True)
        assert d == np.inf and np.isnan(g).all()


def _slopes(n_id: int, q: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    idx = np.repeat(np.arange(n_id), 8)
    t = np.tile(np.arange(8.0), n_id) + rng.uniform(-0.3, 0.3, 8 * n_id)
    x = rng.normal(size=8 * n_id)
    b = rng.normal(size=(n_id, 4)) * [2.0, 0.5, 0.08, 0.4]
    y = 10 + 0.8 * t - 0.05 * t**2 + b[idx, 0] + b[idx, 1] * t + b[idx, 2] * t**2 + b[idx, 3] * x
    y += rng.normal(size=len(t))
    return pd.DataFrame({"y": y, "t": t, "t2": t**2, "x": x, "id": [f"s{i}" for i in idx]})


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("formula", ["y ~ t + t2 + (1 + t + t2 | id)", "y ~ t + t2 + x + (1 + t + t2 + x | id)"])
def test_auto_fits_q3_with_the_gradient_at_bobyqas_optimum(formula, reml):
    df = _slopes(60, 3)
    model = memoe.lmm(formula, df)
    assert one_factor_gradient_available(model.problem) and small_gradient_available(model.problem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = memoe.lmm(formula, df).fit(reml=reml)
        bob = memoe.lmm(formula, df).fit(reml=reml, control={"optimizer": "bobyqa"})
    assert "BFGS" in auto.opt.optimizer and "BOBYQA" in bob.opt.optimizer
    # the criterion no worse than BOBYQA's beyond the rounding of a converged optimiser (q = 4: BOBYQA stops
    # 1.35 above the optimum the gradient reaches, a near-singular 10-parameter fit)
    assert auto.opt.fmin <= bob.opt.fmin + 1e-10 * abs(bob.opt.fmin)
    if "+ x |" not in formula:
        np.testing.assert_allclose(auto.loglik, bob.loglik, rtol=1e-10)
    assert auto.opt.feval < bob.opt.feval
    # the dispatch of memoe.lmm.gradient reaches this path
    th = auto.opt.x
    d1, g1 = deviance_and_gradient(model.problem, th, reml)
    d2, g2 = one_factor_deviance_and_gradient(model.problem, th, reml)
    assert d1 == d2 and np.array_equal(g1, g2)


def test_q1_and_many_levels_stay_on_bobyqa():
    sleep = memoe.datasets.load("sleepstudy")
    assert not one_factor_gradient_available(memoe.lmm("Reaction ~ Days + (1 | Subject)", sleep).problem)
    fit = memoe.lmm("Reaction ~ Days + (1 | Subject)", sleep).fit()
    assert "BOBYQA" in fit.opt.optimizer
    q2 = _slopes(ONE_FACTOR_GRADIENT_Q2_MAX_LEVELS + 1, 2)
    assert not one_factor_gradient_available(memoe.lmm("y ~ t + (t | id)", q2).problem)
    big = _slopes(ONE_FACTOR_GRADIENT_MAX_LEVELS + 1, 3)
    assert not one_factor_gradient_available(memoe.lmm("y ~ t + t2 + (1 + t + t2 | id)", big).problem)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize(("dataset", "formula"), [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    ("Orthodont", "distance ~ age + Sex + (age | Subject)"),
    ("BodyWeight", "weight ~ Time + Diet + (Time | Rat)"),
])
def test_auto_fits_q2_with_the_gradient_at_bobyqas_optimum(dataset, formula, reml):
    # q_1 = 2 with few levels: the gradient from the moment start, no worse than BOBYQA's optimum
    model = memoe.lmm(formula, memoe.datasets.load(dataset))
    assert one_factor_gradient_available(model.problem)
    auto = model.fit(reml=reml)
    bob = model.fit(reml=reml, control={"optimizer": "bobyqa"})
    assert "BFGS" in auto.opt.optimizer and "BOBYQA" in bob.opt.optimizer
    assert auto.opt.fmin <= bob.opt.fmin + 1e-10 * abs(bob.opt.fmin)
    assert auto.opt.feval < bob.opt.feval

"""The one-factor moment start (memoe.lmm.start) and the prefetched derivative check of LMM.fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.optim import finite_difference_derivatives
from memoe.lmm.start import one_factor_start


def _long(N: int, visits: int = 6, seed: int = 0, slope_mean: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    idx = np.repeat(np.arange(N), visits)
    t = np.tile(np.arange(visits, dtype=float), N)
    x = rng.normal(size=N * visits)
    b = rng.multivariate_normal([0, 0], [[1.0, 0.3], [0.3, 0.25]], size=N)
    y = 1 + slope_mean * t + 0.5 * x + b[idx, 0] + b[idx, 1] * t + rng.normal(size=N * visits)
    return pd.DataFrame({"y": y, "t": t, "x": x, "id": idx})


def test_moment_start_is_close_to_the_reml_optimum():
    df = _long(3000)
    m = memoe.lmm("y ~ t + x + (t | id)", df)
    theta0, step = one_factor_start(m.problem, m.design.theta_map)
    fit = m.fit()
    # balanced design: the moment estimator is consistent, off by O(1 / sqrt(levels))
    np.testing.assert_allclose(theta0, fit.opt.x, rtol=0.05, atol=0.02)
    assert np.all(step > 0) and np.all(step < 0.1 * np.abs(theta0).max() + 1e-12)
    # and the fit from it reaches lme4's optimum from the identity start
    ref = memoe.lmm("y ~ t + x + (t | id)", df).fit(start=m.design.theta_map.initial())
    # the saving is BOBYQA's (the gradient-based default needs ~12 evaluations from either start)
    bob = {"optimizer": "bobyqa"}
    assert m.fit(control=bob).opt.feval < memoe.lmm("y ~ t + x + (t | id)", df).fit(
        start=m.design.theta_map.initial(), control=bob).opt.feval
    assert abs(fit.reml_criterion - ref.reml_criterion) < 1e-7 * abs(ref.reml_criterion)
    np.testing.assert_allclose(fit.params, ref.params, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "formula",
    ["y ~ t + x + (1 | id)", "y ~ t + x + (t || id)", "y ~ x + (0 + t | id) + (1 | id)", "y ~ 1 + (t | id)",
     "y ~ x + (t + x | id)"],
)
def test_start_matches_the_relative_factor_pattern(formula):
    df = _long(400, seed=2)
    m = memoe.lmm(formula, df)
    out = one_factor_start(m.problem, m.design.theta_map)
    assert out is not None
    theta0, step = out
    assert theta0.shape == step.shape == (len(m.design.theta_map.names),)
    assert np.all(theta0 >= m.design.theta_map.lower_bounds)
    fit = m.fit(warn=False)
    ref = memoe.lmm(formula, df).fit(start=m.design.theta_map.initial(), warn=False)
    assert abs(fit.reml_criterion - ref.reml_criterion) < 1e-6 * abs(ref.reml_criterion)


def test_no_start_when_levels_have_too_few_rows():
    # two rows per subject cannot estimate a random intercept and slope per subject: lme4's start is kept
    df = _long(53, visits=10)
    few = df["id"] >= 3
    df = df[~few | (df.groupby("id").cumcount() < 2)]  # 3 subjects with 10 rows, 50 with 2
    m = memoe.lmm("y ~ t + x + (t | id)", df)
    assert one_factor_start(m.problem, m.design.theta_map) is None
    assert m.fit(warn=False).opt.x0.tolist() == m.design.theta_map.initial().tolist()


def test_scaled_columns_give_the_same_start():
    df = _long(300, seed=4)
    m = memoe.lmm("y ~ t + x + (t | id)", df)
    shifted = df.assign(x=df["x"] + 1e9, y=df["y"] * 1e6)
    ms = memoe.lmm("y ~ t + x + (t | id)", shifted)
    assert ms.problem.scaling is not None
    a = one_factor_start(m.problem, m.design.theta_map)[0]
    b = one_factor_start(ms.problem, ms.design.theta_map)[0]
    # theta is relative to sigma: invariant under the scaling of y; the shift of x only moves beta
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_prefetched_derivative_check_equals_the_serial_one(monkeypatch):
    import importlib

    model = importlib.import_module("memoe.lmm.model")
    monkeypatch.setattr(model, "PARALLEL_CHECK_LEVELS", 0)
    for formula, data in [
        ("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")),
        ("y ~ t + x + (t | id)", _long(200, seed=5)),
    ]:
        m = memoe.lmm(formula, data)
        fit = m.fit()
        f = m.objective(True)
        theta, lower = fit.opt.x, m.design.theta_map.lower_bounds
        # one entry at its bound, so that one-sided differences are exercised too
        for th in (theta, np.where(np.arange(len(theta)) == 1, 0.0, theta) if lower[1] == 0 else theta):
            calls = []

            def counted(x, calls=calls, f=f):
                calls.append(1)
                return f(x)

            g = m._stencil_prefetch(counted, th, lower)
            assert g is not counted
            calls.clear()
            # the check differences the off-diagonal pairs forward (LMM._check), so does the prefetch
            parallel = finite_difference_derivatives(g, th, lower, f0=f(th), mixed="forward")
            assert not calls  # every stencil point came from the prefetch
            serial = finite_difference_derivatives(f, th, lower, mixed="forward")
            np.testing.assert_array_equal(serial[0], parallel[0])
            np.testing.assert_array_equal(serial[1], parallel[1])


def test_check_threads_control(monkeypatch):
    import importlib

    model = importlib.import_module("memoe.lmm.model")
    monkeypatch.setattr(model, "PARALLEL_CHECK_LEVELS", 0)
    df = _long(300, seed=6)
    serial = memoe.lmm("y ~ t + x + (t | id)", df).fit()
    threaded = memoe.lmm("y ~ t + x + (t | id)", df).fit(control={"check_threads": 2})
    np.testing.assert_array_equal(serial.opt.x, threaded.opt.x)
    a, b = serial.convergence, threaded.convergence
    assert a.converged == b.converged and a.messages == b.messages
    np.testing.assert_array_equal(a.gradient, b.gradient)
    np.testing.assert_array_equal(a.hessian, b.hessian)
    with pytest.raises(memoe.errors.ArgumentError, match="check_threads"):
        memoe.lmm("y ~ t + x + (t | id)", df).fit(control={"check_threads": 0})


@pytest.mark.parametrize(("dataset", "formula"), [
    ("BodyWeight", "weight ~ Time + Diet + (Time | Rat)"),
    ("Orthodont", "distance ~ age + Sex + (age | Subject)"),
])
def test_start_floor_is_scale_free(dataset, formula):
    # a slope's variance 1e-4 of the intercept's: a floor relative to the largest eigenvalue started BodyWeight's
    # slope at 10x the optimum; on the correlation scale the start is within the estimator's error (~2x)
    model = memoe.lmm(formula, memoe.datasets.load(dataset))
    theta0, _ = one_factor_start(model.problem, model.design.theta_map)
    opt = model.fit(control={"optimizer": "bobyqa"}).theta.to_numpy()
    assert 0.5 < theta0[2] / opt[2] < 2.0
    assert 0.5 < theta0[0] / opt[0] < 2.0

"""The lean one-factor deviance kernel (issue 13): same value as the chunked kernels, everywhere it is used."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.lmm import objective as ob
from memoe.lmm.deviance import profiled_deviance
from memoe.lmm.model import LMM
from tests.tolerances import EPS, ROUNDING


def _chunked(pb, theta: np.ndarray, reml: bool) -> float:
    """The deviance by the chunked path (``_reduced`` + ``_finish``), which the lean kernel replaces."""
    with ob.blas_threads(1):
        *_, logdet_Z, c, info, sf = pb._reduced(np.asarray(theta, float), keep=False)
    ok, logdet_Z, logdet_X, pwrss = pb._finish(logdet_Z, c, info, sf)
    if not ok:
        return math.inf
    dev = profiled_deviance(logdet_Z, logdet_X, pwrss, pb._n_eff, pb.p, reml)
    if pb.scaling is not None:
        dev += pb.scaling.deviance_shift(pb._n_eff, pb.p, reml)
    return dev


def _tol(pb, theta: np.ndarray, b: float) -> float:
    """Allowance for two roundings of the criterion at ``theta``.

    ``pwrss`` is ``y'y`` minus the fitted part, so each kernel carries an absolute error of ``c eps y'y``
    in it (``c`` the roundings per entry: about ten operations per level, then the level sum,
    ``c = 10 (10 + l1)``), which the ``n log(pwrss)`` term turns into ``c n eps y'y / pwrss``. The last pivot
    of each level's factor, ``L11^2 = S11 - L10^2``, carries ``eps S11`` of cancellation, so ``log det S_j``
    an error of ``eps S11 / L11^2``; likewise the pivots of ``R_X`` (``log det(R_X'R_X)``) carry
    ``c eps (X'X)_ii / d_i^2``. All are large only at huge theta, the regime the extreme thetas probe.
    """
    f = pb._factorize(np.asarray(theta, float))
    c = 10.0 * (10 + pb.nlevels[0])
    tol = ROUNDING * abs(b) + 2 * c * EPS * pb._n_eff * pb._wXYtXY[-1, -1] / f.pwrss
    d2 = np.diagonal(f.Lr)[: pb.p] ** 2
    tol += 2 * c * EPS * float(np.sum(np.diagonal(pb._wXYtXY)[: pb.p] / d2))
    L = f.L1
    if L.shape[1] == 2:
        tol += 2 * 10 * EPS * float(np.sum((L[:, 1, 0] ** 2 + L[:, 1, 1] ** 2) / L[:, 1, 1] ** 2))
    return tol


def _thetas(tmap, rng, k=6):
    out = [tmap.initial(), np.zeros(tmap.size)]
    for _ in range(k):
        th = np.where(tmap.is_diagonal, np.abs(rng.normal(0, 2, tmap.size)), rng.normal(0, 1, tmap.size))
        out.append(th)
    # very large and very small relative factors (near-singular S_j, a nearly flat criterion)
    out.append(np.where(tmap.is_diagonal, 1e4, 3.0))
    out.append(np.where(tmap.is_diagonal, 1e-7, 1e-8))
    return out


def _sim(n_id=40, n_per=6, p_extra=0, seed=3):
    rng = np.random.default_rng(seed)
    idx = np.repeat(np.arange(n_id), n_per)
    t = np.tile(np.arange(n_per, dtype=float), n_id)
    df = pd.DataFrame({"id": [f"s{i}" for i in idx], "t": t})
    y = 1.0 + 0.5 * t + rng.normal(0, 1, n_id)[idx] + 0.3 * rng.normal(0, 1, n_id)[idx] * t + rng.normal(0, 1, len(t))
    for j in range(p_extra):
        df[f"x{j}"] = rng.normal(size=len(t))
        y = y + 0.1 * df[f"x{j}"].to_numpy()
    df["y"] = y
    return df


@pytest.mark.parametrize(
    "formula",
    [
        "y ~ t + (t | id)",
        "y ~ t + (1 | id)",
        "y ~ t + (t || id)",
        "y ~ 1 + (0 + t | id)",
        "y ~ t + x0 + x1 + x2 + x3 + (t | id)",  # m = 6: the [X y] corner by LAPACK
    ],
)
@pytest.mark.parametrize("reml", [True, False])
def test_lean_matches_chunked(formula, reml):
    df = _sim(p_extra=4)
    pb = LMM(formula, df).problem
    assert not pb.multi and pb.q[0] <= 2
    rng = np.random.default_rng(11)
    for th in _thetas(pb.theta_map, rng):
        a, b = pb._deviance_lean(th, reml), _chunked(pb, th, reml)
        assert abs(a - b) <= _tol(pb, th, b), th
        assert pb.deviance(th, reml) == a


def test_lean_group_weights_prior_weights_and_scaling():
    df = _sim(n_id=25)
    rng = np.random.default_rng(5)
    df["w"] = rng.uniform(0.5, 2.0, len(df))
    # an epoch-time-like covariate: the problem works on centred, scaled columns
    df["t2"] = df["t"] + 1.6e9
    for formula, kw in [("y ~ t2 + (t | id)", {}), ("y ~ t + (t | id)", {"weights": "w"})]:
        pb = LMM(formula, df, **kw).problem
        for gw in (None, rng.uniform(0.0, 1.0, pb.nlevels[0])):
            pb.set_group_weights(gw)
            for th in _thetas(pb.theta_map, rng, 3):
                for reml in (True, False):
                    a, b = pb._deviance_lean(th, reml), _chunked(pb, th, reml)
                    assert abs(a - b) <= _tol(pb, th, b)


def test_lean_refuses_non_finite_theta_as_inf():
    pb = LMM("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).problem
    assert pb.deviance(np.array([np.nan, 0.0, 1.0]), True) == math.inf
    assert pb.deviance(np.array([np.inf, 0.0, 1.0]), True) == math.inf


def test_small_chol_diag_against_numpy():
    rng = np.random.default_rng(2)
    for m in range(1, 6):
        B = rng.normal(size=(m, m + 2))
        A = B @ B.T
        d = ob._small_chol_diag(A.ravel().tolist(), m)
        np.testing.assert_allclose(d, np.diagonal(np.linalg.cholesky(A)), rtol=1e-12)
        # not positive definite: None (dpotrf's info != 0), never a math domain error
        A2 = A.copy()
        A2[m - 1, m - 1] = -1.0
        assert ob._small_chol_diag(A2.ravel().tolist(), m) is None
        assert ob._lapack_chol_diag(A2.copy()) is None


def test_more_levels_than_the_lean_limit_use_the_chunked_path(monkeypatch):
    df = _sim(n_id=30)
    pb = LMM("y ~ t + (t | id)", df).problem
    monkeypatch.setattr(ob, "LEAN_MAX_LEVELS", 10)
    called = []
    monkeypatch.setattr(pb, "_deviance_lean", lambda *a: called.append(1))
    th = pb.theta_map.initial()
    assert pb.deviance(th, True) == pytest.approx(_chunked(pb, th, True), rel=ROUNDING)
    assert not called


def test_fit_resets_threads_held():
    pb_model = LMM("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy"))
    pb_model.fit()
    assert pb_model.problem.threads_held is False


@pytest.mark.parametrize("formula", ["y ~ t + (t | id)", "y ~ t + (1 | id)", "y ~ t + x0 + x1 + x2 + x3 + (t | id)"])
def test_deviance_many_matches_one_by_one(formula):
    df = _sim(p_extra=4)
    rng = np.random.default_rng(8)
    df["w"] = rng.uniform(0.5, 2.0, len(df))
    pb = LMM(formula, df, weights="w").problem
    T = np.array(_thetas(pb.theta_map, rng, 5))
    for gw in (None, rng.uniform(0.0, 1.0, pb.nlevels[0])):
        pb.set_group_weights(gw)
        for reml in (True, False):
            many = pb.deviance_many(T, reml)
            one = np.array([pb.deviance(t, reml) for t in T])
            for a, b, th in zip(many, one, T, strict=True):
                assert abs(a - b) <= _tol(pb, th, b), th
    # a non-finite point: every point one by one, that one inf
    T2 = np.vstack([T[:2], np.full(T.shape[1], np.nan)])
    out = pb.deviance_many(T2, True)
    assert out[-1] == math.inf and np.isfinite(out[:2]).all()


def test_batched_derivative_check_equals_serial():
    from memoe.lmm.model import FitControl

    sleep = memoe.datasets.load("sleepstudy")
    for formula in ["Reaction ~ Days + (Days | Subject)", "Reaction ~ Days + (1 | Subject)"]:
        m = LMM(formula, sleep)
        fit = m.fit(reml=True)
        theta = fit.theta.to_numpy()
        lower = m.design.theta_map.lower_bounds
        f = m.objective(True)
        batched = m._check(f, theta, lower, FitControl(), reml=True)
        serial = m._check(f, theta, lower, FitControl())  # no reml: the stencil one point at a time
        # the same points; the batched kernel's values differ by rounding only (~eps |f|), which a
        # difference with step h = 1e-4 turns into ~eps |f| / h (gradient) and ~eps |f| / h^2 (Hessian)
        f0 = abs(fit.opt.fmin)
        np.testing.assert_allclose(batched.gradient, serial.gradient, rtol=0, atol=100 * EPS * f0 / 1e-4)
        np.testing.assert_allclose(batched.hessian, serial.hessian, rtol=0, atol=100 * EPS * f0 / 1e-8)
        assert batched.converged == serial.converged and batched.messages == serial.messages


def test_deviance_many_in_several_batches(monkeypatch):
    df = _sim()
    pb = LMM("y ~ t + (t | id)", df).problem
    T = np.array(_thetas(pb.theta_map, np.random.default_rng(4), 5))
    whole = pb.deviance_many(T, True)
    # batches of 2 points: the same values
    monkeypatch.setattr(ob, "LEAN_BATCH_BYTES", 2 * 8 * 4 * pb.m * pb.nlevels[0])
    np.testing.assert_array_equal(pb.deviance_many(T, True), whole)

"""Analytic gradient of the profiled criterion (issue 13) and the gradient-based LMM fit.

The gradient (memoe.lmm.gradient) is checked against a 4-point central difference of the criterion
itself on random theta, for ML and REML, one factor (with group weights) and crossed factors on the
dense path (scalar and vector first factor, 2-3 factors, centred/scaled columns, prior weights).
The difference's error is its rounding, about ``1.5 eps |f| kappa / h`` for a criterion computed
with relative error ``kappa eps`` (kappa up to ~1e5 for a Cholesky-based pwrss; see test_pls), plus
``h^4`` truncation: the tolerance ``FD_TOL (|f| + |g|)`` below bounds both for h = 1e-4.
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.design.scaling import choose_scaling
from memoe.core.optim import minimize_bounded_gradient
from memoe.core.optim.bobyqa import OptSummary
from memoe.errors import ArgumentError, MemoeError
from memoe.lmm.gradient import deviance_and_gradient, gradient_available, gradient_preferred
from memoe.lmm.objective import PLSProblem

from .test_pls import _theta_map

H = 1e-4
# 1.5 eps kappa / h with kappa = 1e5: 3e-7; the h^4 term is far below
FD_TOL = 5e-7


def _fd(pb: PLSProblem, theta: np.ndarray, reml: bool) -> np.ndarray:
    out = np.empty(len(theta))
    for i in range(len(theta)):
        e = np.zeros(len(theta))
        e[i] = H
        f = [pb.deviance(theta + k * e, reml) for k in (-2, -1, 1, 2)]
        out[i] = (f[0] - 8 * f[1] + 8 * f[2] - f[3]) / (12 * H)
    return out


def _check(pb: PLSProblem, theta: np.ndarray, reml: bool) -> None:
    d, g = deviance_and_gradient(pb, theta, reml)
    d0 = pb.deviance(theta, reml)
    assert abs(d - d0) <= 1e-10 * abs(d0)
    fd = _fd(pb, theta, reml)
    np.testing.assert_allclose(g, fd, rtol=0, atol=FD_TOL * (abs(d0) + np.abs(fd).max()))


def _crossed(qs: list[int], nlev: list[int], seed: int, scaled: bool = False, weights: bool = False):
    """Crossed factors (every row a random level of each) with q_k columns each; returns a dense-path problem."""
    rng = np.random.default_rng(seed)
    n = 30 * nlev[0]
    codes = [rng.integers(0, L, size=n) for L in nlev]
    for c, L in zip(codes, nlev, strict=True):
        c[:L] = np.arange(L)  # every level present
    return _simulated_problem(rng, codes, nlev, qs, scaled=scaled, weights=weights, schur="dense")


def _simulated_problem(rng, codes, nlev, qs, *, scaled: bool, weights: bool, schur: str, third: str = "t2"):
    """A PLS problem on simulated rows for given factor codes: X = [1, t, x], Z_k the first q_k of [1, t, t^2]
    (``third="t2"``) or [1, t, x] (``third="x"``), optional prior weights and badly scaled columns."""
    n = len(codes[0])
    t = rng.uniform(0, 3, size=n)
    X = np.column_stack([np.ones(n), t, rng.normal(size=n)])
    Z = [np.column_stack([np.ones(n), t, t**2 if third == "t2" else X[:, 2]][:q]) for q in qs]
    y = X @ np.array([5.0, 1.0, -0.5]) + 0.7 * rng.normal(size=n)
    for c, L, z, q in zip(codes, nlev, Z, qs, strict=True):
        y += (z * (rng.normal(size=(L, q)) * 0.6)[c]).sum(axis=1)
    log_w = 0.0
    if weights:
        w = rng.uniform(0.5, 2.0, size=n)
        sw = np.sqrt(w)
        y, X, Z = y * sw, X * sw[:, None], [z * sw[:, None] for z in Z]
        log_w = float(np.log(w).sum())
    if scaled:
        y = 1e4 + 30.0 * y
        X = X.copy()
        X[:, 1] = 1e6 + 1e3 * X[:, 1]
    scaling = choose_scaling(X, y, force=True) if scaled else None
    return PLSProblem(y, X, codes, nlev, Z, _theta_map(qs), scaling=scaling, log_weights=log_w, schur=schur)


def _random_theta(qs: list[int], rng) -> np.ndarray:
    out = []
    for q in qs:
        lam = np.tril(rng.normal(size=(q, q)) * 0.4)
        lam[np.diag_indices(q)] = rng.uniform(0.2, 1.5, size=q)
        out += [lam[r, c] for c in range(q) for r in range(c, q)]
    return np.array(out)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize(
    "qs, nlev, scaled, weights",
    [
        ([1, 1], [40, 12], False, False),
        ([1, 1, 1], [50, 15, 6], False, False),
        ([2, 1], [40, 10], False, False),
        ([3, 1, 1], [40, 9, 5], False, False),
        ([1, 1], [40, 12], True, False),
        ([2, 1, 1], [40, 9, 5], True, True),
    ],
)
def test_crossed_gradient_matches_finite_differences(qs, nlev, scaled, weights, reml):
    pb = _crossed(qs, nlev, seed=sum(nlev), scaled=scaled, weights=weights)
    assert pb.solver == "dense" and gradient_available(pb)
    rng = np.random.default_rng(len(qs))
    for _ in range(2):
        _check(pb, _random_theta(qs, rng), reml)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("group_weights", [False, True])
def test_one_factor_gradient_matches_finite_differences(reml, group_weights):
    sleep = memoe.datasets.load("sleepstudy")
    pb = memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep).problem
    if group_weights:
        pb.set_group_weights(np.random.default_rng(3).uniform(0.1, 1.0, size=pb.nlevels[0]))
    assert gradient_available(pb)
    _check(pb, np.array([0.9, 0.1, 0.3]), reml)
    _check(pb, np.array([0.0, 0.4, 0.2]), reml)


def test_one_factor_ml_gradient_equals_ml_derivatives():
    # two derivations of the same ML gradient (memoe.lmm.gradient and PLSProblem.ml_derivatives)
    sleep = memoe.datasets.load("sleepstudy")
    pb = memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep).problem
    theta = np.array([0.7, -0.05, 0.25])
    _, g = deviance_and_gradient(pb, theta, False)
    g2 = pb.ml_derivatives(pb.ml_factor(theta)).gradient
    np.testing.assert_allclose(g, g2, rtol=1e-9, atol=1e-9 * np.abs(g2).max())


def test_gradient_on_the_bound_is_zero_for_scalar_theta():
    # the criterion is even in a scalar theta: its derivative at 0 vanishes exactly
    pb = _crossed([1, 1], [40, 12], seed=5)
    _, g = deviance_and_gradient(pb, np.array([0.5, 0.0]), True)
    assert g[1] == 0.0


def test_gradient_not_available_off_the_dense_path():
    pen = memoe.datasets.load("Penicillin")
    m = memoe.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", pen)
    # the dense small path has its own gradient (memoe.lmm.gradient_small), dispatched here
    assert m.problem.solver == "dense_small" and not gradient_available(m.problem)
    d, _ = deviance_and_gradient(m.problem, np.ones(2), True)
    assert d == pytest.approx(m.problem.deviance(np.ones(2), True), rel=1e-12)
    m.problem.set_solver("dense")
    assert gradient_available(m.problem)
    # vector-valued random effects after the first factor: BOBYQA, and a clear refusal here
    pb = _crossed([1, 2], [40, 12], seed=2)
    assert not gradient_available(pb)
    with pytest.raises(MemoeError, match="vector-valued random effects after the first factor"):
        deviance_and_gradient(pb, _random_theta([1, 2], np.random.default_rng(0)), True)


# ------------------------------------------------------------------------------------ fits
def _insteval_like(seed: int = 7, sd=(0.6, 0.4, 0.3)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n, ns, nd, nk = 3000, 150, 40, 6
    s, d, k = rng.integers(0, ns, n), rng.integers(0, nd, n), rng.integers(0, nk, n)
    x = rng.normal(size=n)
    y = (2 + 0.3 * x + sd[0] * rng.normal(size=ns)[s] + sd[1] * rng.normal(size=nd)[d]
         + sd[2] * rng.normal(size=nk)[k] + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "s": s.astype(str), "d": d.astype(str), "k": k.astype(str)})


FORMULA = "y ~ x + (1 | s) + (1 | d) + (1 | k)"
DENSE = {"solver": "dense"}


@pytest.mark.parametrize("reml", [True, False])
def test_gradient_fit_equals_bobyqa_fit(reml):
    df = _insteval_like()
    m = memoe.lmm(FORMULA, df)
    # small enough for the dense_small path (BOBYQA): the blocked dense path is forced
    fg = m.fit(reml=reml, control=DENSE)
    assert m.problem.solver == "dense"
    fb = m.fit(reml=reml, control={**DENSE, "optimizer": "bobyqa"})
    assert fg.opt.optimizer == "projected BFGS" and fb.opt.optimizer == "nlopt LN_BOBYQA"
    assert fg.opt.feval < fb.opt.feval
    # never worse than BOBYQA's optimum by more than 1e-8 relative, and the same optimum
    assert fg.opt.fmin <= fb.opt.fmin + 1e-8 * abs(fb.opt.fmin)
    assert abs(fg.loglik - fb.loglik) <= 1e-7 * abs(fb.loglik)
    np.testing.assert_allclose(fg.opt.x, fb.opt.x, atol=2e-4)
    assert fg.converged and fb.converged
    # the check ran on the analytic gradient: small at the optimum
    assert fg.convergence.max_scaled_gradient < 1e-3


def test_gradient_fit_reaches_the_zero_bound_exactly():
    df = _insteval_like(seed=11, sd=(0.6, 0.4, 0.0))
    m = memoe.lmm(FORMULA, df)
    with pytest.warns(memoe.errors.SingularFitWarning):
        fg = m.fit(control=DENSE)
    fb = m.fit(warn=False, control={**DENSE, "optimizer": "bobyqa"})
    assert fb.opt.x[2] == 0.0  # the data make it a boundary fit for BOBYQA too
    assert fg.opt.optimizer == "projected BFGS"
    assert fg.opt.x[2] == 0.0 and fg.singular
    assert fg.opt.fmin <= fb.opt.fmin + 1e-8 * abs(fb.opt.fmin)


def test_optimizer_control_is_validated():
    m = memoe.lmm(FORMULA, _insteval_like())
    with pytest.raises(ArgumentError, match=r"optimizer.*'auto', 'bobyqa'.*'lbfgs'"):
        m.fit(control={"optimizer": "lbfgs"})


def test_fallback_to_bobyqa_when_the_quasi_newton_fails(monkeypatch):
    model_mod = importlib.import_module("memoe.lmm.model")  # memoe.lmm is also the factory function

    def failing(fun_grad, x0, lower, **kw):
        f, g = fun_grad(np.asarray(x0, float))
        return OptSummary("projected BFGS", np.asarray(x0, float), np.asarray(x0, float), f, 1, -1, "failure", 0.0,
                          {"gradient": g})

    monkeypatch.setattr(model_mod, "minimize_bounded_gradient", failing)
    m = memoe.lmm(FORMULA, _insteval_like())
    fit = m.fit(control=DENSE)
    ref = m.fit(control={**DENSE, "optimizer": "bobyqa"})
    assert fit.opt.optimizer == "projected BFGS + nlopt LN_BOBYQA"
    assert fit.opt.feval > ref.opt.feval * 0.5
    assert abs(fit.opt.fmin - ref.opt.fmin) <= 1e-8 * abs(ref.opt.fmin)


def test_one_factor_keeps_bobyqa_and_its_gradient_fit_agrees():
    sleep = memoe.datasets.load("sleepstudy")
    m = memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep)
    fit = m.fit(control={"optimizer": "bobyqa"})
    assert fit.opt.optimizer == "nlopt LN_BOBYQA" and not gradient_preferred(m.problem)
    # the gradient optimiser on the same problem: fewer evaluations, the same optimum
    opt = minimize_bounded_gradient(lambda x: deviance_and_gradient(m.problem, x, True),
                                    m.design.theta_map.initial(), m.design.theta_map.lower_bounds)
    assert opt.return_code > 0 and opt.feval < fit.opt.feval
    assert opt.fmin <= fit.opt.fmin + 1e-8 * abs(fit.opt.fmin)
    np.testing.assert_allclose(opt.x, fit.opt.x, atol=1e-4)


# ------------------------------------------------------------------------------ the optimiser
def test_projected_bfgs_lands_on_bounds_and_minimises():
    # Rosenbrock in 2-D with a bound that is active at the constrained optimum (x1 >= 1.5 -> x2 = 2.25)
    def fg(x):
        a, b = x
        f = (1 - a) ** 2 + 100 * (b - a * a) ** 2
        return f, np.array([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])

    opt = minimize_bounded_gradient(fg, np.array([2.0, 1.0]), np.array([1.5, -np.inf]))
    assert opt.return_code > 0
    assert opt.x[0] == 1.5
    np.testing.assert_allclose(opt.x[1], 2.25, atol=1e-6)

    opt = minimize_bounded_gradient(fg, np.array([-1.2, 1.0]), np.array([-np.inf, -np.inf]), maxeval=300)
    np.testing.assert_allclose(opt.x, [1.0, 1.0], atol=1e-5)


def test_projected_bfgs_reports_a_non_finite_start():
    opt = minimize_bounded_gradient(lambda x: (np.inf, np.full(1, np.nan)), np.ones(1), np.zeros(1))
    assert opt.return_code == -1


def test_summary_survives_persistence(tmp_path):
    fit = memoe.lmm(FORMULA, _insteval_like()).fit(control=DENSE)
    assert fit.opt.optimizer == "projected BFGS"
    fit.save(tmp_path / "fit")
    back = memoe.load(tmp_path / "fit")
    assert back.opt.optimizer == fit.opt.optimizer and back.opt.feval == fit.opt.feval
    assert dataclasses.asdict(back.convergence)["converged"] == fit.convergence.converged

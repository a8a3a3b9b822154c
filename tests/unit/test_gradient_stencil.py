"""Thread-pooled gradient-difference stencils and the validated-model stop of the gradient optimiser (issue 13).

* The k gradients of a gradient-difference Hessian (start Hessian and derivative check of the gradient fit)
  run on two threads when two cores are usable: each column is computed exactly as serially, so the
  Hessian, and with it the whole fit, must be the same to the last bit (compared at 1e-12).
* ``deviance_and_gradient`` on the dense crossed path keeps no shared state: concurrent calls at different
  theta equal serial calls.
* ``model_ftol_rel`` stops the projected BFGS one or two evaluations early; the criterion must stay within
  1e-9 relative (here: 1e-12) of the fully converged value and theta within the slack that criterion allows.
"""

from __future__ import annotations

import importlib
import threading

import numpy as np
import pytest

import memoe
from memoe.core.optim import minimize_bounded_gradient
from memoe.core.optim.checks import gradient_difference_hessian, parallel_map
from memoe.lmm.gradient import deviance_and_gradient

from .test_lmm_gradient import DENSE, FORMULA, _crossed, _insteval_like, _random_theta

model_mod = importlib.import_module("memoe.lmm.model")
gradient_mod = importlib.import_module("memoe.lmm.gradient")


@pytest.mark.parametrize("qs, nlev", [([1, 1, 1], [60, 20, 6]), ([2, 1], [40, 12])])
@pytest.mark.parametrize("workers", [2, 3])
def test_pooled_stencil_equals_serial(qs, nlev, workers):
    pb = _crossed(qs, nlev, seed=5)
    theta = _random_theta(qs, np.random.default_rng(1))
    f0, g0 = deviance_and_gradient(pb, theta, True)

    def grad(z):
        return deviance_and_gradient(pb, z, True)[1]

    serial = gradient_difference_hessian(grad, theta, g0, workers=1)
    pooled = gradient_difference_hessian(grad, theta, g0, workers=workers)
    # the same arithmetic on differently aligned work arrays (each thread its own): the gradients agree to
    # their rounding, ~1e-12 of the criterion's scale, which the difference divides by h = 1e-4
    tol = 1e-12 * (abs(f0) + np.abs(g0).max()) / 1e-4
    np.testing.assert_allclose(pooled, serial, rtol=0, atol=tol)


def test_concurrent_evaluations_equal_serial():
    pb = _crossed([1, 1, 1], [60, 20, 6], seed=9)
    rng = np.random.default_rng(2)
    thetas = [_random_theta([1, 1, 1], rng) for _ in range(8)]
    serial = [deviance_and_gradient(pb, t, False) for t in thetas]
    out: list = [None] * len(thetas)

    def run(i):
        out[i] = deviance_and_gradient(pb, thetas[i], False)

    parallel_map(run, range(len(thetas)), workers=3)
    for (d0, g0), (d1, g1) in zip(serial, out, strict=True):
        assert d1 == pytest.approx(d0, rel=1e-13)
        np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-12 * (abs(d0) + np.abs(g0).max()))


def test_idle_cores_is_bounded_by_usable_cores():
    from memoe.core.linalg.threads import idle_cores, usable_cores

    assert 0 <= idle_cores() <= usable_cores() - 1


def test_parallel_map_runs_every_item_once_and_reraises():
    seen: list[int] = []
    lock = threading.Lock()

    def add(i):
        with lock:
            seen.append(i)

    parallel_map(add, range(17), workers=2)
    assert sorted(seen) == list(range(17))
    order: list[int] = []
    parallel_map(order.append, range(5), workers=1)
    assert order == list(range(5))

    def boom(i):
        if i == 3:
            raise ValueError("item 3")

    with pytest.raises(ValueError, match="item 3"):
        parallel_map(boom, range(6), workers=2)


def test_fit_with_two_workers_equals_serial_fit(monkeypatch):
    df = _insteval_like()
    m = memoe.lmm(FORMULA, df)
    monkeypatch.setattr(gradient_mod, "usable_cores", lambda: 1)
    f1 = m.fit(control=DENSE)
    monkeypatch.setattr(gradient_mod, "usable_cores", lambda: 2)
    monkeypatch.setattr(gradient_mod, "idle_cores", lambda: 0)
    assert gradient_mod.stencil_workers(m.problem) == 1  # the other core busy: serial
    monkeypatch.setattr(gradient_mod, "idle_cores", lambda: 1)
    assert gradient_mod.stencil_workers(m.problem) == 2
    f2 = m.fit(control=DENSE)
    assert f1.opt.optimizer == f2.opt.optimizer == "projected BFGS"
    # the stencils agree to rounding (see above), so the optimiser's path and optimum agree to ~1e-9
    assert abs(f2.opt.fmin - f1.opt.fmin) <= 1e-12 * abs(f1.opt.fmin)
    np.testing.assert_allclose(f2.opt.x, f1.opt.x, rtol=0, atol=1e-7)
    np.testing.assert_allclose(f2.convergence.hessian, f1.convergence.hessian, rtol=0,
                               atol=1e-12 * abs(f1.opt.fmin) / 1e-4)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("seed", [3, 4])
def test_model_stop_keeps_the_optimum(monkeypatch, reml, seed):
    df = _insteval_like(seed=seed)
    m = memoe.lmm(FORMULA, df)
    early = m.fit(reml=reml, control=DENSE)
    monkeypatch.setattr(model_mod, "GRADIENT_MODEL_FTOL_REL", 0.0)
    full = m.fit(reml=reml, control=DENSE)
    assert early.opt.feval <= full.opt.feval
    # criterion: within 1e-12 relative of the fully converged one (the brief allows 1e-9)
    assert early.opt.fmin - full.opt.fmin <= 1e-12 * abs(full.opt.fmin)
    # theta: within the ellipsoid that criterion difference allows (Hessian of the derivative check)
    H = full.convergence.hessian
    delta = max(early.opt.fmin - full.opt.fmin, 1e-14 * abs(full.opt.fmin))
    slack = np.sqrt(2 * delta * np.diag(np.linalg.inv(H)))
    assert np.all(np.abs(early.opt.x - full.opt.x) <= 2 * slack + 1e-9)
    assert early.converged and not early.messages


def test_model_stop_needs_a_validated_step():
    """On a quadratic the start-Hessian Newton step is exact; without a validated step the loose bound never
    stops the optimiser before it has taken one."""
    A = np.array([[4.0, 1.0], [1.0, 3.0]])
    xs = np.array([1.0, 2.0])
    seen = []

    def fg(x):
        seen.append(x.copy())
        d = x - xs
        return 1e6 + 0.5 * float(d @ A @ d), A @ d

    opt = minimize_bounded_gradient(fg, np.array([3.0, -1.0]), np.full(2, -np.inf), model_ftol_rel=1e-3,
                                    initial_hessian=lambda x, g: A)
    # the bound (1e3) is above the start's predicted decrease (~10), yet the first step is taken
    assert len(seen) >= 2
    np.testing.assert_allclose(opt.x, xs, atol=1e-8)
    # a loose model tolerance after validated steps: stops near, not at, a badly scaled Rosenbrock optimum
    seen.clear()

    def rosen(x):
        f = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2 + 10.0
        g = np.array([-400 * x[0] * (x[1] - x[0] ** 2) - 2 * (1 - x[0]), 200 * (x[1] - x[0] ** 2)])
        return f, g

    tight = minimize_bounded_gradient(rosen, np.array([-1.2, 1.0]), np.full(2, -np.inf), maxeval=300)
    loose = minimize_bounded_gradient(rosen, np.array([-1.2, 1.0]), np.full(2, -np.inf), maxeval=300,
                                      model_ftol_rel=1e-12)
    assert loose.return_code > 0 and loose.feval <= tight.feval
    assert loose.fmin - tight.fmin <= 1e-11 * 10.0


def test_secant_column_replaces_one_evaluation():
    A = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, -0.2], [0.5, -0.2, 2.0]])
    calls = []

    def grad(z):
        calls.append(z.copy())
        # quadratic plus a cubic term: exact Hessian 2 A + diag(6 z) varies at O(delta)
        return 2 * A @ z + 3 * z**2

    x = np.array([0.3, -0.2, 0.5])
    g0 = grad(x)
    calls.clear()
    full = gradient_difference_hessian(grad, x, g0, delta=1e-4)
    assert len(calls) == 3
    s = np.array([2e-5, -1e-5, 8e-5])  # largest in the third coordinate: that column is replaced
    y = g0 - grad(x - s)
    calls.clear()
    sec = gradient_difference_hessian(grad, x, g0, delta=1e-4, secant=(s, y))
    assert len(calls) == 2 and all(c[2] == x[2] for c in calls)
    exact = 2 * A + np.diag(6 * x)
    # both within the O(delta |third derivative|) truncation of the exact Hessian
    np.testing.assert_allclose(sec, exact, atol=6 * 2e-4)
    np.testing.assert_allclose(full, exact, atol=6 * 2e-4)
    # a step far from delta is not used (its truncation or rounding would differ from the columns')
    calls.clear()
    gradient_difference_hessian(grad, x, g0, delta=1e-4, secant=(10 * s, g0 - grad(x - 10 * s)))
    assert len(calls) == 1 + 3  # the secant point itself, then all 3 columns


@pytest.mark.parametrize("seed", [3, 5])
def test_check_hessian_with_secant_matches_the_full_stencil(seed):
    df = _insteval_like(seed=seed)
    m = memoe.lmm(FORMULA, df)
    fit = m.fit(control=DENSE)
    theta, lower = fit.opt.x, m.design.theta_map.lower_bounds
    _, g0 = deviance_and_gradient(m.problem, theta, True)
    full = gradient_difference_hessian(lambda z: deviance_and_gradient(m.problem, z, True)[1], theta, g0)
    # the forward difference's own truncation is delta |f'''| / 2 per entry; the secant's midpoint lies within
    # 2 delta of the columns', so the two agree to a few times that (1% of the Hessian's scale here)
    np.testing.assert_allclose(fit.convergence.hessian, full, rtol=0, atol=1e-2 * np.abs(full).max())
    assert np.all(theta - lower > 0)


def test_first_step_from_the_start_hessian_is_newton_in_log_theta():
    """A criterion exactly quadratic in log theta (plus a plain quadratic in an unbounded variable): the first
    step from the exact start Hessian lands on the optimum, where a Newton step in theta would overshoot."""
    from memoe.core.optim.quasi_newton import _log_newton_step

    ts, c = np.array([0.09, 0.5]), np.array([50.0, 20.0])

    def fg(x):
        u = np.log(x[:2] / ts)
        f = 100.0 + float(c @ u**2) + 3.0 * (x[2] - 1.0) ** 2
        return f, np.append(2 * c * u / x[:2], 6.0 * (x[2] - 1.0))

    def hess(x):
        u = np.log(x[:2] / ts)
        return np.diag(np.append(2 * c * (1 - u) / x[:2] ** 2, 6.0))

    x0 = np.array([0.11, 0.45, 0.8])  # within the optimiser's first trust radius
    lower = np.array([0.0, 0.0, -np.inf])
    step = _log_newton_step(x0, fg(x0)[1], hess(x0), lower)
    np.testing.assert_allclose(x0 + step, np.append(ts, 1.0), rtol=1e-12)
    newton = -np.linalg.solve(hess(x0), fg(x0)[1])
    assert abs(x0[0] + newton[0] - ts[0]) > 100 * abs(x0[0] + step[0] - ts[0])
    seen = []

    def counted(x):
        seen.append(x.copy())
        return fg(x)

    opt = minimize_bounded_gradient(counted, x0, lower, initial_hessian=lambda x, g: hess(x))
    np.testing.assert_allclose(opt.x, np.append(ts, 1.0), rtol=1e-9)
    np.testing.assert_allclose(seen[1], np.append(ts, 1.0), rtol=1e-12)  # the first step
    # no qualifying variable (none bounded at 0, or at the bound): no log step
    assert _log_newton_step(x0, fg(x0)[1], hess(x0), np.full(3, -np.inf)) is None
    assert _log_newton_step(np.array([0.0, 0.0, 0.2]), np.ones(3), np.eye(3), lower) is None


def test_secant_step_range():
    from memoe.core.optim.checks import secant_usable

    y = np.ones(3)
    assert secant_usable((np.array([0.0, 2e-6, 0.0]), y), 1e-4)  # delta / 50: usable (rounding 50x a column's)
    assert not secant_usable((np.array([0.0, 5e-7, 0.0]), y), 1e-4)  # below SECANT_MIN delta
    assert not secant_usable((np.array([0.0, 3e-4, 0.0]), y), 1e-4)  # beyond 2 delta
    assert not secant_usable((np.array([0.0, 1e-4, 0.0]), np.array([1.0, np.nan, 1.0])), 1e-4)
    assert not secant_usable(None, 1e-4)


def test_log_model_steps_follow_log_theta_curvature():
    """With an inexact start Hessian on a criterion quadratic in log theta, the BFGS model kept in log theta
    (log_model) reaches the optimum in fewer gradients than the theta-space model, at the same point; a
    variable whose optimum is its bound 0 ends the log model and still lands exactly on the bound."""
    ts, c = np.array([0.09, 0.5]), np.array([50.0, 20.0])

    def fg(x):
        u = np.log(np.maximum(x[:2], 1e-300) / ts)
        f = 100.0 + float(c @ u**2) + 3.0 * (x[2] - 1.0) ** 2
        return f, np.append(2 * c * u / x[:2], 6.0 * (x[2] - 1.0))

    def hess(x):
        u = np.log(x[:2] / ts)
        return np.diag(np.append(2 * c * (1 - u) / x[:2] ** 2, 6.0))

    x0 = np.array([0.14, 0.38, 0.8])
    lower = np.array([0.0, 0.0, -np.inf])
    runs = {}
    for log_model in (False, True):
        opt = minimize_bounded_gradient(fg, x0, lower, initial_hessian=lambda x, g: 0.6 * hess(x),
                                        log_model=log_model)
        assert opt.return_code > 0
        np.testing.assert_allclose(opt.x, np.append(ts, 1.0), rtol=1e-7)
        runs[log_model] = opt.feval
    assert runs[True] < runs[False]

    # theta_1's optimum at its bound: f increases in theta_1 (a variance estimated as zero)
    def fb(x):
        f, g = fg(np.array([ts[0], x[1], x[2]]))
        return f + 40.0 * x[0] ** 2 + 5.0 * x[0], np.array([80.0 * x[0] + 5.0, g[1], g[2]])

    hb = np.diag([80.0, hess(x0)[1, 1], 6.0])
    ends = [minimize_bounded_gradient(fb, x0, lower, initial_hessian=lambda x, g: hb, log_model=lm).x
            for lm in (False, True)]
    assert ends[0][0] == ends[1][0] == 0.0
    np.testing.assert_allclose(ends[1], ends[0], rtol=1e-7, atol=1e-9)

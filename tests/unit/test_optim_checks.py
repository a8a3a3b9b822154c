"""Finite-difference derivatives of the convergence checks (memoe.core.optim.checks).

"forward" mixed differences take one evaluation per off-diagonal pair instead of two; their truncation
error is ``h (f_iij + f_ijj) / 2``, so a quadratic is differentiated exactly (to rounding) and a cubic to
O(h). At a fitted LMM optimum both schemes give the same checks (same messages, scaled gradient and
eigenvalues within the rounding noise of a second difference, ``~4 eps |f| / h^2``).
"""

from __future__ import annotations

import numpy as np
import pytest

import memoe
from memoe.core.optim.checks import check_convergence, finite_difference_derivatives
from memoe.errors import ArgumentError, MemoeError

EPS = np.finfo(float).eps
H = 1e-4


class Counted:
    def __init__(self, f):
        self.f, self.n = f, 0

    def __call__(self, x):
        self.n += 1
        return self.f(x)


def _quadratic(k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(k, k))
    A = A @ A.T + k * np.eye(k)
    b = rng.normal(size=k)
    return (lambda x: float(0.5 * x @ A @ x + b @ x + 3.0)), A, b


@pytest.mark.parametrize("k", [1, 3, 12])
def test_forward_mixed_counts_and_exact_on_quadratic(k):
    f, A, b = _quadratic(k)
    x = np.linspace(0.5, 1.5, k)
    lower = np.full(k, -np.inf)
    cf = Counted(f)
    g, Hs = finite_difference_derivatives(cf, x, lower, delta=H, f0=f(x), mixed="forward")
    assert cf.n == 2 * k + k * (k - 1) // 2
    cc = Counted(f)
    finite_difference_derivatives(cc, x, lower, delta=H, f0=f(x))
    assert cc.n == 2 * k + k * (k - 1)
    # rounding of a second difference: a few eps |f| / h^2
    scale = max(abs(f(x)), 1.0)
    np.testing.assert_allclose(Hs, A, atol=50 * EPS * scale / H**2)
    np.testing.assert_allclose(g, A @ x + b, atol=50 * EPS * scale / H)


def test_forward_mixed_truncation_error_on_cubic():
    """f = x0^2 x1: H01 = 2 x0, forward error h (f_001 + f_011) / 2 = h; central error 0."""
    f = lambda x: float(x[0] ** 2 * x[1])  # noqa: E731
    x = np.array([0.7, 1.3])
    lower = np.full(2, -np.inf)
    _, Hf = finite_difference_derivatives(f, x, lower, delta=H, mixed="forward")
    _, Hc = finite_difference_derivatives(f, x, lower, delta=H)
    roundoff = 50 * EPS / H**2
    assert abs(Hc[0, 1] - 2 * x[0]) <= roundoff
    assert abs(Hf[0, 1] - (2 * x[0] + H)) <= roundoff + 1e-2 * H


def test_one_sided_at_lower_bound_same_in_both_modes():
    f, _, _ = _quadratic(3, seed=1)
    x = np.array([0.0, 0.8, 0.0])
    lower = np.array([0.0, -np.inf, 0.0])
    seen = []

    def g(z):
        seen.append(z.copy())
        return f(z)

    gf, Hf = finite_difference_derivatives(g, x, lower, mixed="forward")
    assert all(np.all(z >= lower) for z in seen)
    gc, Hc = finite_difference_derivatives(f, x, lower)
    np.testing.assert_allclose(gf, gc, atol=1e-6)
    np.testing.assert_allclose(Hf, Hc, atol=1e-4)


def test_bad_mixed_argument():
    with pytest.raises(ArgumentError, match="mixed must be 'central' or 'forward'") as e:
        finite_difference_derivatives(lambda x: 0.0, np.zeros(1), np.zeros(1), mixed="backward")
    assert isinstance(e.value, MemoeError)


@pytest.mark.parametrize(
    "formula",
    ["rt ~ x + (1 + x | subj) + (1 + x | item)", "Reaction ~ Days + (Days | Subject)"],
)
def test_lmm_checks_unchanged_by_forward_mixed(formula):
    if formula.startswith("rt"):
        rng = np.random.default_rng(3)
        s, i = np.meshgrid(np.arange(30), np.arange(16), indexing="ij")
        s, i = s.ravel(), i.ravel()
        x = rng.choice([-0.5, 0.5], len(s))
        rt = 2000 + 60 * x + 300 * rng.normal(size=30)[s] + 40 * x * rng.normal(size=30)[s]
        rt = rt + 150 * rng.normal(size=16)[i] + 500 * rng.normal(size=len(s))
        import pandas as pd

        df = pd.DataFrame({"rt": rt, "x": x, "subj": s.astype(str), "item": i.astype(str)})
    else:
        df = memoe.datasets.load("sleepstudy")
    model = memoe.lmm(formula, df)
    # the finite-difference checks of the derivative-free fit ("auto" takes the analytic gradient there)
    fit = model.fit(warn=False, control={"optimizer": "bobyqa"})
    rep = fit.convergence
    f = model.objective(True)
    theta = np.asarray(fit.state.theta, float)
    lower = model.design.theta_map.lower_bounds
    gc, Hc = finite_difference_derivatives(f, theta, lower, f0=f(theta))
    free = ~((lower == 0) & (theta < 1e-4))
    central = check_convergence(gc, Hc, free)
    assert rep.messages == central.messages
    noise = 50 * EPS * abs(f(theta)) / H**2
    np.testing.assert_allclose(rep.hessian, Hc, atol=noise + 1e-3 * np.abs(Hc).max())
    np.testing.assert_allclose(rep.gradient, gc, atol=1e-8)

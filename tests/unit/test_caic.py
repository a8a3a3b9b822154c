"""Conditional AIC (Greven & Kneib 2010; Vaida & Blanchard 2005) of LMM fits.

cAIC4 is not installed on the reference machines, so the definitions are checked from first
principles on small simulated data:

* ``trace_H`` equals the trace of the hat matrix of Henderson's mixed-model equations built densely
  from the estimates (``mu_hat = [X Z] C^-1 [X Z]' y``);
* ``rho`` equals the trace of ``d mu_hat / d y`` computed by refitting the model with each ``y_i``
  moved by ``+-h`` (central differences; the covariance parameters re-estimated each time), the very
  definition of Greven & Kneib's effective degrees of freedom. The optimiser stops within ~1e-9 of
  theta, which a step of h = 1e-3 sd(y) turns into a per-row error near 1e-6, so 40 rows sum to well
  under the 5e-3 asserted; the analytic value has no such noise;
* the conditional log-likelihood equals ``sum log N(y_i; fitted_i, sigma^2 / w_i)``;
* ``caic = -2 cll + 2 (rho + 1)`` (seed 002: "-2 conditional log-likelihood plus twice the effective
  number of parameters", the +1 counting sigma as cAIC4's sigma.penalty = 1).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import memoe
from memoe.errors import ArgumentError

CONTROL = {"ftol_abs": 1e-15, "xtol_abs": 1e-12}


def _data(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(8), 5)
    x = rng.normal(size=40)
    b0, b1 = rng.normal(scale=1.0, size=8), rng.normal(scale=0.5, size=8)
    y = 1 + 0.5 * x + b0[g] + b1[g] * x + rng.normal(scale=0.7, size=40)
    w = rng.uniform(0.5, 2.0, size=40)
    return pd.DataFrame({"y": y, "x": x, "w": w, "g": [f"g{i}" for i in g]})


def _fit(formula, df, reml, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memoe.lmm(formula, df, **kw).fit(reml=reml, control=CONTROL)


def _numeric_rho(formula, df, reml, fit, **kw) -> float:
    h = 1e-3 * float(df["y"].std())
    tr = 0.0
    for i in range(len(df)):
        vals = []
        for s in (h, -h):
            d2 = df.copy()
            d2.loc[i, "y"] += s
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ft = memoe.lmm(formula, d2, **kw).fit(reml=reml, control=CONTROL, start=fit.state.theta)
            vals.append(ft.fitted.iloc[i])
        tr += (vals[0] - vals[1]) / (2 * h)
    return tr


@pytest.mark.parametrize(
    "formula, reml, weighted",
    [("y ~ x + (x | g)", True, False), ("y ~ x + (1 | g)", False, False), ("y ~ x + (1 | g)", True, True)],
)
def test_rho_is_the_trace_of_dmu_dy_with_reestimated_theta(formula, reml, weighted):
    df = _data()
    kw = {"weights": "w"} if weighted else {}
    fit = _fit(formula, df, reml, **kw)
    c = fit.caic()
    assert c.method == "greven-kneib"
    assert c.rho == pytest.approx(_numeric_rho(formula, df, reml, fit, **kw), abs=5e-3)
    assert c.correction > 0  # estimating theta adds flexibility to mu_hat
    assert c.df == pytest.approx(c.rho + 1.0)
    assert c.caic == pytest.approx(-2 * c.loglik_conditional + 2 * c.df)


@pytest.mark.parametrize("weighted", [False, True])
def test_trace_H_and_conditional_loglik_from_henderson_equations(weighted):
    df = _data(5)
    kw = {"weights": "w"} if weighted else {}
    fit = _fit("y ~ x + (x | g)", df, True, **kw)
    vb = fit.caic(method="vaida-blanchard")
    # dense hat matrix of the mixed-model equations at the estimates
    w = df["w"].to_numpy() if weighted else np.ones(len(df))
    X = np.column_stack([np.ones(len(df)), df["x"]])
    codes = pd.Categorical(df["g"]).codes
    Z = np.zeros((len(df), 16))
    Z[np.arange(len(df)), 2 * codes] = 1.0
    Z[np.arange(len(df)), 2 * codes + 1] = df["x"]
    G = fit.term_covariances()[0]
    Ginv = np.kron(np.eye(8), np.linalg.inv(G))
    C = np.column_stack([X, Z])
    Wm = np.diag(w) / fit.sigma**2
    M = C.T @ Wm @ C
    M[2:, 2:] += Ginv
    H = C @ np.linalg.solve(M, C.T @ Wm)
    assert vb.trace_H == pytest.approx(np.trace(H), rel=1e-8)
    assert vb.rho == vb.trace_H and vb.correction == 0.0
    np.testing.assert_allclose(H @ df["y"].to_numpy(), fit.fitted.to_numpy(), rtol=1e-8)
    cll = stats.norm.logpdf(df["y"], fit.fitted, fit.sigma / np.sqrt(w)).sum()
    assert vb.loglik_conditional == pytest.approx(cll, rel=1e-10)
    assert fit.caic().trace_H == pytest.approx(vb.trace_H, rel=1e-12)


def test_boundary_variance_leaves_the_correction():
    # no between-group variation: the random intercept's variance is estimated at 0
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"y": rng.normal(size=30), "x": rng.normal(size=30), "g": np.repeat(list("abcdef"), 5)})
    fit = _fit("y ~ x + (1 | g)", df, False)
    if fit.state.theta[0] < 1e-4:
        c = fit.caic()
        assert c.correction == 0.0
        assert c.trace_H == pytest.approx(2.0, abs=1e-6)  # mu_hat is the OLS fit


def test_named_in_repr_and_method_checked():
    fit = _fit("y ~ x + (1 | g)", _data(), True)
    assert "Greven & Kneib 2010" in repr(fit.caic())
    assert "Vaida & Blanchard 2005" in repr(fit.caic("vaida_blanchard"))
    with pytest.raises(ArgumentError, match="greven-kneib"):
        fit.caic("bic")
    s = fit.caic().as_series()
    assert set(s.index) == {"caic", "loglik_conditional", "df", "rho", "trace_H", "correction"}

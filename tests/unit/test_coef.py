"""Subject-specific coefficients (coef()) and the LMM residual types."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import ArgumentError, MemoeError


@pytest.fixture(scope="module")
def sleep():
    return memoe.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def slope_fit(sleep):
    return memoe.LMM("Reaction ~ Days + (Days | Subject)", sleep).fit()


def test_lmm_coef_is_fixef_plus_ranef(slope_fit):
    c = slope_fit.coef()
    assert list(c) == ["Subject"]
    frame = c["Subject"]
    assert list(frame.columns) == list(slope_fit.fixef.index)
    re = slope_fit.ranef["Subject"]
    pd.testing.assert_index_equal(frame.index, re.index)
    np.testing.assert_allclose(frame.to_numpy(), slope_fit.fixef.to_numpy() + re.to_numpy(), rtol=1e-14)


def test_lmm_coef_reproduces_conditional_fitted_values(slope_fit, sleep):
    frame = slope_fit.coef()["Subject"]
    rows = frame.loc[sleep["Subject"].astype(frame.index.dtype)].to_numpy()
    by_hand = rows[:, 0] + rows[:, 1] * sleep["Days"].to_numpy(float)
    np.testing.assert_allclose(by_hand, slope_fit.fitted.to_numpy(), rtol=1e-10)


def test_fixed_only_columns_are_constant(sleep):
    fit = memoe.LMM("Reaction ~ Days + (1 | Subject)", sleep).fit()
    frame = fit.coef()["Subject"]
    assert np.all(frame["Days"] == fit.fixef["Days"])
    assert frame["(Intercept)"].std() > 0


def test_random_column_without_fixed_counterpart_is_refused(sleep):
    fit = memoe.LMM("Reaction ~ 1 + (Days | Subject)", sleep).fit(warn=False)
    with pytest.raises(MemoeError, match=r"'Days'.*'Subject'.*ranef"):
        fit.coef()


def test_lme_and_glmm_coef(slope_fit, sleep):
    lme = memoe.lme("Reaction ~ Days + (Days | Subject)", sleep).fit()
    a, b = lme.coef()["Subject"], slope_fit.coef()["Subject"]
    # two optimisers: estimates agree to ~1e-6 relative, BLUPs to ~1e-5 of the coefficient scale
    np.testing.assert_allclose(a.to_numpy(), b.loc[a.index].to_numpy(), rtol=1e-4, atol=1e-4)
    assert memoe.gls("Reaction ~ Days", sleep).fit().coef() == {}
    cbpp = memoe.datasets.load("cbpp")
    g = memoe.GLMM("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial").fit()
    cg = g.coef()["herd"]
    np.testing.assert_allclose(cg["(Intercept)"], g.fixef["(Intercept)"] + g.ranef["herd"]["(Intercept)"], rtol=1e-14)
    assert np.all(cg["period2"] == g.fixef["period2"])


def test_memoe_coef_per_expert():
    sim2 = memoe.datasets.load("memoe_sim2")
    fit = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=sim2).fit(
        n_starts=2, seed=1, progress=False
    )
    c = fit.coef()
    assert list(c) == [1, 2]
    for k in (1, 2):
        frame = c[k]["id"]
        assert list(frame.columns) == list(fit.fixef_table.columns)
        np.testing.assert_allclose(frame["time"], fit.fixef_table.loc[k, "time"] + fit.ranef[k]["id"]["time"],
                                   rtol=1e-14)
        assert np.all(frame["x"] == fit.fixef_table.loc[k, "x"])


def test_lmm_residual_types(slope_fit):
    assert set(slope_fit.residual_types) >= {"response", "pearson", "normalized", "marginal"}
    pearson = slope_fit.residuals("pearson")
    np.testing.assert_allclose(pearson, slope_fit.resid / slope_fit.sigma, rtol=1e-14)
    # independent residuals: whitening by the Cholesky factor of R = sigma^2 I is division by sigma
    np.testing.assert_allclose(slope_fit.residuals("normalized"), pearson, rtol=1e-14)
    d = slope_fit.design
    np.testing.assert_allclose(slope_fit.residuals("marginal"), d.y - d.X @ slope_fit.fixef.to_numpy(), rtol=1e-12)
    with pytest.raises(ArgumentError, match="normalized"):
        slope_fit.residuals("studentized")

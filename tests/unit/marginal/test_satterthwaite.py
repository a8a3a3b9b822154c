"""Satterthwaite df on the marginal path: equal to lmerTest's (and memoe.lmm's) for an lme without
residual structure, invariant to the contrast's scale, and finite-sample sized for an AR(1) lme."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import memoe
from memoe.marginal import AR1
from memoe.marginal.satterthwaite import satterthwaite_df, satterthwaite_f, satterthwaite_inputs
from tests.conftest import reference

CASES = [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    ("sleepstudy", "Reaction ~ Days + (1 | Subject)"),
    ("Orthodont", "distance ~ age * Sex + (age | Subject)"),
]


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize(("data", "formula"), CASES)
def test_plain_lme_equals_lmm_satterthwaite(data, formula, reml):
    df = memoe.datasets.load(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lme = memoe.lme(formula, df).fit(reml=reml)
        lmm = memoe.lmm(formula, df).fit(reml=reml)
    ours = satterthwaite_df(satterthwaite_inputs(lme), np.eye(len(lme.fixef)))
    expected = lmm.coef_table(ddf="satterthwaite")["df"].to_numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4)


def test_against_lmertest_reference():
    ref = reference("sleepstudy_corr_slope_reml")["results"]["satterthwaite"]["coef"]
    fit = memoe.lme("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).fit()
    ours = satterthwaite_df(satterthwaite_inputs(fit), np.eye(2))
    np.testing.assert_allclose(ours, [r["df"] for r in ref], rtol=1e-3)


def test_contrast_scale_invariance_and_single_row_f():
    fit = memoe.lme(
        "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)",
        memoe.datasets.load("Ovary"),
        correlation=AR1(),
    ).fit()
    inputs = satterthwaite_inputs(fit)
    L = np.array([[0.0, 1.0, 0.0]])
    df1 = satterthwaite_df(inputs, L)[0]
    assert satterthwaite_df(inputs, 7.0 * L)[0] == pytest.approx(df1, rel=1e-10)
    # AR(1) errors make the within-mare contrast's df finite and far below N - p = 305
    assert 10 < df1 < 300
    fstat, q, ddf = satterthwaite_f(inputs, L, fit.fixef.to_numpy())
    t = fit.fixef.iloc[1] / np.sqrt(inputs.C[1, 1])
    assert q == 1 and ddf == pytest.approx(df1) and fstat == pytest.approx(t * t, rel=1e-10)


def test_multi_df_f_equals_lmertest_contestmd_of_lmm():
    df = memoe.datasets.load("Orthodont")
    formula = "distance ~ age * Sex + (age | Subject)"
    fit = memoe.lme(formula, df).fit()
    inputs = satterthwaite_inputs(fit)
    L = np.eye(4)[[2, 3]]
    fstat, q, ddf = satterthwaite_f(inputs, L, fit.fixef.to_numpy())
    expected = memoe.lmm(formula, df).fit().test("SexFemale = 0, age:SexFemale = 0", ddf="satterthwaite")
    assert q == 2
    assert fstat == pytest.approx(expected["F value"].iloc[0], rel=1e-5)
    assert ddf == pytest.approx(expected["DenDF"].iloc[0], rel=1e-4)


def test_result_methods_use_satterthwaite():
    df = memoe.datasets.load("Orthodont")
    formula = "distance ~ age * Sex + (age | Subject)"
    fit = memoe.lme(formula, df).fit()
    lmm = memoe.lmm(formula, df).fit()
    ours = fit.coef_table(ddf="satterthwaite")
    expected = lmm.coef_table(ddf="satterthwaite")
    np.testing.assert_allclose(ours["std_error"], expected["std_error"], rtol=1e-5)
    np.testing.assert_allclose(ours["df"], expected["df"], rtol=1e-4)
    np.testing.assert_allclose(ours["p_value"], expected["p_value"], rtol=1e-3)
    # nlme's containment table stays the default
    assert fit.coef_table()["df"].tolist() == [79.0, 79.0, 25.0, 79.0]
    hyp = "SexFemale = 0, age:SexFemale = 0"
    got, want = fit.test(hyp), lmm.test(hyp, ddf="satterthwaite")
    assert got["NumDF"].iloc[0] == 2
    assert got["DenDF"].iloc[0] == pytest.approx(want["DenDF"].iloc[0], rel=1e-4)
    assert got["Pr(>F)"].iloc[0] == pytest.approx(want["Pr(>F)"].iloc[0], rel=1e-4)
    # a non-zero right-hand side shifts the estimate
    shifted = fit.test("age = 0.5")
    t = (fit.fixef["age"] - 0.5) / ours.loc["age", "std_error"]
    assert shifted["F value"].iloc[0] == pytest.approx(t * t, rel=1e-8)
    with pytest.raises(ValueError, match="ddf"):
        fit.coef_table(ddf="kenward-rogers")

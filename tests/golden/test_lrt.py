"""Likelihood-ratio tables against lme4's ``anova()`` and the chi-bar-square p-values (sleepstudy_lrt_ml)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import MemoeWarning, ModelComparisonError
from memoe.inference.chibar import ChiBarSquare, boundary_null
from tests.conftest import reference, reference_data

CASE = "sleepstudy_lrt_ml"
FORMULAS = {
    "m0": "Reaction ~ Days + (1 | Subject)",
    "m1": "Reaction ~ Days + (Days || Subject)",
    "m2": "Reaction ~ Days + (Days | Subject)",
}


def _fit(formula, df, reml=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memoe.lmm(formula, data=df).fit(reml=reml)


@pytest.fixture(scope="module")
def data():
    return reference_data(CASE)


@pytest.fixture(scope="module")
def ml(data):
    return {k: _fit(f, data) for k, f in FORMULAS.items()}


def _check_table(table, records):
    ref = pd.DataFrame(records).set_index("model")
    assert list(table.index) == list(ref.index)
    assert list(table.columns[:8]) == ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]
    np.testing.assert_array_equal(table["npar"], ref["npar"])
    # our fits reach lme4's tight optimum; the default fits are lower by < 2e-8 in logLik
    for ours, theirs in [("AIC", "aic"), ("BIC", "bic"), ("logLik", "loglik"), ("deviance", "deviance")]:
        np.testing.assert_allclose(table[ours], ref[theirs], rtol=0, atol=1e-5)
    rest = ref.iloc[1:]
    np.testing.assert_allclose(table["Chisq"].iloc[1:], rest["chisq"].astype(float), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(table["Df"].iloc[1:], rest["chi_df"].astype(float))
    np.testing.assert_allclose(table["Pr(>Chisq)"].iloc[1:], rest["p_value"].astype(float), rtol=1e-4)
    assert np.isnan(table["Chisq"].iloc[0]) and np.isnan(table["Pr(>Chisq)"].iloc[0])


def test_anova_three_models(ml):
    table = memoe.compare({"m0": ml["m0"], "m1": ml["m1"], "m2": ml["m2"]})
    _check_table(table, reference(CASE)["results"]["anova_m0_m1_m2"])
    assert list(table["null"].iloc[1:]) == ["chi2(1)", "chi2(1)"]


def test_anova_orders_by_npar(ml):
    # given in reverse, the rows still come out m0, m2 (anova's order by npar)
    table = memoe.compare({"m2": ml["m2"], "m0": ml["m0"]})
    _check_table(table, reference(CASE)["results"]["anova_m0_m2"])


def test_models_stored_match_reference(ml):
    for k, fit in ml.items():
        ref = reference(CASE)["results"]["models"][k]
        assert fit.df_model == ref["df"]
        assert abs(fit.loglik - ref["loglik"]) < 1e-6


def test_chibar_blocks(ml):
    blocks = reference(CASE)["results"]["chibar"]
    t01 = memoe.compare(ml["m0"], ml["m1"], boundary=True)
    b = blocks["slope_variance_m0_vs_m1"]
    assert abs(t01["Chisq"].iloc[1] - b["lrt"]) < 1e-5
    np.testing.assert_allclose(t01["Pr(>Chisq)"].iloc[1], b["p_chibar"], rtol=1e-4)
    np.testing.assert_allclose(t01["Pr(>Chisq) naive"].iloc[1], b["p_naive_chisq1"], rtol=1e-4)
    assert t01["null"].iloc[1] == "0.5*chi2(0) + 0.5*chi2(1)"

    t02 = memoe.compare(ml["m0"], ml["m2"], boundary=True)
    b = blocks["slope_variance_and_cov_m0_vs_m2"]
    assert abs(t02["Chisq"].iloc[1] - b["lrt"]) < 1e-5
    np.testing.assert_allclose(t02["Pr(>Chisq)"].iloc[1], b["p_chibar"], rtol=1e-4)
    np.testing.assert_allclose(t02["Pr(>Chisq) naive"].iloc[1], b["p_naive_chisq2"], rtol=1e-4)
    assert t02["null"].iloc[1] == "0.5*chi2(1) + 0.5*chi2(2)"

    t12 = memoe.compare(ml["m1"], ml["m2"], boundary=True)
    b = blocks["correlation_m1_vs_m2"]
    assert abs(t12["Chisq"].iloc[1] - b["lrt"]) < 1e-5
    np.testing.assert_allclose(t12["Pr(>Chisq)"].iloc[1], b["p_chisq1"], rtol=1e-4)
    assert t12["null"].iloc[1] == "chi2(1)"


def test_boundary_output_states_the_null(ml):
    table = memoe.compare({"m0": ml["m0"], "m1": ml["m1"], "m2": ml["m2"]}, boundary=True)
    text = str(table)
    assert "0.5*chi2(0) + 0.5*chi2(1)" in text and "Self & Liang" in text
    assert "m1 vs m2: cov((Intercept)/Days|Subject): interior under H0, chi2(1)" in text
    assert any("m0 vs m1" in n for n in table.notes)
    assert text.splitlines()[0] == "Models:"


def test_chibar_distribution():
    mix = ChiBarSquare((0.5, 0.5), (0, 1))
    assert float(mix.sf(0.0)) == 1.0
    assert abs(float(mix.sf(2.705543)) - 0.05) < 1e-6  # 0.5 * P(chi2_1 > 2.7055) = 0.05
    assert abs(mix.isf(0.05) - 2.705543454) < 1e-6
    assert str(ChiBarSquare.plain(3)) == "chi2(3)"
    with pytest.raises(ValueError):
        ChiBarSquare((0.5, 0.6), (0, 1))


def test_reml_fits_are_refitted_with_a_message(data, ml):
    r0, r2 = _fit(FORMULAS["m0"], data, reml=True), _fit(FORMULAS["m2"], data, reml=True)
    with pytest.warns(MemoeWarning, match=r"refitting model\(s\) with ML \(instead of REML\)"):
        table = memoe.compare({"m0": r0, "m2": r2})
    _check_table(table, reference(CASE)["results"]["anova_m0_m2"])
    assert "refitting model(s) with ML (instead of REML)" in str(table)
    assert all(not f.reml for f in table.fits)


def test_reml_comparison_without_refit(data):
    r0, r2 = _fit(FORMULAS["m0"], data, reml=True), _fit(FORMULAS["m2"], data, reml=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no refit, so no refit message
        table = memoe.compare(r0, r2, refit=False, boundary=True)
    lrt = 2 * (r2.loglik - r0.loglik)
    assert abs(table["Chisq"].iloc[1] - lrt) < 1e-12
    assert abs(table["Pr(>Chisq)"].iloc[1] - ChiBarSquare((0.5, 0.5), (1, 2)).sf(lrt)) < 1e-15
    assert any("REML" in n for n in table.notes)


def test_reml_with_different_fixed_effects_needs_refit(data):
    r_full = _fit(FORMULAS["m0"], data, reml=True)
    r_null = _fit("Reaction ~ 1 + (1 | Subject)", data, reml=True)
    with pytest.raises(ModelComparisonError, match="different fixed effects"):
        memoe.compare(r_null, r_full, refit=False)
    with pytest.raises(ModelComparisonError, match="REML and ML"):
        memoe.compare(r_full, _fit(FORMULAS["m2"], data), refit=False)


def test_different_rows_are_refused(data, ml):
    first = _fit(FORMULAS["m2"], data.drop(index=data.index[:7]))
    with pytest.raises(ModelComparisonError, match="180 and 173 observations"):
        memoe.compare(ml["m0"], first)
    # the same number of rows, but not the same rows
    last = _fit(FORMULAS["m0"], data.drop(index=data.index[-7:]))
    with pytest.raises(ModelComparisonError, match="different rows"):
        memoe.compare(first, last)


def test_different_response_is_refused(data, ml):
    logged = data.assign(Reaction=np.log(data["Reaction"]))
    f = _fit(FORMULAS["m2"], logged)
    with pytest.raises(ModelComparisonError, match="different response 'Reaction' values in 180 of 180 rows"):
        memoe.compare(ml["m0"], f)
    renamed = data.assign(RT=data["Reaction"] + 1.0)
    g = _fit("RT ~ Days + (Days | Subject)", renamed)
    with pytest.raises(ModelComparisonError, match="responses 'Reaction' and 'RT'"):
        memoe.compare(ml["m0"], g)


def test_boundary_refuses_what_it_cannot_do(data, ml):
    quad = data.assign(D2=data["Days"] ** 2)
    # not nested: the random slopes of Days and Days^2 lack the intercept variance of m0
    slopes = _fit("Reaction ~ Days + (0 + Days | Subject) + (0 + D2 | Subject)", quad)
    with pytest.raises(ModelComparisonError, match=r"Subject:\(Intercept\) only in the smaller"):
        memoe.compare(ml["m0"], slopes, boundary=True)
    # two variances added at once: no closed-form mixture
    big = _fit("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject) + (0 + D2 | Subject)", quad)
    small = _fit("Reaction ~ Days + (1 | Subject)", quad)
    with pytest.raises(ModelComparisonError, match="2 variances are added"):
        boundary_null(small, big, 2)
    with pytest.raises(ModelComparisonError, match="at least two"):
        memoe.compare(ml["m0"])


def test_equal_npar_gives_no_test(data, ml):
    slope_only = _fit("Reaction ~ Days + (0 + Days | Subject)", data)
    table = memoe.compare(ml["m0"], slope_only)
    assert table["Df"].iloc[1] == 0 and np.isnan(table["Pr(>Chisq)"].iloc[1])

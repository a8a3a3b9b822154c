"""The shared result interface (issue 9) on a GLMM: names, types and columns.

Fixture: lme4's cbpp example (binomial, cbind response, 56 rows, 15 herds), Laplace, fitted once per
module. Values derived from other extractors of the same fit are compared to rounding (rtol 1e-12);
refits from converted tables follow the same optimiser path and agree to its tolerance (1e-7 relative).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import memoe
from memoe.core.result import COEF_COLUMNS, GLANCE_COLUMNS, TIDY_COLUMNS, FitResult
from memoe.core.state import GlmmState
from memoe.core.summary import Summary
from memoe.errors import ArgumentError

FORMULA = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    return memoe.datasets.load("cbpp")


@pytest.fixture(scope="module")
def fit(cbpp):
    return memoe.glmm(FORMULA, cbpp, "binomial").fit()


def test_is_a_fit_result_with_series_params(fit):
    assert isinstance(fit, FitResult) and type(fit).family == "glmm"
    assert fit.family == "glmm" and fit.response_family.name == "binomial"  # lme4's family(fit)
    assert isinstance(fit.params, pd.Series) and len(fit.params) == 4
    assert isinstance(fit.bse, pd.Series) and fit.bse.index.equals(fit.params.index)
    assert fit.ngroups.to_dict() == {"herd": 15} and fit.singular is False and fit.reml is False
    assert isinstance(fit.ranef["herd"], pd.DataFrame) and isinstance(fit.ranef_condsd["herd"], pd.DataFrame)


def test_vcov_method_and_no_robust(fit):
    v = fit.vcov()
    assert isinstance(v, pd.DataFrame) and list(v.index) == list(fit.params.index)
    np.testing.assert_allclose(np.sqrt(np.diag(v)), fit.bse, rtol=1e-12)
    assert fit.vcov_source == "hessian"
    v.iloc[0, 0] = -1.0  # a copy: the fit is not changed
    assert fit.vcov().iloc[0, 0] > 0
    with pytest.raises(ArgumentError, match=r"robust=.CR2.*None"):
        fit.vcov(robust="CR2")


def test_coef_table_z(fit):
    ct = fit.coef_table()
    assert list(ct.columns) == COEF_COLUMNS and ct.attrs["statistic"] == "z"
    assert np.all(np.isinf(ct["df"]))
    np.testing.assert_allclose(ct["statistic"], fit.params / fit.bse, rtol=1e-12)
    np.testing.assert_allclose(ct["p_value"], 2 * stats.norm.sf(np.abs(ct["statistic"])), rtol=1e-12)


def test_confint_wald_and_methods(fit):
    ci = fit.confint(level=0.9)
    assert list(ci.columns) == ["lower", "upper"] and ci.index.equals(fit.params.index)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(ci["upper"], fit.params + z * fit.bse, rtol=1e-12)
    # issue 11: profile and bootstrap intervals join wald; anything else is refused with the list
    assert fit.confint_methods == ("wald", "profile", "bootstrap")
    with pytest.raises(ArgumentError, match=r"method=.kenward.*wald.*profile.*bootstrap"):
        fit.confint(method="kenward")


def test_tidy_and_glance(fit):
    t = fit.tidy()
    assert list(t.columns) == TIDY_COLUMNS
    rp = t[t.effect == "ran_pars"]
    assert list(zip(rp.group, rp.term, strict=True)) == [("herd", "sd__(Intercept)")]  # no residual row
    assert rp.estimate.iloc[0] == pytest.approx(float(np.sqrt(fit.varcorr.vcov.iloc[0])), rel=1e-12)
    g = fit.glance()
    assert list(g.columns) == GLANCE_COLUMNS and len(g) == 1
    assert np.isnan(g.sigma.iloc[0]) and g.nobs.iloc[0] == 56 and g.ngroups.iloc[0] == 15
    assert g.logLik.iloc[0] == pytest.approx(fit.loglik, rel=1e-12)


def test_residual_types(fit):
    P = fit.model.problem
    mu = fit.fitted.to_numpy()
    assert fit.residual_types[0] == "deviance"
    dev = fit.residuals().to_numpy()
    assert (dev**2).sum() == pytest.approx(fit.deviance, rel=1e-12)
    np.testing.assert_allclose(fit.residuals("response"), P.y - mu, rtol=1e-12)
    np.testing.assert_allclose(fit.resid, P.y - mu, rtol=1e-12)
    np.testing.assert_allclose(fit.residuals("pearson"), (P.y - mu) * np.sqrt(P.wt / (mu * (1 - mu))), rtol=1e-12)
    np.testing.assert_allclose(fit.residuals("working"), (P.y - mu) / (mu * (1 - mu)), rtol=1e-10)
    with pytest.raises(ArgumentError, match="marginal"):
        fit.residuals("marginal")


def test_augment_and_predict(fit, cbpp):
    a = fit.augment()
    assert {".fitted", ".resid", ".fixed"} <= set(a.columns) and len(a) == len(cbpp)
    np.testing.assert_allclose(a[".fitted"], fit.fitted, rtol=1e-12)
    np.testing.assert_allclose(a[".fixed"], fit.predict(re_form=None), rtol=1e-12)
    np.testing.assert_allclose(fit.predict(cbpp), fit.fitted, rtol=1e-10)


def test_summary_object(fit):
    s = fit.summary()
    assert isinstance(s, Summary) and "Laplace Approximation" in str(s) and "Pr(>|z|)" in str(s)
    assert list(s.tables["coefficients"].columns) == COEF_COLUMNS
    assert s.tables["fit"]["deviance"].iloc[0] == pytest.approx(-2 * fit.loglik, rel=1e-12)
    assert "<table" in s._repr_html_()


def test_state_is_public_and_frozen(fit):
    st = fit.state
    assert isinstance(st, GlmmState) and st.nAGQ == 1
    np.testing.assert_array_equal(st.beta, fit.params.to_numpy())
    assert st.criterion == pytest.approx(-2 * fit.loglik, rel=1e-15)
    np.testing.assert_array_equal(st.mu, fit.fitted.to_numpy())
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.beta = np.zeros(4)
    with pytest.raises(ValueError):
        st.beta[0] = 0.0


@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_polars_and_pyarrow_input(cbpp, fit, kind):
    if kind == "polars":
        pl = pytest.importorskip("polars")
        table = pl.from_pandas(cbpp)
    else:
        pa = pytest.importorskip("pyarrow")
        table = pa.Table.from_pandas(cbpp, preserve_index=False)
    other = memoe.glmm(FORMULA, table, "binomial").fit()
    np.testing.assert_allclose(other.params, fit.params, rtol=1e-7)
    assert other.loglik == pytest.approx(fit.loglik, rel=1e-10)


def test_save_load_round_trip(fit, tmp_path):
    path = tmp_path / "glmm.memoe"
    fit.save(path)
    back = memoe.persist.load(path)
    pd.testing.assert_series_equal(back.params, fit.params, rtol=1e-12)
    assert back.singular == fit.singular and back.messages == fit.messages

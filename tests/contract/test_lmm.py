"""The shared result interface (issue 9) on a linear mixed model: names, types and columns.

Fixture: lme4's sleepstudy example (180 rows, 18 subjects), fitted once per module. Numbers derived from
other extractors of the same fit are compared to rounding (rtol 1e-12 for elementwise arithmetic on
well-scaled values); refits from converted tables solve the same problem with the same optimiser path,
so they agree to the optimiser's own tolerance on theta (1e-8 relative here).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import memoe
from memoe.core.optim import ConvergenceReport
from memoe.core.optim.finish import SINGULAR_MESSAGE, finish_fit, is_boundary
from memoe.core.result import COEF_COLUMNS, GLANCE_COLUMNS, TIDY_COLUMNS, FitResult
from memoe.core.state import LmmState
from memoe.core.summary import Summary
from memoe.errors import ArgumentError, ConvergenceWarning, MemoeError, SingularFitWarning, caller_stacklevel

FORMULA = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return memoe.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def fit(df):
    return memoe.lmm(FORMULA, data=df).fit()


def test_is_a_fit_result_with_series_params(fit):
    assert isinstance(fit, FitResult) and fit.family == "lmm"
    assert isinstance(fit.params, pd.Series) and list(fit.params.index) == ["(Intercept)", "Days"]
    assert isinstance(fit.bse, pd.Series) and fit.bse.index.equals(fit.params.index)
    assert isinstance(fit.ngroups, pd.Series) and fit.ngroups.to_dict() == {"Subject": 18}
    assert fit.singular is False and fit.converged is True and fit.nobs == 180
    assert isinstance(fit.ranef, dict) and isinstance(fit.ranef["Subject"], pd.DataFrame)
    assert isinstance(fit.ranef_condsd, dict) and fit.ranef_condsd["Subject"].shape == (18, 2)


def test_vcov_is_a_method_with_robust_types(fit):
    v = fit.vcov()
    assert isinstance(v, pd.DataFrame) and list(v.index) == list(v.columns) == list(fit.params.index)
    np.testing.assert_allclose(np.sqrt(np.diag(v)), fit.bse, rtol=1e-12)
    for robust in ("CR0", "CR1", "CR1S", "CR2", "CR3", "cr2"):
        r = fit.vcov(robust=robust)
        assert isinstance(r, pd.DataFrame) and r.shape == (2, 2) and not r.equals(v)
    with pytest.raises(ArgumentError, match=r"robust='HC3'.*CR2"):
        fit.vcov(robust="HC3")


def test_coef_table_columns_and_attrs(fit):
    ct = fit.coef_table()
    assert list(ct.columns) == COEF_COLUMNS and ct.attrs["statistic"] == "t" and ct.attrs["ddf"] == "residual"
    assert np.all(ct["df"] == 178)
    np.testing.assert_allclose(ct["estimate"], fit.params, rtol=1e-12)
    np.testing.assert_allclose(ct["std_error"], fit.bse, rtol=1e-12)
    np.testing.assert_allclose(ct["p_value"], 2 * stats.t.sf(np.abs(ct["statistic"]), 178), rtol=1e-10)
    z = fit.coef_table(ddf="asymptotic")
    assert list(z.columns) == COEF_COLUMNS and z.attrs["statistic"] == "z" and np.all(np.isinf(z["df"]))
    sat = fit.coef_table(ddf="satterthwaite")
    assert sat.attrs["ddf"] == "satterthwaite" and np.all(sat["df"] < 178)


def test_confint_lower_upper_with_lme4_rows(fit):
    ci = fit.confint()
    assert list(ci.columns) == ["lower", "upper"]
    assert list(ci.index) == ["sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject", "sd_Days|Subject",
                              "sigma", "(Intercept)", "Days"]
    z = stats.norm.ppf(0.975)
    np.testing.assert_allclose(ci.loc[fit.params.index, "lower"], fit.params - z * fit.bse, rtol=1e-12)
    # lme4 gives NA here; memoe gives a delta-method interval on the log-SD scale (memoe.inference.varcomp)
    assert ci.loc["sigma", "lower"] < fit.sigma < ci.loc["sigma", "upper"]
    with pytest.raises(ArgumentError, match="level"):
        fit.confint(level=95)
    with pytest.raises(ArgumentError, match="method='jackknife'"):
        fit.confint(method="jackknife")


def test_tidy_uses_broom_mixed_names(fit):
    t = fit.tidy()
    assert list(t.columns) == TIDY_COLUMNS
    rp = t[t.effect == "ran_pars"]
    assert list(zip(rp.group, rp.term, strict=True)) == [
        ("Subject", "sd__(Intercept)"), ("Subject", "sd__Days"), ("Subject", "cor__(Intercept).Days"),
        ("Residual", "sd__Observation"),
    ]
    assert rp.estimate.iloc[-1] == pytest.approx(fit.sigma, rel=1e-12)
    fixed = t[t.effect == "fixed"]
    np.testing.assert_allclose(fixed.estimate, fit.params, rtol=1e-12)
    with_ci = fit.tidy(effects="fixed", conf_int=True)
    assert list(with_ci.columns) == [*TIDY_COLUMNS, "conf_low", "conf_high"]
    assert np.all(with_ci.conf_low < with_ci.estimate) and np.all(with_ci.estimate < with_ci.conf_high)


def test_glance_one_row(fit):
    g = fit.glance()
    assert list(g.columns) == GLANCE_COLUMNS and len(g) == 1
    row = g.iloc[0]
    assert (row.nobs, row.ngroups, bool(row.converged), bool(row.singular)) == (180, 18, True, False)
    assert row.sigma == pytest.approx(fit.sigma, rel=1e-12) and row.logLik == pytest.approx(fit.loglik, rel=1e-12)


def test_augment_and_predict(fit, df):
    a = fit.augment()
    assert {".fitted", ".resid", ".fixed"} <= set(a.columns) and a.index.equals(df.index)
    np.testing.assert_allclose(a[".fitted"], fit.fitted, rtol=1e-12)
    np.testing.assert_allclose(a[".fitted"] + a[".resid"], df["Reaction"], rtol=1e-12)
    np.testing.assert_allclose(fit.predict(df), fit.fitted, rtol=1e-12)
    np.testing.assert_allclose(a[".fixed"], fit.predict(df, re_form=None), rtol=1e-12)
    new = fit.augment(newdata=df.iloc[:5])
    np.testing.assert_allclose(new[".resid"], df["Reaction"].iloc[:5] - fit.fitted.iloc[:5], rtol=1e-10, atol=1e-9)


def test_augment_keeps_dropped_rows(df):
    holes = df.copy()
    holes.loc[[3, 10], "Reaction"] = np.nan
    f = memoe.lmm(FORMULA, data=holes).fit()
    a = f.augment()
    assert len(a) == len(holes) and a.index.equals(holes.index)
    assert a.loc[[3, 10], ".fitted"].isna().all() and a.loc[[3, 10], "Days"].isna().all()
    assert a[".fitted"].notna().sum() == 178


def test_residual_types(fit, df):
    assert fit.residual_types[0] == "response"
    np.testing.assert_allclose(fit.residuals(), fit.resid, rtol=1e-12)
    np.testing.assert_allclose(fit.residuals("pearson"), fit.resid / fit.sigma, rtol=1e-12)
    np.testing.assert_allclose(fit.residuals("marginal"), df["Reaction"] - fit.predict(re_form=None), rtol=1e-12)
    with pytest.raises(ArgumentError, match="deviance"):
        fit.residuals("deviance")


def test_summary_object(fit):
    s = fit.summary()
    assert isinstance(s, Summary)
    assert str(s).startswith("Linear mixed model fit by REML") and "Fixed effects:" in str(s)
    assert set(s.tables) == {"coefficients", "random_effects", "ngroups", "fit"}
    assert list(s.tables["coefficients"].columns) == ["estimate", "std_error", "statistic"]
    html = s._repr_html_()
    assert html.startswith("<pre>") and "<table" in html


def test_state_is_public_and_frozen(fit):
    st = fit.state
    assert isinstance(st, LmmState) and st.reml is True
    np.testing.assert_array_equal(st.beta, fit.params.to_numpy())
    np.testing.assert_array_equal(st.theta, fit.theta.to_numpy())
    assert st.sigma == fit.sigma
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.theta = np.zeros(3)
    with pytest.raises(ValueError):
        st.theta[0] = 0.0


@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_polars_and_pyarrow_input(df, fit, kind):
    if kind == "polars":
        pl = pytest.importorskip("polars")
        table = pl.from_pandas(df)
    else:
        pa = pytest.importorskip("pyarrow")
        table = pa.Table.from_pandas(df, preserve_index=False)
    other = memoe.lmm(FORMULA, data=table).fit()
    np.testing.assert_allclose(other.params, fit.params, rtol=1e-8)
    assert other.loglik == pytest.approx(fit.loglik, rel=1e-10)
    np.testing.assert_allclose(other.augment(newdata=table)[".fitted"], fit.fitted, rtol=1e-8)


def test_save_load_round_trip(fit, tmp_path):
    path = tmp_path / "lmm.memoe"
    fit.save(path)
    back = memoe.persist.load(path)
    pd.testing.assert_series_equal(back.params, fit.params, rtol=1e-12)
    assert back.singular == fit.singular


# ------------------------------------------------------------------------------ finish-the-fit stage
def _fit_singular():
    d2 = memoe.datasets.load("Dyestuff2")
    return memoe.lmm("Yield ~ 1 + (1 | Batch)", data=d2).fit(reml=False)


def test_singular_fit_warns_at_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = _fit_singular()
    sing = [w for w in caught if issubclass(w.category, SingularFitWarning)]
    assert len(sing) == 1 and "Batch.(Intercept)" in str(sing[0].message)
    assert sing[0].filename == __file__
    assert f.singular is True and f.messages[-1] == SINGULAR_MESSAGE


def test_finish_fit_messages_and_warnings():
    report = ConvergenceReport(converged=False, messages=["Model failed to converge with max|grad| = 0.1"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msgs = finish_fit(report, singular=True, names=["g.(Intercept)"], values=[0.0])
    assert msgs == [report.messages[0], SINGULAR_MESSAGE]
    kinds = [w.category for w in caught]
    assert kinds == [ConvergenceWarning, SingularFitWarning]
    assert all(w.filename == __file__ for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert finish_fit(report, singular=False, warn=False) == report.messages
    assert caller_stacklevel() == 1  # called from outside memoe: the calling function itself


def test_is_boundary_only_looks_at_bounded_entries():
    lower = np.array([0.0, -np.inf, 0.0])
    assert is_boundary([1.0, 0.0, 5e-5], lower, 1e-4)
    assert not is_boundary([1.0, -3.0, 0.5], lower, 1e-4)


def test_errors_are_memoe_errors(fit):
    with pytest.raises(MemoeError):
        fit.tidy(effects="random")

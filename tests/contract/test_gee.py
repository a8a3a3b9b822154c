"""The shared result interface on a GEE fit (issue 9): types, column names, no likelihood, QIC in glance,
residual types, the summary object, polars / pyarrow input and the save/load round trip."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import memoe.persist
from memoe.core.result import COEF_COLUMNS, GLANCE_COLUMNS, TIDY_COLUMNS, FitResult
from memoe.core.summary import Summary
from memoe.errors import ArgumentError, MemoeError
from memoe.gee import GEEResult, gee


def _data(seed: int = 4, n_groups: int = 30) -> pd.DataFrame:
    """Clusters of 4 visits with a shared random intercept; a Poisson count and a dropped row."""
    rng = np.random.default_rng(seed)
    gid = np.repeat(np.arange(n_groups), 4)
    t = np.tile(np.arange(1, 5), n_groups)
    x = rng.normal(size=len(gid))
    arm = np.where(np.repeat(rng.integers(0, 2, n_groups), 4) == 1, "drug", "placebo")
    u = np.repeat(rng.normal(size=n_groups), 4)
    y = 2.0 + 0.5 * x - 0.3 * t + 0.8 * (arm == "drug") + u + rng.normal(size=len(gid))
    count = rng.poisson(np.exp(0.2 + 0.3 * x + 0.3 * u))
    df = pd.DataFrame({"id": [f"g{g:02d}" for g in gid], "t": t, "x": x, "arm": arm, "y": y, "count": count})
    df.loc[5, "x"] = np.nan  # a dropped row: per-row outputs are NaN there
    return df


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return _data()


@pytest.fixture(scope="module")
def fit(data) -> GEEResult:
    return gee("y ~ x + t + arm", data, group="id", corstr="exchangeable").fit()


@pytest.fixture(scope="module")
def pois(data) -> GEEResult:
    return gee("count ~ x + arm", data, group="id", family="poisson", corstr="ar1", time="t").fit()


def test_is_a_fit_result(fit):
    assert isinstance(fit, FitResult) and fit.family == "gee"


def test_params_bse_vcov(fit):
    names = ["(Intercept)", "x", "t", "armplacebo"]
    assert isinstance(fit.params, pd.Series) and list(fit.params.index) == names
    assert isinstance(fit.bse, pd.Series) and list(fit.bse.index) == names
    v = fit.vcov()
    assert isinstance(v, pd.DataFrame) and list(v.index) == names and list(v.columns) == names
    # the default is geepack's sandwich (also robust=None); "naive" is the model-based A^-1
    np.testing.assert_array_equal(v, fit.vcov(robust="sandwich"))
    np.testing.assert_array_equal(v, fit.vcov(robust=None))
    np.testing.assert_array_equal(v, fit.vbeta)
    np.testing.assert_array_equal(fit.vcov(robust="naive"), fit.vbeta_naive)
    assert not np.allclose(fit.vcov(robust="naive"), v)
    np.testing.assert_array_equal(fit.bse, np.sqrt(np.diag(fit.vbeta)))
    with pytest.raises(ArgumentError, match=r"robust='CR2'.*sandwich"):
        fit.vcov(robust="CR2")


def test_coef_table_and_confint(fit):
    ct = fit.coef_table()
    assert list(ct.columns) == COEF_COLUMNS and ct.attrs["statistic"] == "chisq"
    np.testing.assert_allclose(ct["statistic"], (fit.params / fit.bse) ** 2, rtol=1e-14)
    assert np.all(ct["df"] == 1)
    naive = fit.coef_table(robust="naive")
    np.testing.assert_allclose(naive["std_error"], np.sqrt(np.diag(fit.vbeta_naive)), rtol=1e-14)
    ci = fit.confint()
    assert list(ci.columns) == ["lower", "upper"] and list(ci.index) == list(fit.params.index)
    # Wald intervals with the normal quantile (chi-square on 1 df = z^2)
    np.testing.assert_allclose(ci["upper"] - fit.params, 1.959963984540054 * fit.bse, rtol=1e-12)
    ci_naive = fit.confint(level=0.9, robust="naive")
    np.testing.assert_allclose(ci_naive["upper"] - fit.params, 1.6448536269514722 * naive["std_error"], rtol=1e-12)
    with pytest.raises(ArgumentError, match="profile"):
        fit.confint(method="profile")


def test_no_likelihood_but_qic(fit):
    for attr in ("loglik", "aic", "bic", "deviance"):
        with pytest.raises(MemoeError, match=r"not likelihood-based.*qic"):
            getattr(fit, attr)
    ic = fit.information_criteria()
    pd.testing.assert_series_equal(ic, fit.qic())
    assert {"QIC", "QICu", "CIC"} <= set(ic.index)


def test_glance(fit, data):
    g = fit.glance()
    assert list(g.columns) == [*GLANCE_COLUMNS, "QIC"] and len(g) == 1
    row = g.iloc[0]
    assert row["nobs"] == len(data) - 1 and row["ngroups"] == 30
    assert row["sigma"] == pytest.approx(math.sqrt(fit.scale), rel=1e-15)
    assert all(np.isnan(row[c]) for c in ("logLik", "AIC", "BIC", "deviance"))
    assert row["df_residual"] == fit.nobs - 4 and bool(row["converged"]) and not bool(row["singular"])
    assert row["QIC"] == fit.qic()["QIC"]


def test_ngroups_and_sizes(fit):
    assert isinstance(fit.ngroups, pd.Series) and fit.ngroups.to_dict() == {"id": 30}
    assert fit.nobs == 119 and fit.n_dropped == 1 and fit.df_model == 4


def test_tidy(fit):
    td = fit.tidy()
    assert list(td.columns) == TIDY_COLUMNS
    fixed = td[td["effect"] == "fixed"]
    np.testing.assert_array_equal(fixed["estimate"], fit.params)
    np.testing.assert_array_equal(fixed["std_error"], fit.bse)
    rp = td[td["effect"] == "ran_pars"].set_index("term")
    assert list(rp.index) == ["alpha", "scale"]
    assert list(rp["group"]) == ["working_correlation", "Residual"]
    assert rp.loc["alpha", "estimate"] == fit.alpha["alpha"] and rp.loc["alpha", "std_error"] == fit.alpha_se["alpha"]
    assert rp.loc["scale", "estimate"] == fit.scale and rp.loc["scale", "std_error"] == fit.scale_se
    wide = fit.tidy(conf_int=True, level=0.9)
    assert list(wide.columns) == [*TIDY_COLUMNS, "conf_low", "conf_high"]
    np.testing.assert_allclose(wide["conf_low"].iloc[:4], fit.confint(level=0.9)["lower"], rtol=1e-14)


def test_fitted_resid_residuals(fit, pois, data):
    for f in (fit, pois):
        assert f.fitted.index.equals(data.index) and f.resid.index.equals(data.index)
        assert np.isnan(f.fitted.loc[5]) and np.isnan(f.resid.loc[5])
        assert f.residuals().equals(f.resid)
    kept = data.drop(index=5)
    np.testing.assert_allclose(fit.predict(kept), fit.fitted.drop(index=5), rtol=1e-14)
    mu = pois.fitted.drop(index=5)
    y = kept["count"]
    np.testing.assert_allclose(pois.residuals("pearson").drop(index=5), (y - mu) / np.sqrt(mu), rtol=1e-12)
    # log link: d mu / d eta = mu
    np.testing.assert_allclose(pois.residuals("working").drop(index=5), (y - mu) / mu, rtol=1e-12)
    np.testing.assert_allclose(fit.residuals("working"), fit.resid, rtol=1e-14)  # identity link
    with pytest.raises(ArgumentError, match="deviance"):
        fit.residuals("deviance")


def test_augment(fit, data):
    aug = fit.augment()
    assert aug.index.equals(data.index) and list(aug.columns[: data.shape[1]]) == list(data.columns)
    np.testing.assert_array_equal(aug[".fitted"], fit.fitted)
    np.testing.assert_array_equal(aug[".resid"], fit.resid)
    np.testing.assert_array_equal(aug[".fixed"], fit.fitted)
    new = data.iloc[10:14]
    aug_new = fit.augment(new)
    np.testing.assert_allclose(aug_new[".resid"], new["y"] - aug_new[".fitted"], rtol=1e-14)
    assert "x" in data and ".fitted" not in data  # not changed in place


def test_summary_object(fit):
    s = fit.summary()
    assert isinstance(s, Summary)
    assert str(s).startswith("\nCall:\ngee(formula = y ~ x + t + arm, group = id, family = gaussian")
    assert set(s.tables) == {"coefficients", "scale", "correlation", "clusters"}
    pd.testing.assert_frame_equal(s.tables["coefficients"], fit.coef_table())
    assert s.tables["correlation"].loc["alpha", "estimate"] == fit.alpha["alpha"]
    html = s._repr_html_()
    assert html.startswith("<pre>") and "coefficients" in html


@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_polars_and_pyarrow_input(data, fit, kind):
    if kind == "polars":
        pl = pytest.importorskip("polars")
        table = pl.from_pandas(data)
    else:
        pa = pytest.importorskip("pyarrow")
        table = pa.Table.from_pandas(data, preserve_index=False)
    other = gee("y ~ x + t + arm", table, group="id", corstr="exchangeable").fit()
    # the same numbers, to rounding (identical data give identical arithmetic)
    np.testing.assert_allclose(other.params, fit.params, rtol=1e-13)
    np.testing.assert_allclose(other.vcov(), fit.vcov(), rtol=1e-12)
    assert other.alpha["alpha"] == pytest.approx(fit.alpha["alpha"], rel=1e-12)


def test_save_load_round_trip(fit, tmp_path):
    path = tmp_path / "fit.memoe"
    fit.save(path)
    back = memoe.persist.load(path)  # memoe.load once the lead exports it
    assert isinstance(back, GEEResult)
    pd.testing.assert_series_equal(back.params, fit.params, rtol=1e-14)
    pd.testing.assert_frame_equal(back.vcov(), fit.vcov(), rtol=1e-12)
    pd.testing.assert_series_equal(back.ngroups, fit.ngroups)
    aug = back.augment()  # a loaded fit keeps the used columns only
    assert aug.index.equals(fit.fitted.index) and np.isnan(aug.loc[5, ".fitted"])
    assert str(back.summary()) == str(fit.summary())

"""The shared result interface (memoe.core.result.FitResult) on MEMoE and MoE fits, and compare() of mixtures.

Fixture: the memoe_sim2 reference data (300 subjects, 1827 rows), K = 2, a few starts (every start
reaches the same optimum). Identities that are the same computation done two ways are checked to a few
hundred ulps of the quantity's scale; the K = 1 mixture against the ML LMM carries the optimisers' slack.
"""

from __future__ import annotations

import math
import warnings
from functools import cache

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.result import COEF_COLUMNS, GLANCE_COLUMNS, TIDY_COLUMNS, FitResult
from memoe.core.summary import Summary
from memoe.errors import ArgumentError, MemoeError, MemoeWarning, ModelComparisonError
from memoe.inference.compare_mixtures import MixtureComparison

FORMULA = "y ~ time + x + (time | id)"
GATING = "~ w1 + w2"
# relative accuracy of identities computed two ways
EXACT = 1e-10


@cache
def sim2() -> pd.DataFrame:
    return memoe.datasets.load("memoe_sim2")


def _fit(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(progress=False, **kw)


@cache
def memoe_fit():
    return _fit(memoe.MEMoE(FORMULA, gating=GATING, k=2, data=sim2()), n_starts=4, seed=1)


@cache
def moe_fit():
    return _fit(memoe.MoE("y ~ time + x", gating=GATING, k=2, data=sim2(), group="id"), n_starts=4, seed=1)


@cache
def k1_fit():
    return _fit(memoe.MEMoE(FORMULA, gating=None, k=1, data=sim2()))


FITS = {"memoe": memoe_fit, "moe": moe_fit}


@pytest.fixture(params=sorted(FITS))
def fit(request):
    return FITS[request.param]()


# ---------------------------------------------------------------------------------------------- types
def test_is_a_fit_result(fit):
    assert isinstance(fit, FitResult)
    assert fit.family == ("memoe" if type(fit.model).__name__ == "MEMoE" else "moe")


def test_params_name_every_parameter(fit):
    p = fit.params
    assert isinstance(p, pd.Series) and list(p.index) == fit.param_names
    assert len(p) == len(set(p.index))
    assert {"gating[2]:w1", "fixed[1]:time", "fixed[2]:x", "sigma[1]", "sigma[2]"} <= set(p.index)
    if fit.family == "memoe":
        assert {"sd[1]:(Intercept)", "corr[2]:(Intercept):time"} <= set(p.index)
    # the arrays behind them
    np.testing.assert_array_equal(p[["fixed[1]:time", "fixed[2]:time"]], fit.estimates.beta[:, 1])
    np.testing.assert_array_equal(p[["sigma[1]", "sigma[2]"]], fit.estimates.sigma)
    assert p["gating[2]:w1"] == fit.estimates.gamma[1, 1]


def test_vcov_bse(fit):
    names = list(fit.params.index)
    for robust in (None, "sandwich", "Sandwich"):
        V = fit.vcov(robust)
        assert isinstance(V, pd.DataFrame) and list(V.index) == names and list(V.columns) == names
        np.testing.assert_allclose(V.to_numpy(), V.to_numpy().T, rtol=EXACT, atol=0)
    assert not np.allclose(fit.vcov().to_numpy(), fit.vcov("sandwich").to_numpy())
    assert isinstance(fit.bse, pd.Series) and list(fit.bse.index) == names
    np.testing.assert_allclose(fit.bse, np.sqrt(np.diag(fit.vcov().to_numpy())), rtol=1e-15)
    V = fit.vcov()
    V.iloc[0, 0] = -1.0
    assert fit.vcov().iloc[0, 0] > 0
    with pytest.raises(ArgumentError, match=r"robust='CR2'.*sandwich"):
        fit.vcov(robust="CR2")


@pytest.mark.parametrize("robust", [None, "sandwich"])
def test_coef_table(fit, robust):
    ct = fit.coef_table(robust=robust)
    assert list(ct.columns) == COEF_COLUMNS and list(ct.index) == list(fit.params.index)
    assert ct.attrs["statistic"] == "z" and ct.attrs["ddf"] == "asymptotic" and ct.attrs["robust"] == robust
    np.testing.assert_allclose(ct["std_error"], np.sqrt(np.diag(fit.vcov(robust).to_numpy())), rtol=1e-15)
    tested = ct.index.str.match(r"^(gating|fixed)\[")
    np.testing.assert_allclose(ct.loc[tested, "statistic"], (ct["estimate"] / ct["std_error"])[tested], rtol=1e-14)
    # variances are not Wald-tested (a variance on the boundary)
    assert ct.loc[~tested, ["statistic", "p_value"]].isna().all().all()
    assert np.isinf(ct["df"]).all()


def test_confint(fit):
    ci = fit.confint(0.9)
    assert list(ci.columns) == ["lower", "upper"] and list(ci.index) == list(fit.params.index)
    z = 1.6448536269514722
    np.testing.assert_allclose(ci["upper"] - ci["lower"], 2 * z * fit.bse, rtol=1e-12)
    rob = fit.confint(0.9, robust="sandwich")
    se = fit.coef_table(robust="sandwich")["std_error"]
    np.testing.assert_allclose(rob["upper"] - rob["lower"], 2 * z * se, rtol=1e-12)
    with pytest.raises(ArgumentError, match="profile"):
        fit.confint(method="profile")


def test_fixef_and_tables(fit):
    assert isinstance(fit.fixef, pd.Series)
    assert list(fit.fixef.index) == [f"fixed[{k}]:{t}" for k in (1, 2) for t in ("(Intercept)", "time", "x")]
    np.testing.assert_array_equal(fit.fixef.to_numpy(), fit.fixef_table.to_numpy().ravel())
    assert list(fit.fixef_table.columns) == ["(Intercept)", "time", "x"]


def test_sizes_and_criteria(fit):
    assert fit.ngroups.to_dict() == {"id": 300} and isinstance(fit.ngroups, pd.Series)
    assert fit.df_model == fit.npar and fit.nobs == 1827
    assert math.isclose(fit.aic, -2 * fit.loglik + 2 * fit.npar, rel_tol=1e-15)
    assert math.isclose(fit.bic, -2 * fit.loglik + math.log(300) * fit.npar, rel_tol=1e-15)
    ic = fit.information_criteria()
    assert ic["BIC"] == fit.bic and ic["ICL"] == fit.icl and ic["N"] == 300
    assert math.isnan(fit.sigma) and list(fit.sigmas.index) == [1, 2]
    assert fit.singular is False


def test_common_sigma_is_a_scalar():
    fit = _fit(memoe.MEMoE(FORMULA, gating=GATING, k=2, data=sim2(), sigma="common"), n_starts=2, seed=1)
    assert fit.sigma == fit.sigmas.iloc[0] == fit.sigmas.iloc[1]
    assert fit.glance()["sigma"].iloc[0] == fit.sigma


# ---------------------------------------------------------------------------------------------- per-row
def test_fitted_is_predict_and_resid(fit):
    df = sim2()
    assert fit.fitted.index.equals(df.index) and fit.resid.index.equals(df.index)
    np.testing.assert_allclose(fit.predict(df), fit.fitted, rtol=EXACT)
    np.testing.assert_allclose(fit.predict(), fit.fitted, rtol=EXACT)
    np.testing.assert_allclose(fit.resid, df["y"] - fit.fitted, rtol=EXACT, atol=EXACT * df["y"].abs().max())
    pd.testing.assert_series_equal(fit.residuals(), fit.resid)
    pd.testing.assert_series_equal(fit.residuals("response"), fit.resid)
    with pytest.raises(ArgumentError, match="pearson"):
        fit.residuals("pearson")


def test_fitted_aligns_dropped_rows():
    df = sim2().copy()
    df.loc[[5, 17], "y"] = np.nan
    fit = _fit(memoe.MEMoE(FORMULA, gating=GATING, k=2, data=df), n_starts=2, seed=1)
    assert len(fit.fitted) == len(df) and fit.fitted.index.equals(df.index)
    assert fit.fitted.isna().sum() == 2 and np.isnan(fit.resid[17])
    aug = fit.augment()  # every input row, as the other families; NaN where a row was dropped
    assert len(aug) == len(df) and aug.index.equals(df.index)
    np.testing.assert_allclose(aug[".fitted"], fit.fitted, rtol=EXACT)


def test_augment(fit):
    df = sim2()
    aug = fit.augment()
    assert {".fitted", ".resid", ".fixed"} <= set(aug.columns) and aug.index.equals(df.index)
    np.testing.assert_allclose(aug[".fixed"], fit.predict(df, re_form=None), rtol=EXACT)
    new = fit.augment(df.head(20))
    np.testing.assert_allclose(new[".fitted"], fit.fitted.head(20), rtol=EXACT)
    np.testing.assert_allclose(new[".resid"], fit.resid.head(20), rtol=EXACT, atol=1e-12)


# ---------------------------------------------------------------------------------------------- random effects
def test_ranef_per_expert():
    fit = memoe_fit()
    re = fit.ranef
    assert set(re) == {1, 2} and set(re[1]) == {"id"}
    b1 = re[1]["id"]
    assert b1.shape == (300, 2) and list(b1.columns) == ["(Intercept)", "time"] and b1.index.equals(fit.posterior.index)
    post = fit.ranef_posterior["id"]
    tau = fit.posterior.to_numpy()
    np.testing.assert_allclose(post, tau[:, [0]] * b1 + tau[:, [1]] * re[2]["id"].to_numpy(), rtol=EXACT)
    sd = fit.ranef_condsd
    assert set(sd) == {1, 2} and sd[2]["id"].shape == (300, 2) and (sd[2]["id"].to_numpy() > 0).all()


def test_ranef_matches_dense_formulas():
    """BLUP and conditional SD of a few subjects by dense matrices: E(b | y, k) = G Z' V^-1 r and
    Var(b | y, k) = G - G Z' V^-1 Z G, V = Z G Z' + sigma^2 I."""
    fit = memoe_fit()
    md = fit.model.mdesign
    df = md.data
    for k in (1, 2):
        beta, G, s = fit.estimates.beta[k - 1], fit.estimates.G[k - 1], fit.estimates.sigma[k - 1]
        for subject in md.subjects[:3]:
            rows = (df["id"] == subject).to_numpy()
            X = md.design.X[rows]
            Z = md.Z[rows]
            V = Z @ G @ Z.T + s**2 * np.eye(rows.sum())
            r = md.design.y[rows] - X @ beta
            b = G @ Z.T @ np.linalg.solve(V, r)
            cov = G - G @ Z.T @ np.linalg.solve(V, Z @ G)
            scale = np.sqrt(np.diag(G))
            np.testing.assert_allclose(fit.ranef[k]["id"].loc[subject], b, rtol=1e-8, atol=1e-10 * scale.max())
            np.testing.assert_allclose(fit.ranef_condsd[k]["id"].loc[subject], np.sqrt(np.diag(cov)), rtol=1e-8)


def test_moe_has_no_ranef():
    with pytest.raises(MemoeError, match="without random effects"):
        _ = moe_fit().ranef
    assert moe_fit().tidy(effects="ran_pars")["group"].tolist() == ["Residual[1]", "Residual[2]"]


# ---------------------------------------------------------------------------------------------- broom verbs
def test_tidy(fit):
    td = fit.tidy()
    assert list(td.columns) == TIDY_COLUMNS and td.index.equals(pd.RangeIndex(len(td)))
    fixed = td[td["effect"] == "fixed"]
    assert fixed["term"].str.match(r"^(gating|fixed)\[").all()
    ct = fit.coef_table()
    np.testing.assert_array_equal(fixed["estimate"], ct.loc[fixed["term"], "estimate"])
    rp = td[td["effect"] == "ran_pars"]
    assert rp.loc[rp["term"] == "sd__Observation", "group"].tolist() == ["Residual[1]", "Residual[2]"]
    np.testing.assert_array_equal(rp.loc[rp["term"] == "sd__Observation", "estimate"], fit.sigmas)
    if fit.family == "memoe":
        assert {"sd__(Intercept)", "sd__time", "cor__(Intercept).time"} <= set(rp["term"])
        assert set(rp["group"]) == {"id[1]", "id[2]", "Residual[1]", "Residual[2]"}
        row = rp[(rp["group"] == "id[2]") & (rp["term"] == "cor__(Intercept).time")]
        assert row["estimate"].iloc[0] == fit.params["corr[2]:(Intercept):time"]
    ci = fit.tidy(conf_int=True, level=0.9)
    assert list(ci.columns) == [*TIDY_COLUMNS, "conf_low", "conf_high"]
    f = ci[ci["effect"] == "fixed"]
    np.testing.assert_array_equal(f["conf_low"], fit.confint(0.9).loc[f["term"], "lower"])


def test_glance(fit):
    g = fit.glance()
    assert len(g) == 1 and list(g.columns) == [*GLANCE_COLUMNS, "k", "ICL", "entropy"]
    row = g.iloc[0]
    assert row["k"] == 2 and row["ngroups"] == 300 and row["ICL"] == fit.icl and row["entropy"] == fit.entropy
    assert row["BIC"] == fit.bic and row["df_residual"] == fit.nobs - fit.npar


def test_summary_object(fit):
    s = fit.summary()
    assert isinstance(s, Summary)
    assert str(s).startswith("Mixed-Effects Mixture of Experts fit by maximum likelihood (EM)")
    tables = s.tables
    assert {"criteria", "coefficients", "coefficients_robust", "gating", "expert_1", "expert_2",
            "classification"} <= set(tables)
    assert list(tables["coefficients"].columns) == COEF_COLUMNS
    pd.testing.assert_frame_equal(tables["coefficients"], fit.coef_table())
    html = s._repr_html_()
    assert "<pre>" in html and "coefficients_robust" in html


# ---------------------------------------------------------------------------------------------- inputs, save
@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_polars_and_pyarrow_input(kind):
    df = sim2()
    if kind == "polars":
        pl = pytest.importorskip("polars")
        table = pl.from_pandas(df)
    else:
        pa = pytest.importorskip("pyarrow")
        table = pa.Table.from_pandas(df, preserve_index=False)
    fit = _fit(memoe.MEMoE(FORMULA, gating=GATING, k=2, data=table), n_starts=4, seed=1)
    ref = memoe_fit()
    assert fit.loglik == ref.loglik
    np.testing.assert_array_equal(fit.params, ref.params)
    np.testing.assert_allclose(fit.predict(table), ref.fitted, rtol=EXACT)


def test_save_load_round_trip(fit, tmp_path):
    path = tmp_path / "fit.memoe"
    fit.save(path)
    back = memoe.persist.load(path)
    pd.testing.assert_series_equal(back.params, fit.params, rtol=1e-12)
    pd.testing.assert_series_equal(back.fitted, fit.fitted, rtol=1e-10)


# ---------------------------------------------------------------------------------------------- compare
def test_compare_mixtures_gives_criteria_without_p_value():
    k2, k1 = memoe_fit(), k1_fit()
    lmm = memoe.lmm(FORMULA, sim2()).fit(reml=False)
    tab = memoe.compare(k2, k1, lmm, names=["k2", "k1", "lmm"])
    assert isinstance(tab, MixtureComparison)
    assert list(tab.columns) == ["k", "npar", "logLik", "AIC", "BIC", "ICL", "entropy"]
    assert list(tab.index) == ["k1", "lmm", "k2"]
    assert not any("Pr(" in c or "Chisq" in c for c in tab.columns)
    assert tab.loc["k2", "ICL"] == k2.icl and tab.loc["k2", "BIC"] == k2.bic
    # the K = 1 mixture is the ML LMM: the same likelihood, the same criteria (optimiser slack)
    assert abs(tab.loc["k1", "logLik"] - tab.loc["lmm", "logLik"]) < 1e-6
    assert tab.loc["lmm", "ICL"] == tab.loc["lmm", "BIC"] and tab.loc["lmm", "entropy"] == 1.0
    text = str(tab)
    assert "non-regular" in text and "parametric bootstrap" in text and "McLachlan 1987" in text
    assert any("non-regular" in n for n in tab.attrs["notes"])
    assert "lowest BIC: k2" in text


def test_compare_mixtures_refuses_what_it_cannot_compare():
    k2 = memoe_fit()
    other = _fit(memoe.MEMoE(FORMULA, gating=GATING, k=2, data=sim2().iloc[:-6]), n_starts=2, seed=1)
    with pytest.raises(ModelComparisonError, match="different data"):
        memoe.compare(k2, other)
    with pytest.raises(ModelComparisonError, match="boundary=True"):
        memoe.compare(k2, k1_fit(), boundary=True)
    glmm_like = memoe.gls("y ~ time", sim2()).fit()
    with pytest.raises(ModelComparisonError, match="MarginalResult"):
        memoe.compare(k2, glmm_like)


def test_compare_refits_reml_lmm_with_a_warning():
    lmm = memoe.lmm(FORMULA, sim2()).fit()
    with pytest.warns(MemoeWarning, match="refitting") as rec:
        tab = memoe.compare(memoe_fit(), lmm)
    assert rec[0].filename == __file__
    with pytest.raises(ModelComparisonError, match="REML"):
        memoe.compare(memoe_fit(), lmm, refit=False)
    assert tab.loc["model2", "k"] == 1


def test_singular_when_an_expert_covariance_is_on_the_boundary():
    import copy

    fit = memoe_fit()
    assert not fit.singular
    L = fit.estimates.L.copy()
    L[1, 1, 1] = 1e-6 * fit.estimates.sigma[1]  # expert 2's slope SD (given the intercept) at ~0
    boundary = copy.copy(fit)
    boundary.estimates = fit.estimates.replace(L=L)
    assert boundary.singular and boundary.glance()["singular"].iloc[0]
    assert moe_fit().singular is False

"""The shared result interface (memoe.core.result.FitResult) on gls / lme fits with residual structures.

Fixtures are small (Orthodont, 108 rows; sleepstudy, 180 rows). Identities that are the same
computation done two ways (batched vs one group at a time, confint vs intervals) are checked to a
few hundred ulps of the quantity's scale; cross-family checks (lme vs lmm) carry the optimisers'
slack (the two fits stop at different points of a flat optimum, ~1e-6 relative in theta).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.result import COEF_COLUMNS, GLANCE_COLUMNS, TIDY_COLUMNS, FitResult
from memoe.core.summary import Summary
from memoe.errors import ArgumentError, MemoeError
from memoe.marginal import AR1, CAR1, VarIdent, gls, lme

# relative accuracy of identities computed two ways (Cholesky of well-conditioned small blocks)
EXACT = 1e-10


@cache
def orthodont() -> pd.DataFrame:
    return memoe.datasets.load("Orthodont")


@cache
def gls_fit():
    """gls with AR(1) within Subject and an SD ratio per Sex (correlation and variance function)."""
    return gls("distance ~ age * Sex", orthodont(), correlation=AR1("Subject"), weights=VarIdent("Sex")).fit()


@cache
def lme_fit(reml: bool = True):
    return lme("distance ~ age + Sex + (1 | Subject)", orthodont(), correlation=AR1()).fit(reml=reml)


@cache
def lme_slope():
    return lme("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).fit()


FITS = {"gls": gls_fit, "lme": lme_fit}


@pytest.fixture(params=sorted(FITS))
def fit(request):
    return FITS[request.param]()


# ---------------------------------------------------------------------------------------------- types
def test_is_a_fit_result(fit):
    assert isinstance(fit, FitResult)
    assert fit.family == fit.kind


def test_params_bse_vcov(fit):
    names = list(fit.design.fixef_names)
    assert isinstance(fit.params, pd.Series) and list(fit.params.index) == names
    np.testing.assert_array_equal(fit.params.to_numpy(), fit.fixef.to_numpy())
    V = fit.vcov()
    assert isinstance(V, pd.DataFrame) and list(V.index) == names and list(V.columns) == names
    np.testing.assert_array_equal(V.to_numpy(), V.to_numpy().T)
    assert isinstance(fit.bse, pd.Series) and list(fit.bse.index) == names
    np.testing.assert_allclose(fit.bse.to_numpy(), np.sqrt(np.diag(V.to_numpy())), rtol=1e-15)
    # vcov() hands out a copy: changing it cannot change the fit
    V.iloc[0, 0] = -1.0
    assert fit.vcov().iloc[0, 0] > 0


@pytest.mark.parametrize("robust", ["CR0", "CR1", "CR1S", "CR2", "CR3", "cr2"])
def test_robust_vcov(fit, robust):
    V = fit.vcov(robust=robust)
    assert list(V.index) == list(fit.design.fixef_names)
    assert np.all(np.linalg.eigvalsh(V.to_numpy()) > 0)
    # CR0 is the plain sandwich: never equal to the model-based covariance of a correlated fit
    assert not np.allclose(V.to_numpy(), fit.vcov().to_numpy())


def test_unknown_robust_type_names_the_choices(fit):
    with pytest.raises(ArgumentError, match=r"robust='HC0'.*CR2"):
        fit.vcov(robust="HC0")


def test_robust_needs_groups():
    df = orthodont()
    fit = gls("distance ~ age", df).fit()
    with pytest.raises(MemoeError, match="groups"):
        fit.vcov(robust="CR2")


# ---------------------------------------------------------------------------------------------- tables
@pytest.mark.parametrize(("ddf", "statistic"), [("nlme", "t"), ("satterthwaite", "t"), ("asymptotic", "z")])
def test_coef_table_columns(fit, ddf, statistic):
    ct = fit.coef_table(ddf=ddf)
    assert list(ct.columns) == COEF_COLUMNS
    assert list(ct.index) == list(fit.design.fixef_names)
    assert ct.attrs["statistic"] == statistic and ct.attrs["ddf"] == ddf
    np.testing.assert_allclose(ct["statistic"], ct["estimate"] / ct["std_error"], rtol=1e-14)
    assert np.all((ct["p_value"] > 0) & (ct["p_value"] <= 1))
    if ddf == "asymptotic":
        assert np.all(np.isinf(ct["df"]))


def test_coef_table_default_is_nlmes_t_table():
    fit = lme_fit()
    ct = fit.coef_table()
    # nlme's containment df: between-subject Sex has 27 - 2, within-subject terms 108 - 27 - 1
    assert ct["df"].tolist() == [80.0, 80.0, 25.0]
    np.testing.assert_allclose(ct["std_error"], fit.bse, rtol=1e-14)


def test_coef_table_robust(fit):
    ct = fit.coef_table(robust="CR2")
    np.testing.assert_allclose(ct["std_error"], np.sqrt(np.diag(fit.vcov(robust="CR2"))), rtol=1e-14)
    np.testing.assert_array_equal(ct["df"], fit.coef_table()["df"])
    assert ct.attrs["robust"] == "CR2"
    assert fit.coef_table(ddf="asymptotic", robust="CR2").attrs["statistic"] == "z"
    with pytest.raises(ArgumentError, match=r"robust='CR2'.*satterthwaite"):
        fit.coef_table(ddf="satterthwaite", robust="CR2")


def test_coef_table_refuses_unknown_ddf(fit):
    with pytest.raises(ArgumentError, match=r"'kenward-rogers'.*nlme"):
        fit.coef_table(ddf="kenward-rogers")


@pytest.mark.parametrize("reml", [True, False])
def test_confint_is_the_fixed_part_of_intervals(reml):
    """For lme ML fits nlme's t table inflates the SEs by sqrt(N / (N - p)); intervals() does not,
    and confint() gives intervals()'s numbers."""
    fit = lme_fit(reml)
    ci = fit.confint(0.9)
    assert list(ci.columns) == ["lower", "upper"] and list(ci.index) == list(fit.design.fixef_names)
    iv = fit.intervals(0.9).loc["fixed"]
    np.testing.assert_array_equal(ci.to_numpy(), iv[["lower", "upper"]].to_numpy())
    assert list(fit.intervals().columns) == ["lower", "est.", "upper"]
    tidy = fit.tidy(effects="fixed", conf_int=True, level=0.9)
    np.testing.assert_array_equal(tidy["conf_low"], ci["lower"])
    np.testing.assert_array_equal(tidy["conf_high"], ci["upper"])


def test_confint_other_ddf_follows_the_coef_table(fit):
    ci = fit.confint(ddf="asymptotic")
    ct = fit.coef_table(ddf="asymptotic")
    np.testing.assert_allclose(ci["upper"] - ct["estimate"], 1.959963984540054 * ct["std_error"], rtol=1e-12)


def test_confint_refusals(fit):
    with pytest.raises(ArgumentError, match="profile"):
        fit.confint(method="profile")
    with pytest.raises(ArgumentError, match="level"):
        fit.confint(level=95)
    with pytest.raises(ArgumentError, match="level"):
        fit.intervals(level=1.5)


# ---------------------------------------------------------------------------------------------- residuals
def test_residual_types(fit):
    assert fit.residual_types == ("response", "pearson", "normalized", "marginal")
    df = orthodont()
    y = df["distance"].to_numpy()
    pd.testing.assert_series_equal(fit.residuals(), fit.resid)
    np.testing.assert_allclose(fit.residuals("marginal"), y - fit.fitted_marginal, rtol=1e-14)
    sd = fit.sigma * (fit.var_params.reindex(df["Sex"].astype(str)).to_numpy() if len(fit.var_params) else 1.0)
    np.testing.assert_allclose(fit.residuals("pearson"), fit.resid / sd, rtol=1e-13)
    with pytest.raises(ArgumentError, match=r"'deviance'.*normalized"):
        fit.residuals("deviance")


def test_normalized_residuals_whiten_each_group(fit):
    """nlme's normalized residuals: L_i^{-1} r_i with C_i = L_i L_i' per group (here one at a time)."""
    df = orthodont()
    pearson = fit.residuals("pearson")
    normalized = fit.residuals("normalized")
    for g in df["Subject"].cat.categories:
        rows = np.flatnonzero(df["Subject"].to_numpy() == g)  # Orthodont is in visit order
        L = np.linalg.cholesky(fit.residual_correlation(g))
        expected = np.linalg.solve(L, pearson.to_numpy()[rows])
        np.testing.assert_allclose(normalized.to_numpy()[rows], expected, rtol=EXACT, atol=EXACT)
    # whitening changes the residuals of a correlated fit
    assert not np.allclose(normalized, pearson)


def test_normalized_equals_pearson_without_correlation():
    fit = gls("distance ~ age", orthodont(), weights=VarIdent("Sex")).fit()
    np.testing.assert_array_equal(fit.residuals("normalized"), fit.residuals("pearson"))


# ---------------------------------------------------------------------------------------------- random effects
def test_ranef_dicts_and_ngroups():
    fit = lme_fit()
    assert list(fit.ranef) == ["Subject"] and list(fit.ranef_condsd) == ["Subject"]
    b, sd = fit.ranef["Subject"], fit.ranef_condsd["Subject"]
    assert list(b.columns) == ["(Intercept)"] and len(b) == 27
    assert b.index.equals(sd.index) and list(sd.columns) == list(b.columns)
    assert np.all(sd.to_numpy() > 0) and np.all(sd.to_numpy() < np.sqrt(fit.ranef_cov.iloc[0, 0]))
    pd.testing.assert_series_equal(fit.ngroups, pd.Series({"Subject": 27}, name="ngroups"))
    g = gls_fit()
    assert g.ranef == {} and g.ranef_condsd == {}
    pd.testing.assert_series_equal(g.ngroups, pd.Series({"Subject": 27}, name="ngroups"))
    assert gls("distance ~ age", orthodont()).fit().ngroups.empty


def test_ranef_condsd_is_the_conditional_covariance():
    """sd of b_i | y_i: diag(G - G Z_i' V_i^-1 Z_i G), per group with dense matrices; and lme4's condVar
    (memoe.lmm) for the same model to the optimisers' slack."""
    fit = lme_slope()
    data = memoe.datasets.load("sleepstudy")
    G = fit.ranef_cov.to_numpy()
    sd = fit.ranef_condsd["Subject"]
    for g in data["Subject"].cat.categories[:5]:
        days = data.loc[data["Subject"] == g, "Days"].to_numpy(dtype=float)
        Z = np.column_stack([np.ones_like(days), days])
        V = fit.marginal_covariance(g)
        expected = np.sqrt(np.diag(G - G @ Z.T @ np.linalg.solve(V, Z @ G)))
        np.testing.assert_allclose(sd.loc[g].to_numpy(), expected, rtol=EXACT)
    ref = memoe.lmm("Reaction ~ Days + (Days | Subject)", data).fit().ranef_condsd["Subject"]
    np.testing.assert_allclose(sd.to_numpy(), ref.to_numpy(), rtol=1e-4)


def test_singular():
    assert not lme_fit().singular and not gls_fit().singular
    # residuals demeaned within groups: the between-group variance estimate is exactly zero
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(12), 5)
    x = rng.normal(size=g.size)
    e = rng.normal(size=g.size)
    e -= np.bincount(g, weights=e)[g] / 5
    df = pd.DataFrame({"y": 1.0 + 0.5 * x + e, "x": x, "g": g.astype(str)})
    fit = lme("y ~ x + (1 | g)", df).fit()
    assert fit.singular
    assert fit.glance()["singular"].iloc[0]


# ---------------------------------------------------------------------------------------------- broom verbs
def test_tidy(fit):
    t = fit.tidy()
    assert list(t.columns) == TIDY_COLUMNS
    fixed = t[t["effect"] == "fixed"]
    np.testing.assert_array_equal(fixed["estimate"], fit.params)
    np.testing.assert_array_equal(fixed["std_error"], fit.coef_table()["std_error"])
    rp = t[t["effect"] == "ran_pars"].set_index("term")
    assert rp.loc["sd__Observation", "group"] == "Residual"
    assert rp.loc["sd__Observation", "estimate"] == fit.sigma
    assert rp.loc["Phi", "estimate"] == fit.cor_params["Phi"]
    if fit.kind == "lme":
        assert rp.loc["sd__(Intercept)", "group"] == "Subject"
        assert rp.loc["sd__(Intercept)", "estimate"] == pytest.approx(np.sqrt(fit.ranef_cov.iloc[0, 0]), rel=1e-15)
    else:
        assert rp.loc["varIdent(Sex=Female)", "estimate"] == fit.var_params["Female"]
    t2 = fit.tidy(conf_int=True, ddf="satterthwaite")
    assert list(t2.columns) == [*TIDY_COLUMNS, "conf_low", "conf_high"]


@pytest.mark.parametrize("which", ["gls", "slope"])
def test_tidy_ran_pars_intervals_are_nlmes(which):
    fit = gls_fit() if which == "gls" else lme_slope()
    t = fit.tidy(effects="ran_pars", conf_int=True, level=0.9).set_index("term")
    iv = fit.intervals(0.9)
    assert t.loc["sd__Observation", "conf_low"] == iv.loc[("sigma", "sigma"), "lower"]
    assert t.loc["Phi" if which == "gls" else "sd__Days", "conf_high"] == (
        iv.loc[("corStruct", "Phi"), "upper"] if which == "gls" else iv.loc[("reStruct", "sd(Days)"), "upper"]
    )
    if which == "gls":
        assert t.loc["varIdent(Sex=Female)", "conf_low"] == iv.loc[("varStruct", "Female"), "lower"]
        assert np.isnan(t.loc["varIdent(Sex=Male)", "conf_low"])  # the reference stratum's ratio is fixed
    else:
        assert t.loc["cor__(Intercept).Days", "conf_low"] == iv.loc[("reStruct", "cor((Intercept),Days)"), "lower"]
    assert np.all((t["conf_low"] <= t["estimate"]) | t["conf_low"].isna())


def test_tidy_random_correlation_names():
    rp = lme_slope().tidy(effects="ran_pars")
    assert rp["term"].tolist() == ["sd__(Intercept)", "sd__Days", "cor__(Intercept).Days", "sd__Observation"]
    assert rp["group"].tolist() == ["Subject"] * 3 + ["Residual"]


def test_glance(fit):
    gl = fit.glance()
    assert list(gl.columns) == GLANCE_COLUMNS and len(gl) == 1
    row = gl.iloc[0]
    assert row["nobs"] == 108 and row["ngroups"] == 27
    assert row["logLik"] == fit.loglik and row["AIC"] == fit.aic and row["BIC"] == fit.bic
    assert row["converged"] and not row["singular"]


def test_information_criteria_uses_nlmes_bic_convention(fit):
    ic = fit.information_criteria()
    assert ic["BIC"] == pytest.approx(fit.bic, rel=1e-14)
    assert ic["AIC"] == pytest.approx(fit.aic, rel=1e-14)


def test_augment_fitted_data(fit):
    aug = fit.augment()
    df = orthodont()
    assert aug.index.equals(df.index)
    np.testing.assert_array_equal(aug[".fitted"], fit.fitted)
    np.testing.assert_array_equal(aug[".resid"], fit.resid)
    np.testing.assert_array_equal(aug[".fixed"], fit.fitted_marginal)
    np.testing.assert_array_equal(aug["distance"], df["distance"])


def test_augment_newdata_and_dropped_rows():
    df = orthodont().copy()
    df.loc[[3, 50], "distance"] = np.nan
    fit = lme("distance ~ age + Sex + (1 | Subject)", df, correlation=AR1()).fit()
    aug = fit.augment()
    assert len(aug) == len(df) and aug.loc[[3, 50], ".fitted"].isna().all()
    new = orthodont().iloc[:10]
    aug_new = fit.augment(new)
    np.testing.assert_allclose(aug_new[".resid"], new["distance"] - aug_new[".fitted"], rtol=1e-15)
    np.testing.assert_allclose(aug_new[".fixed"], fit.predict(new, level=0), rtol=1e-15)


def test_predict_on_training_data_is_fitted(fit):
    df = orthodont()
    np.testing.assert_allclose(fit.predict(df), fit.fitted, rtol=1e-13)
    np.testing.assert_allclose(fit.predict(df, level=0), fit.fitted_marginal, rtol=1e-13)


# ---------------------------------------------------------------------------------------------- summary
def test_summary_object(fit):
    s = fit.summary()
    assert isinstance(s, Summary)
    assert str(s) == s.text() == repr(s)
    head = "Generalized least squares" if fit.kind == "gls" else "Linear mixed-effects model"
    assert s.text().startswith(head)
    tables = s.tables
    pd.testing.assert_frame_equal(tables["coefficients"], fit.coef_table())
    assert list(tables["fit"].columns) == ["AIC", "BIC", "logLik"]
    assert tables["correlation_structure"].loc["Phi", "estimate"] == fit.cor_params["Phi"]
    assert ("random_effects" in tables) == (fit.kind == "lme")
    assert ("variance_function" in tables) == (fit.kind == "gls")
    assert list(tables["residuals"].index) == ["Min", "Q1", "Med", "Q3", "Max"]
    html = s._repr_html_()
    assert html.startswith("<pre>") and "coefficients" in html


# ---------------------------------------------------------------------------------------------- inputs, persistence
@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_polars_and_pyarrow_input(kind):
    df = memoe.datasets.load("BodyWeight")
    if kind == "polars":
        pl = pytest.importorskip("polars")
        other = pl.from_pandas(df)
    else:
        pa = pytest.importorskip("pyarrow")
        other = pa.Table.from_pandas(df, preserve_index=False)
    ref = gls("weight ~ Time + Diet", df, correlation=CAR1("Time", "Rat")).fit()
    got = gls("weight ~ Time + Diet", other, correlation=CAR1("Time", "Rat")).fit()
    # the same table in another memory layout: only floating-point reassociation (a few ulps) may differ
    np.testing.assert_allclose(got.params, ref.params, rtol=1e-12)
    assert got.loglik == pytest.approx(ref.loglik, rel=1e-12)
    np.testing.assert_allclose(got.bse, ref.bse, rtol=1e-10)


def test_save_load_round_trip(fit, tmp_path):
    path = tmp_path / "fit.memoe"
    fit.save(path)
    back = memoe.load(path) if hasattr(memoe, "load") else memoe.persist.load(path)
    pd.testing.assert_series_equal(back.params, fit.params)
    pd.testing.assert_frame_equal(back.tidy(), fit.tidy())
    pd.testing.assert_frame_equal(back.glance(), fit.glance())

"""Saving and loading GLMM, gls / lme (residual structures) and GEE fits: same numbers, safe refusals."""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.gee import GEEResult
from memoe.glmm.families import Binomial, get_link
from memoe.glmm.result import GlmmResult
from memoe.marginal import AR1, CAR1, Symm, VarIdent
from memoe.marginal.result import MarginalResult
from memoe.marginal.satterthwaite import satterthwaite_df, satterthwaite_inputs
from memoe.persist import PersistenceError, load, save
from tests.unit.test_persist import close, rewrite, roundtrip


def same_record(a, b, what: str) -> None:
    """Two dataclass records (optimiser summary, convergence report) field by field, exactly."""
    assert type(a) is type(b), what
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, np.ndarray):
            np.testing.assert_array_equal(va, vb, err_msg=f"{what}.{f.name}")
        else:
            assert va == vb, f"{what}.{f.name}"


def saved_meta(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("meta.json"))


def saved_arrays(path) -> dict:
    with zipfile.ZipFile(path) as zf, np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def orth():
    return memoe.datasets.load("Orthodont")


@pytest.fixture(scope="module")
def cbpp():
    return memoe.datasets.load("cbpp")


# ---------------------------------------------------------------------------------------------- GEE
def assert_same_gee(a: GEEResult, b: GEEResult, newdata: pd.DataFrame) -> None:
    assert type(b) is GEEResult
    ma, mb = a.model, b.model
    assert (ma.formula, ma.group, ma.family, ma.link, ma.corstr, ma.time, ma.scale_fix) == (
        mb.formula, mb.group, mb.family, mb.link, mb.corstr, mb.time, mb.scale_fix
    )
    close(a.params, b.params, "params")
    close(a.vcov(), b.vcov(), "vcov")
    close(a.vcov(robust="naive"), b.vcov(robust="naive"), "vcov(naive)")
    close(a.bse, b.bse, "bse")
    close(a.scale, b.scale, "scale")
    np.testing.assert_array_equal(a.scale_se, b.scale_se)  # NaN when the scale is fixed
    close(a.alpha, b.alpha, "alpha")
    close(a.alpha_se, b.alpha_se, "alpha_se")
    close(a.vcov_alpha, b.vcov_alpha, "vcov_alpha")
    close(a.working_correlation, b.working_correlation, "working_correlation")
    close(a.fitted, b.fitted, "fitted")
    close(a.resid, b.resid, "resid")
    for kind in ("pearson", "working"):
        close(a.residuals(kind), b.residuals(kind), f"residuals({kind})")
    close(a.predict(), b.predict(), "predict()")
    close(a.predict(type="link"), b.predict(type="link"), "predict(link)")
    close(a.predict(newdata), b.predict(newdata), "predict(newdata)")
    close(a.predict(newdata, type="link"), b.predict(newdata, type="link"), "predict(newdata, link)")
    for robust in ("sandwich", "naive"):
        close(a.coef_table(robust=robust), b.coef_table(robust=robust), f"coef_table(robust={robust})")
    close(a.qic(), b.qic(), "qic")
    assert str(a.summary()) == str(b.summary())
    pd.testing.assert_series_equal(a.cluster_sizes, b.cluster_sizes)
    pd.testing.assert_series_equal(a.ngroups, b.ngroups)
    assert (a.nobs, a.max_cluster_size, a.n_dropped, a.converged, a.n_iter) == (
        b.nobs, b.max_cluster_size, b.n_dropped, b.converged, b.n_iter
    )


@pytest.mark.parametrize("corstr", ["exchangeable", "ar1"])
def test_gee_orthodont_round_trip(orth, corstr, tmp_path):
    fit = memoe.gee("distance ~ age * Sex", orth, group="Subject", corstr=corstr).fit()
    path = tmp_path / "gee.memoe"
    fit.save(path)  # the convenience method
    back = load(path)
    assert_same_gee(fit, back, orth.iloc[::9])
    # the rebuilt model is the same model: refitting it retraces the original iteration
    close(back.model.fit().params, fit.params, "refitted params")
    meta = saved_meta(path)
    assert meta["class"] == "GEEResult" and meta["model"]["corstr"] == corstr
    assert meta["estimates"]["alpha"] == {"alpha": float(fit.alpha.iloc[0])}
    # one source of truth: the estimates and the data, no stored covariance matrices
    assert not any("vbeta" in k or "valpha" in k for k in saved_arrays(path))


def test_gee_binomial_with_time_dropped_rows_and_scale_fix(orth, tmp_path):
    df = orth.assign(high=(orth["distance"] > 24).astype(float))
    df.index = pd.Index([f"r{i}" for i in range(len(df))], name="row")
    df.loc[["r5", "r40"], "high"] = np.nan
    fit = memoe.gee("high ~ age + Sex", df, group="Subject", family="binomial", corstr="ar1", time="age",
                    scale_fix=True).fit()
    assert fit.n_dropped == 2
    back = roundtrip(fit, tmp_path)
    assert_same_gee(fit, back, df.dropna().iloc[::11])
    assert back.fitted.index.equals(df.index) and np.isnan(back.fitted["r40"])


def test_gee_comparison_helper_detects_a_different_fit(orth):
    exch = memoe.gee("distance ~ age * Sex", orth, group="Subject", corstr="exchangeable").fit()
    ar1 = memoe.gee("distance ~ age * Sex", orth, group="Subject", corstr="ar1").fit()
    with pytest.raises(AssertionError):
        assert_same_gee(exch, ar1, orth.head(3))


def test_gee_refuses_tampered_estimates(orth, tmp_path):
    fit = memoe.gee("distance ~ age * Sex", orth, group="Subject", corstr="ar1").fit()
    path = tmp_path / "gee.memoe"
    save(fit, path)
    rewrite(path, arrays_edit=lambda a: a.update({"fit.alpha": a["fit.alpha"] * 0.5}))
    with pytest.raises(PersistenceError, match="standard errors"):
        load(path)


# ---------------------------------------------------------------------------------------------- gls / lme
def assert_same_marginal(a: MarginalResult, b: MarginalResult, newdata: pd.DataFrame, group) -> None:
    assert type(b) is MarginalResult and type(b.model) is type(a.model)
    assert (b.model.formula, b.model.correlation, b.model.weights) == (
        a.model.formula, a.model.correlation, a.model.weights
    )
    assert (a.kind, a.reml, a.method, a.feval, a.seconds, a.messages, a.converged) == (
        b.kind, b.reml, b.method, b.feval, b.seconds, b.messages, b.converged
    )
    np.testing.assert_array_equal(a.params_unconstrained, b.params_unconstrained)
    close(a.fixef, b.fixef, "fixef")
    close(a.sigma, b.sigma, "sigma")
    close(a.params, b.params, "params")
    close(a.vcov(), b.vcov(), "vcov")
    close(a.vcov_tests, b.vcov_tests, "vcov_tests")
    for t in ("CR0", "CR2"):
        close(a.vcov(robust=t), b.vcov(robust=t), f"vcov(robust={t})")
    close(a.bse, b.bse, "bse")
    close(a.theta, b.theta, "theta")
    close(a.cor_params, b.cor_params, "cor_params")
    close(a.var_params, b.var_params, "var_params")
    close(a.ranef_cov, b.ranef_cov, "ranef_cov")
    close(a.varcorr, b.varcorr, "varcorr")
    assert a.ranef.keys() == b.ranef.keys()
    for g in a.ranef:
        close(a.ranef[g], b.ranef[g], f"ranef[{g}]")
        close(a.ranef_condsd[g], b.ranef_condsd[g], f"ranef_condsd[{g}]")
    close(a.residual_correlation(group), b.residual_correlation(group), "residual_correlation")
    close(a.marginal_covariance(group), b.marginal_covariance(group), "marginal_covariance")
    close([a.loglik, a.aic, a.bic], [b.loglik, b.aic, b.bic], "loglik, aic, bic")
    for name in ("fitted", "resid", "fitted_marginal"):
        close(getattr(a, name), getattr(b, name), name)
    for t in a.residual_types:
        close(a.residuals(t), b.residuals(t), f"residuals({t})")
    levels = (0, 1) if a.kind == "lme" else (0,)
    for level in levels:
        new = dict(level=level, allow_new_levels=True)
        close(a.predict(newdata, **new), b.predict(newdata, **new), f"predict(level={level})")
        close(a.predict(level=level), b.predict(level=level), f"predict(level={level}) of the data")
    close(a.df_coef, b.df_coef, "df_coef")
    close(a.coef_table(), b.coef_table(), "coef_table")
    for t in ("sequential", "marginal"):
        close(a.anova(t), b.anova(t), f"anova({t})")
    close(a.intervals(), b.intervals(), "intervals")
    close(a.confint(), b.confint(), "confint")
    L = np.eye(a.design.p)
    df_a, df_b = (satterthwaite_df(satterthwaite_inputs(f), L) for f in (a, b))
    close(df_a, df_b, "Satterthwaite df")
    assert str(a.summary()) == str(b.summary())
    assert (a.nobs, a.n_dropped, a.df_model, a.singular) == (b.nobs, b.n_dropped, b.df_model, b.singular)
    pd.testing.assert_series_equal(a.ngroups, b.ngroups)


def test_gls_car1_bodyweight_round_trip(tmp_path):
    bw = memoe.datasets.load("BodyWeight")
    fit = memoe.gls("weight ~ Time * Diet", bw, correlation=CAR1("Time", "Rat")).fit(reml=True)
    path = tmp_path / "bw.memoe"
    fit.save(path)
    back = load(path)
    assert_same_marginal(fit, back, bw.iloc[::13], group=bw["Rat"].iloc[0])
    close(back.model.fit(reml=True).loglik, fit.loglik, "refitted loglik")
    meta = saved_meta(path)
    assert meta["model"]["class"] == "GLS"
    assert meta["model"]["correlation"] == {"class": "CAR1", "fields": {"time": "Time", "group": "Rat"}}
    assert meta["model"]["weights"] is None


@pytest.mark.parametrize("reml", [True, False])
def test_lme_ar1_ovary_round_trip(reml, tmp_path):
    ovary = memoe.datasets.load("Ovary")
    f = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)"
    fit = memoe.lme(f, ovary, correlation=AR1()).fit(reml=reml)
    back = roundtrip(fit, tmp_path)
    newdata = ovary.iloc[::17].copy()
    newdata["Mare"] = newdata["Mare"].astype(str)
    newdata.iloc[0, newdata.columns.get_loc("Mare")] = "new mare"
    assert_same_marginal(fit, back, newdata, group=ovary["Mare"].iloc[0])
    assert type(back.model) is memoe.marginal.LME


def test_gls_symm_varident_orthodont_round_trip_with_dropped_rows(orth, tmp_path):
    df = orth.copy()
    df.loc[[4, 50], "distance"] = np.nan
    fit = memoe.gls("distance ~ C(age) * Sex", df, correlation=Symm("Subject", visit="age"),
                    weights=VarIdent("Sex")).fit()
    assert fit.n_dropped == 2
    back = roundtrip(fit, tmp_path)
    assert_same_marginal(fit, back, orth.iloc[::7], group=orth["Subject"].iloc[0])
    assert back.model.weights == VarIdent("Sex") and back.model.correlation == Symm("Subject", visit="age")
    assert np.isnan(back.fitted[50]) and back.fitted.index.equals(df.index)


def test_marginal_comparison_helper_detects_a_different_fit():
    bw = memoe.datasets.load("BodyWeight")
    model = memoe.gls("weight ~ Time * Diet", bw, correlation=CAR1("Time", "Rat"))
    with pytest.raises(AssertionError):
        assert_same_marginal(model.fit(reml=True), model.fit(reml=False), bw.head(3), group=bw["Rat"].iloc[0])


def test_marginal_refuses_tampered_parameters_and_unknown_structures(orth, tmp_path):
    fit = memoe.gls("distance ~ age * Sex", orth, correlation=AR1("Subject")).fit()
    path = tmp_path / "g.memoe"
    save(fit, path)
    rewrite(path, arrays_edit=lambda a: a.update({"fit.params": a["fit.params"] + 0.1}))
    with pytest.raises(PersistenceError, match="log-likelihood"):
        load(path)
    save(fit, path)

    def rename(meta):
        meta["model"]["correlation"]["class"] = "os.system"

    rewrite(path, meta_edit=rename)
    with pytest.raises(PersistenceError, match=r"unknown correlation structure 'os\.system'"):
        load(path)


def test_marginal_refuses_to_save_a_structure_it_cannot_rebuild(orth, tmp_path):
    @dataclasses.dataclass(frozen=True)
    class MyAR1(AR1):
        pass

    fit = memoe.gls("distance ~ age * Sex", orth, correlation=MyAR1("Subject")).fit()
    with pytest.raises(PersistenceError, match="not one of memoe's structures"):
        save(fit, tmp_path / "x.memoe")
    assert not (tmp_path / "x.memoe").exists()


# ---------------------------------------------------------------------------------------------- GLMM
def assert_same_glmm(a: GlmmResult, b: GlmmResult, newdata: pd.DataFrame) -> None:
    assert type(b) is GlmmResult and b.model.formula == a.model.formula
    assert (str(a.response_family), a.nAGQ, a.method, a.singular, a.converged, a.messages, a.vcov_source) == (
        str(b.response_family), b.nAGQ, b.method, b.singular, b.converged, b.messages, b.vcov_source
    )
    close(a.fixef, b.fixef, "fixef")
    close(a.params, b.params, "params")
    close(a.theta, b.theta, "theta")
    close(a.vcov(), b.vcov(), "vcov")
    close(a.vcov_rx, b.vcov_rx, "vcov_rx")
    if a.vcov_hessian is None:
        assert b.vcov_hessian is None
    else:
        close(a.vcov_hessian, b.vcov_hessian, "vcov_hessian")
    close(a.bse, b.bse, "bse")
    close(a.varcorr, b.varcorr, "varcorr")
    close([a.criterion, a.loglik, a.deviance, a.aic, a.bic], [b.criterion, b.loglik, b.deviance, b.aic, b.bic],
          "criteria")
    assert a.ranef.keys() == b.ranef.keys()
    for g in a.ranef:
        close(a.ranef[g], b.ranef[g], f"ranef[{g}]")
        close(a.ranef_condsd[g], b.ranef_condsd[g], f"ranef_condsd[{g}]")
    close(a.fitted, b.fitted, "fitted")
    close(a.linear_predictor, b.linear_predictor, "linear_predictor")
    close(a.resid, b.resid, "resid")
    for t in ("deviance", "pearson", "response", "working"):
        close(a.residuals(t), b.residuals(t), f"residuals({t})")
    close(a.coef_table(), b.coef_table(), "coef_table")
    close(a.predict(), b.predict(), "predict()")
    close(a.predict(newdata), b.predict(newdata), "predict(newdata)")
    close(a.predict(newdata, re_form=None, type="link"), b.predict(newdata, re_form=None, type="link"),
          "predict(newdata, re_form=None, link)")
    assert str(a.summary()) == str(b.summary())
    assert (a.nobs, a.n_dropped, a.df_model) == (b.nobs, b.n_dropped, b.df_model)
    pd.testing.assert_series_equal(a.ngroups, b.ngroups)
    same_record(a.convergence, b.convergence, "convergence")
    for stage in ("stage1", "stage2"):
        sa, sb = getattr(a, stage), getattr(b, stage)
        assert (sa is None) == (sb is None), stage
        if sa is not None:
            same_record(sa.opt, sb.opt, f"{stage}.opt")
            np.testing.assert_array_equal(sa.theta, sb.theta)
            np.testing.assert_array_equal(sa.beta, sb.beta)
    if a.hessian is None:
        assert b.hessian is None
    else:
        np.testing.assert_array_equal(a.hessian, b.hessian)
    assert a.model.data_name == b.model.data_name


CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.mark.parametrize("nAGQ", [1, 9, 0])
def test_glmm_cbpp_round_trip(cbpp, nAGQ, tmp_path):
    fit = memoe.glmm(CBPP, cbpp, "binomial").fit(nAGQ=nAGQ)
    path = tmp_path / "cbpp.memoe"
    fit.save(path)  # the convenience method
    back = load(path)
    assert_same_glmm(fit, back, cbpp.iloc[::5])
    close(back.model.fit(nAGQ=nAGQ).fixef, fit.fixef, "refitted fixef")
    meta = saved_meta(path)
    assert meta["model"]["family"] == {"name": "binomial", "link": "logit"} and meta["fit"]["nAGQ"] == nAGQ


def test_glmm_grouseticks_poisson_round_trip(tmp_path):
    ticks = memoe.datasets.load("grouseticks")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes are recorded on the fit and compared
        fit = memoe.glmm("TICKS ~ YEAR + HEIGHT_scaled + (1 | BROOD) + (1 | LOCATION)", ticks, "poisson").fit()
    back = roundtrip(fit, tmp_path)
    assert_same_glmm(fit, back, ticks.iloc[::37])
    assert list(back.ngroups.index) == ["BROOD", "LOCATION"]


def test_glmm_probit_weights_offsets_and_dropped_rows(cbpp, tmp_path):
    df = cbpp.assign(prop=cbpp["incidence"] / cbpp["size"], lsize=np.log(cbpp["size"]))
    df.loc[[3, 30], "prop"] = np.nan
    fam = Binomial(link=get_link("probit"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = memoe.glmm("prop ~ period + offset(lsize / 10) + (1 | herd)", df, fam, weights="size",
                         offset=np.linspace(-0.1, 0.1, len(df))).fit()
    assert fit.n_dropped == 2
    back = roundtrip(fit, tmp_path)
    assert back.response_family.link.name == "probit"
    np.testing.assert_array_equal(back.model.gdesign.offset, fit.model.gdesign.offset)
    np.testing.assert_array_equal(back.model.gdesign.prior_weights, fit.model.gdesign.prior_weights)
    assert_same_glmm(fit, back, df.dropna().iloc[::6])
    assert np.isnan(back.fitted[30]) and back.fitted.index.equals(df.index)


def test_glmm_offset_argument_with_two_offset_terms(cbpp, tmp_path):
    """An offset= argument on top of several offset(...) terms, where the argument cannot be recovered
    bit for bit from the total: the loaded model uses the saved total."""
    df = cbpp.assign(lsize=np.log(cbpp["size"]), k=np.arange(len(cbpp)) / 7.0)
    t1, t2 = df["lsize"].to_numpy() / 10, df["k"].to_numpy() / 3
    rng = np.random.default_rng(0)
    arg = rng.uniform(-0.5, 0.5, len(df))
    total = (arg + t1) + t2
    assert np.any(((total - (t1 + t2)) + t1) + t2 != total)  # the case this test is about
    fit = memoe.glmm("cbind(incidence, size - incidence) ~ period + offset(lsize / 10) + offset(k / 3) + (1 | herd)",
                     df, "binomial", offset=arg).fit()
    np.testing.assert_array_equal(fit.model.gdesign.offset, total)
    back = roundtrip(fit, tmp_path)
    np.testing.assert_array_equal(back.model.gdesign.offset, total)
    assert_same_glmm(fit, back, df.iloc[::4])


def test_glmm_result_at_round_trip(cbpp, tmp_path):
    model = memoe.glmm(CBPP, cbpp, "binomial")
    fit = model.result_at([0.6], [-1.4, -1.0, -1.1, -1.6])
    back = roundtrip(fit, tmp_path)
    assert back.stage1 is None and back.stage2 is None
    assert_same_glmm(fit, back, cbpp.head(4))


def test_glmm_comparison_helper_detects_a_different_fit(cbpp):
    model = memoe.glmm(CBPP, cbpp, "binomial")
    with pytest.raises(AssertionError):
        assert_same_glmm(model.fit(nAGQ=1), model.fit(nAGQ=5), cbpp.head(3))


def test_glmm_refuses_tampered_estimates_and_unknown_family(cbpp, tmp_path):
    fit = memoe.glmm(CBPP, cbpp, "binomial").fit()
    path = tmp_path / "g.memoe"
    save(fit, path)
    rewrite(path, arrays_edit=lambda a: a.update({"fit.beta": a["fit.beta"] + 0.01}))
    with pytest.raises(PersistenceError, match="log-likelihood"):
        load(path)
    save(fit, path)
    rewrite(path, meta_edit=lambda m: m["model"]["family"].update(name="gamma"))
    with pytest.raises(PersistenceError, match="unknown family 'gamma'"):
        load(path)


def test_glmm_refuses_to_save_a_family_it_cannot_rebuild(cbpp, tmp_path):
    @dataclasses.dataclass(frozen=True)
    class MyBinomial(Binomial):
        pass

    fit = memoe.glmm(CBPP, cbpp, MyBinomial()).fit()
    with pytest.raises(PersistenceError, match="not one of memoe's families"):
        save(fit, tmp_path / "x.memoe")
    assert not (tmp_path / "x.memoe").exists()

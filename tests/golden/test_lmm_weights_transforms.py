"""Golden tests of lme4 prior weights and offsets, stateful formula transforms and ``||`` with a factor.

References: ``tools/reference/cases/lmm_weights_transforms.R`` on ``tests/data/sleep_weighted.csv``
(sleepstudy plus simulated weights ``w``, offset ``o``, a within-subject factor ``phase`` and
``fday = factor(Days)``). As in the other golden tests, the optimum (log-likelihood, fixed effects,
theta) is compared with lme4's tight refit, and quantities lme4 reports at its default fit (vcov,
fitted values, residuals, predictions, lmerTest tables) with ours evaluated at lme4's default theta.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.lmm.result import LmmResult
from tests.conftest import r_matrix

DATA = Path(__file__).resolve().parents[1] / "data"
# case -> (formula, memoe.lmm keyword arguments, REML)
CASES = {
    "lmm_weights_offset_reml": ("Reaction ~ Days + offset(o) + (Days | Subject)", {"weights": "w"}, True),
    "lmm_weights_offset_ml": ("Reaction ~ Days + offset(o) + (Days | Subject)", {"weights": "w"}, False),
    "lmm_weights_crossed_reml": ("Reaction ~ Days + (1 | Subject) + (1 | fday)", {"weights": "w", "offset": "o"}, True),
    "lmm_weights_only_ml": ("Reaction ~ Days + (Days || Subject)", {"weights": "w"}, False),
    "lmm_weights_factor_reml": ("Reaction ~ Days * phase + (1 | Subject)", {"weights": "w"}, True),
    "lmm_poly_reml": ("Reaction ~ poly(Days, 2) + (Days | Subject)", {}, True),
    "lmm_scale_ml": ("Reaction ~ scale(Days) + (scale(Days) | Subject)", {}, False),
    "lmm_doublebar_factor_reml": ("Reaction ~ Days + phase + (Days + phase || Subject)", {}, True),
}
WEIGHTED = sorted(c for c in CASES if "weights" in c)


def reference(case: str) -> dict:
    return json.loads((DATA / f"{case}.json").read_text())


def _categorical(values, spec: dict) -> pd.Categorical:
    return pd.Categorical([str(v) for v in values], categories=[str(x) for x in spec["levels"]],
                          ordered=bool(spec["ordered"]))


def reference_data(case: str) -> pd.DataFrame:
    meta = reference(case)
    df = pd.read_csv(DATA / meta["dataset"])
    cols = meta["data"]["columns"]
    assert list(df.columns) == list(cols) and len(df) == meta["data"]["nrow"]
    for c, spec in cols.items():
        if spec["type"] == "factor":
            df[c] = _categorical(df[c], spec)
    return df


def newdata(case: str) -> pd.DataFrame:
    """R's prediction rows (factor columns as plain strings: levels are matched by value)."""
    return pd.DataFrame(reference(case)["predictions"]["newdata"])


_FITS: dict = {}


def fitted(case: str):
    if case not in _FITS:
        formula, kwargs, reml = CASES[case]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _FITS[case] = memoe.lmm(formula, reference_data(case), **kwargs).fit(reml=reml)
    return _FITS[case]


def at_reference_theta(case: str) -> LmmResult:
    fit = fitted(case)
    theta = pd.Series(reference(case)["results"]["theta"])[fit.theta.index].to_numpy()
    return LmmResult(fit.model, fit.reml, theta, fit.opt, fit.convergence, fit.singular, fit.messages)


def _rel(a, b, floor=1.0) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), floor)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_loglik_estimates_and_names(case):
    r = reference(case)["results"]
    tight = r["tight_refit"]
    fit = fitted(case)
    # lme4's logLik with weights includes 0.5 sum(log w) (its deviance subtracts ldW)
    assert abs(fit.loglik - tight["loglik"]) < 1e-6
    assert fit.df_model == r["df"] and fit.nobs == r["nobs"]
    assert list(fit.fixef.index) == list(r["fixef"])
    assert list(fit.theta.index) == list(r["theta"])
    fe = pd.Series(tight["fixef"])
    assert _rel(fit.fixef[fe.index], fe) < 1e-5
    at_ref = at_reference_theta(case)
    assert _rel(at_ref.fixef[list(r["fixef"])], pd.Series(r["fixef"])) < 1e-6
    assert abs(at_ref.sigma - r["sigma"]) / r["sigma"] < 1e-6
    vc = r_matrix(r["vcov"])
    # entries that are zero in exact arithmetic (orthogonal poly columns) compare on the matrix's scale
    floor = 1e-6 * np.abs(vc.to_numpy()).max()
    assert _rel(at_ref.vcov().loc[vc.index, vc.columns].to_numpy(), vc.to_numpy(), floor) < 1e-5
    se = np.sqrt(np.diag(vc.to_numpy()))
    assert _rel(at_ref.bse[vc.index], se) < 1e-4


@pytest.mark.parametrize("case", sorted(CASES))
def test_fitted_residuals_predictions(case):
    ref = reference(case)
    r, pred = ref["results"], ref["predictions"]
    at_ref = at_reference_theta(case)
    # fitted = mu (offset included), residuals(fit) = y - mu (lme4's default type "response")
    assert _rel(at_ref.fitted.to_numpy(), r["fitted"]) < 1e-6
    assert np.max(np.abs(at_ref.resid.to_numpy() - r["residuals"])) < 1e-6 * np.max(np.abs(r["fitted"]))
    nd = newdata(case)
    # the formula's offset(o) is evaluated on the new rows; offset= and weights are not replayed (lme4)
    assert _rel(at_ref.predict(nd, re_form=None), pred["population"]) < 1e-6
    assert _rel(at_ref.predict(nd), pred["conditional"]) < 1e-6
    if "residuals_pearson" in ref:
        scale = np.max(np.abs(r["fitted"]))
        # lme4's pearson residuals sqrt(w) (y - mu); memoe's are scaled by sigma (lme4's scaled = TRUE)
        pearson = at_ref.residuals("pearson").to_numpy() * at_ref.sigma
        assert np.max(np.abs(pearson - ref["residuals_pearson"])) < 1e-6 * scale
        assert np.max(np.abs(at_ref.residuals("response").to_numpy() - ref["residuals_response"])) < 1e-6 * scale


@pytest.mark.parametrize("case", [c for c in WEIGHTED if c != "lmm_weights_only_ml"])
def test_weighted_satterthwaite(case):
    r = reference(case)["results"]
    at_ref = at_reference_theta(case)
    tab = at_ref.coef_table(ddf="satterthwaite")
    ref = pd.DataFrame(r["satterthwaite"]["coef"]).set_index("term")
    assert _rel(tab["std_error"], ref["std_error"], 1e-8) < 1e-4
    assert _rel(tab["df"], ref["df"]) < 1e-4
    for kind in (1, 3):
        aov = at_ref.anova(type=kind)
        ref_aov = pd.DataFrame(r["satterthwaite"][f"anova_type{kind}"]).set_index("term")
        assert list(aov.index) == list(ref_aov.index)
        assert _rel(aov["F value"], ref_aov["f_value"]) < 1e-4
        assert _rel(aov["DenDF"], ref_aov["den_df"]) < 1e-4


@pytest.mark.parametrize("case", WEIGHTED)
def test_weighted_save_load_and_summary(case):
    fit = fitted(case)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fit.memoe")
        fit.save(path)
        back = memoe.load(path)
    assert back.loglik == pytest.approx(fit.loglik, abs=1e-9)
    np.testing.assert_allclose(back.fitted.to_numpy(), fit.fitted.to_numpy(), rtol=1e-10)
    nd = newdata(case)
    np.testing.assert_allclose(back.predict(nd).to_numpy(), fit.predict(nd).to_numpy(), rtol=1e-10)
    text = str(fit.summary())
    assert "Weights: w" in text
    if "offset" in case or "crossed" in case:
        assert ("Offset: o" in text) or ("offset(o)" in text)


@pytest.mark.parametrize("case", ["lmm_poly_reml", "lmm_scale_ml"])
def test_transforms_replay_after_load(case):
    fit = fitted(case)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fit.memoe")
        fit.save(path)
        back = memoe.load(path)
    nd = newdata(case)
    pred = reference(case)["predictions"]
    np.testing.assert_allclose(back.predict(nd, re_form=None).to_numpy(), fit.predict(nd, re_form=None).to_numpy(),
                               rtol=1e-12)
    # the learned state (poly's alpha/norms, scale's centre and SD) comes from the fitting data:
    # predicting one new row alone must give the same value as within a batch
    one = back.predict(nd.iloc[[2]], re_form=None).to_numpy()[0]
    assert one == pytest.approx(back.predict(nd, re_form=None).to_numpy()[2], rel=1e-12)
    assert _rel(at_reference_theta(case).predict(nd, re_form=None), pred["population"]) < 1e-6


def test_unit_weights_and_zero_offset_change_nothing():
    df = reference_data("lmm_weights_offset_ml")
    base = memoe.lmm("Reaction ~ Days + (Days | Subject)", df).fit(reml=False)
    df = df.assign(one=1.0, zero=0.0)
    same = memoe.lmm("Reaction ~ Days + offset(zero) + (Days | Subject)", df, weights="one").fit(reml=False)
    assert same.loglik == pytest.approx(base.loglik, abs=1e-8)
    np.testing.assert_allclose(same.fixef, base.fixef, rtol=1e-8)


def test_weights_array_equals_column_and_scaling_weights_rescales_sigma():
    df = reference_data("lmm_weights_offset_ml")
    a = memoe.lmm("Reaction ~ Days + (Days | Subject)", df, weights="w").fit(reml=False)
    b = memoe.lmm("Reaction ~ Days + (Days | Subject)", df, weights=df["w"].to_numpy()).fit(reml=False)
    assert a.loglik == pytest.approx(b.loglik, abs=1e-9)
    # w -> 4 w: sigma -> 2 sigma, the same beta, loglik shifts by 0.5 n log 4 - n log 2 = 0
    c = memoe.lmm("Reaction ~ Days + (Days | Subject)", df, weights=4 * df["w"].to_numpy()).fit(reml=False)
    assert c.sigma == pytest.approx(2 * a.sigma, rel=1e-6)
    np.testing.assert_allclose(c.fixef, a.fixef, rtol=1e-6)
    assert c.loglik == pytest.approx(a.loglik, abs=1e-6)


def test_weighted_profile_intervals_of_the_variance_parameters():
    """lme4's profile of a weighted ML fit: the variance parameters agree; lme4's fixed-effect rows do not.

    lme4 1.1.31 profiles a fixed effect of a weighted fit to an interval ~25x narrower than its own
    Wald interval (Days: [10.592, 10.690] with SE 1.67): its fixed-effect profile does not carry the
    prior weights. memoe's profile of the fixed effects agrees with the Wald interval instead.
    """
    case = "lmm_weights_offset_ml"
    ref = pd.DataFrame(reference(case)["results"]["confint_profile"]["table"]).set_index("param")
    fit = fitted(case)
    ci = fit.confint(method="profile")
    varpar = [p for p in ref.index if p.startswith(("sd_", "cor_")) or p == "sigma"]
    # lme4 interpolates zeta with splines: its limits are off by up to ~5e-5 (relative)
    assert np.max(np.abs(ci.loc[varpar, "lower"] - ref.loc[varpar, "lower"]) / np.abs(ref.loc[varpar, "lower"])) < 1e-3
    assert np.max(np.abs(ci.loc[varpar, "upper"] - ref.loc[varpar, "upper"]) / np.abs(ref.loc[varpar, "upper"])) < 1e-3
    wald = fit.confint(method="wald")
    for name in ["(Intercept)", "Days"]:
        width, wald_width = ci.loc[name].diff().iloc[-1], wald.loc[name].diff().iloc[-1]
        assert 0.9 < width / wald_width < 1.1


def test_weighted_kenward_roger_is_pbkrtest_on_the_whitened_model():
    """pbkrtest ignores prior weights (its V has an identity residual block), so the reference is pbkrtest's
    KR of the same model written on whitened rows without weights (``lmm_weights_whitened_reml``)."""
    white = reference("lmm_weights_whitened_reml")["results"]
    at_ref = at_reference_theta("lmm_weights_offset_reml")
    # the whitened fit has the weighted fit's theta (its optimum differs only by optimiser slack)
    theta_w = np.array(list(white["theta"].values()))
    fit = fitted("lmm_weights_offset_reml")
    at_white = LmmResult(fit.model, True, theta_w, fit.opt, fit.convergence, fit.singular, fit.messages)
    kr = at_white.coef_table(ddf="kenward-roger")
    ref = pd.DataFrame(white["kenward_roger"]["coef"]).set_index("term")
    assert _rel(kr["estimate"], ref["estimate"]) < 1e-6
    assert _rel(kr["std_error"], ref["std_error"], 1e-8) < 1e-4
    assert _rel(kr["df"], ref["df"]) < 1e-4
    # and the weighted fit's log-likelihood is the whitened one's plus 0.5 sum(log w)
    w = reference_data("lmm_weights_offset_reml")["w"].to_numpy()
    assert abs(at_white.loglik - (white["loglik"] + 0.5 * np.log(w).sum())) < 1e-6
    assert at_ref.coef_table(ddf="kenward-roger")["df"].notna().all()


def test_summary_scaled_residuals_are_lme4s_weighted_pearson():
    ref = reference("lmm_weights_offset_reml")
    at_ref = at_reference_theta("lmm_weights_offset_reml")
    q = np.quantile(np.array(ref["residuals_pearson"]) / ref["results"]["sigma"], [0, 0.25, 0.5, 0.75, 1])
    line = str(at_ref.summary()).split("Scaled residuals:")[1].strip().splitlines()[1]
    np.testing.assert_allclose([float(v) for v in line.split()], q, atol=6e-5)

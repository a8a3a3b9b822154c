"""Fitting GLMMs: parameter recovery on simulated data, invariances, offsets, checks and warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

import memoe
from memoe.errors import ConvergenceWarning, SingularFitWarning
from memoe.glmm import GlmmControl, get_family, glmm

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


def simulate_logistic(seed: int, groups: int = 150, per: int = 30, beta=(-0.5, 1.0), sd: float = 0.8):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per)
    x = rng.standard_normal(groups * per)
    b = rng.normal(0, sd, groups)
    p = special.expit(beta[0] + beta[1] * x + b[g])
    return pd.DataFrame({"y": (rng.random(len(p)) < p).astype(float), "x": x, "g": g.astype(str)})


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    return memoe.datasets.load("cbpp")


@pytest.fixture(scope="module")
def cbpp_fit(cbpp):
    return glmm(CBPP, cbpp).fit()


def test_simulated_logistic_glmm_recovers_parameters():
    df = simulate_logistic(11)
    fit = glmm("y ~ x + (1 | g)", df).fit()
    assert fit.converged and not fit.singular
    # truth (-0.5, 1.0) within 3 standard errors, and the SEs are of the expected size
    z = (fit.fixef.to_numpy() - np.array([-0.5, 1.0])) / fit.bse.to_numpy()
    assert np.all(np.abs(z) < 3), z
    assert 0.03 < fit.bse["x"] < 0.08
    assert abs(fit.theta.iloc[0] - 0.8) < 0.2
    # Hessian- and RX-based SEs agree closely for a well-determined model
    np.testing.assert_allclose(fit.bse, np.sqrt(np.diag(fit.vcov_rx)), rtol=0.05)
    # BLUPs shrink but track the simulated group effects
    b = fit.ranef["g"]["(Intercept)"]
    assert b.std() < 0.8 and len(b) == 150


def test_random_slopes_model():
    rng = np.random.default_rng(5)
    df = simulate_logistic(5, groups=80, per=40)
    slope = rng.normal(0, 0.5, 80)
    df["y"] = (rng.random(len(df)) < special.expit(-0.3 + (1 + slope[df.g.astype(int)]) * df.x)).astype(float)
    fit = glmm("y ~ x + (x | g)", df).fit()
    assert list(fit.theta.index) == ["g.(Intercept)", "g.x.(Intercept)", "g.x"]
    vc = fit.varcorr
    assert len(vc) == 3 and vc.var2.notna().sum() == 1
    assert abs(float(vc.sdcor[(vc.var1 == "x") & vc.var2.isna()].iloc[0]) - 0.5) < 0.25
    assert "Corr" in str(fit.summary())


def test_poisson_offset_recovers_rates_and_shifts_intercept():
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(60), 12)
    exposure = rng.uniform(0.5, 5, len(g))
    x = rng.standard_normal(len(g))
    b = rng.normal(0, 0.5, 60)
    y = rng.poisson(exposure * np.exp(0.2 + 0.5 * x + b[g]))
    df = pd.DataFrame({"y": y, "x": x, "g": g.astype(str), "logE": np.log(exposure)})
    fit = glmm("y ~ x + (1 | g)", df, "poisson", offset="logE").fit()
    assert abs(fit.fixef["x"] - 0.5) < 3 * fit.bse["x"]
    assert abs(fit.fixef["(Intercept)"] - 0.2) < 3 * fit.bse["(Intercept)"]
    # a constant offset c only moves the intercept by -c
    base = glmm("y ~ x + (1 | g)", df, "poisson").fit()
    shifted = glmm("y ~ x + (1 | g)", df, "poisson", offset=np.full(len(df), 0.7)).fit()
    assert shifted.fixef["(Intercept)"] == pytest.approx(base.fixef["(Intercept)"] - 0.7, abs=1e-5)
    assert shifted.fixef["x"] == pytest.approx(base.fixef["x"], abs=1e-5)
    assert shifted.loglik == pytest.approx(base.loglik, abs=1e-7)
    # R's formula syntax gives the same fit as the argument
    in_formula = glmm("y ~ x + offset(np.log(E)) + (1 | g)", df.assign(E=exposure), "poisson").fit()
    assert in_formula.loglik == pytest.approx(fit.loglik, abs=1e-8)
    assert in_formula.model.gdesign.offset_terms == ("np.log(E)",)
    assert list(in_formula.fixef.index) == ["(Intercept)", "x"]


def test_row_order_and_level_labels_do_not_matter(cbpp, cbpp_fit):
    perm = np.random.default_rng(0).permutation(len(cbpp))
    df = cbpp.iloc[perm].reset_index(drop=True)
    df["herd"] = df["herd"].cat.reorder_categories(list(reversed(df["herd"].cat.categories)))
    fit = glmm(CBPP, df).fit()
    assert fit.loglik == pytest.approx(cbpp_fit.loglik, abs=1e-7)
    np.testing.assert_allclose(fit.fixef, cbpp_fit.fixef, rtol=1e-5)
    a = fit.ranef["herd"].sort_index()
    b = cbpp_fit.ranef["herd"].sort_index()
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-5)


def test_nagq0_stage_only(cbpp, cbpp_fit):
    fit = glmm(CBPP, cbpp).fit(nAGQ=0)
    assert fit.method == "nAGQ=0" and fit.stage2 is None
    assert fit.vcov_source == "RX"
    assert abs(fit.theta.iloc[0] - cbpp_fit.theta.iloc[0]) < 0.05
    np.testing.assert_allclose(fit.fixef, cbpp_fit.fixef, atol=0.1)
    # nAGQ = 0 optimises less, so the Laplace log-likelihood cannot be higher
    assert fit.loglik <= cbpp_fit.loglik + 1e-9
    assert "nAGQ = 0" in str(fit.summary())


def test_singular_fit_is_flagged():
    # every group has the same outcomes: no between-group variance
    df = pd.DataFrame({"y": [0, 1, 1, 0, 0, 1, 0, 0] * 10, "g": np.repeat([str(i) for i in range(10)], 8)})
    with pytest.warns(SingularFitWarning):
        fit = glmm("y ~ 1 + (1 | g)", df).fit()
    assert fit.singular and fit.theta.iloc[0] < 1e-4
    assert any("singular" in m for m in fit.messages)
    assert fit.ranef["g"].abs().to_numpy().max() < 1e-3


@pytest.mark.parametrize("maxeval, optimizer", [(8, "bobyqa"), (3, "auto")])
def test_convergence_warning_when_stopped_early(cbpp, maxeval, optimizer):
    # the quasi-Newton stages reach cbpp's optimum in 8 evaluations each: 3 stops them (BOBYQA then takes over)
    with pytest.warns(ConvergenceWarning, match="failed to converge"):
        fit = glmm(CBPP, cbpp).fit(control=GlmmControl(maxeval=maxeval, optimizer=optimizer))
    assert not fit.converged


def test_residuals_and_coef_table(cbpp_fit):
    P = cbpp_fit.model.problem
    mu = cbpp_fit.fitted.to_numpy()
    pearson = cbpp_fit.residuals("pearson").to_numpy()
    np.testing.assert_allclose(pearson, (P.y - mu) * np.sqrt(P.wt) / np.sqrt(mu * (1 - mu)))
    dev = cbpp_fit.residuals().to_numpy()
    assert (dev**2).sum() == pytest.approx(cbpp_fit.deviance, rel=1e-12)
    assert np.all(np.sign(dev) == np.sign(P.y - mu))
    np.testing.assert_allclose(cbpp_fit.residuals("response"), P.y - mu)
    with pytest.raises(memoe.errors.MemoeError, match="studentized"):
        cbpp_fit.residuals("studentized")
    ct = cbpp_fit.coef_table()
    assert list(ct.columns) == ["estimate", "std_error", "statistic", "df", "p_value"]
    assert ct.attrs["statistic"] == "z" and np.all(np.isinf(ct["df"]))
    np.testing.assert_allclose(ct["p_value"], 2 * stats.norm.sf(np.abs(ct["statistic"])))


def test_result_at_reproduces_the_fit(cbpp, cbpp_fit):
    res = glmm(CBPP, cbpp).result_at(cbpp_fit.theta.to_numpy(), cbpp_fit.fixef.to_numpy())
    assert res.loglik == pytest.approx(cbpp_fit.loglik, abs=1e-9)
    np.testing.assert_allclose(res.vcov(), cbpp_fit.vcov(), rtol=1e-4)
    np.testing.assert_allclose(res.ranef["herd"], cbpp_fit.ranef["herd"], atol=1e-9)


def test_summary_layout(cbpp_fit, cbpp):
    text = str(cbpp_fit.summary())
    for piece in [
        "Generalized linear mixed model fit by maximum likelihood (Laplace Approximation)",
        " Family: binomial  ( logit )",
        "Formula: cbind(incidence, size - incidence) ~ period + (1 | herd)",
        "df.resid",
        "Scaled residuals:",
        " herd   (Intercept)",
        "Number of obs: 56, groups:  herd, 15",
        "z value Pr(>|z|)",
        "Correlation of Fixed Effects:",
    ]:
        assert piece in text, piece
    # the 'deviance' column is -2 logLik, as lme4 prints it
    assert f"{-2 * cbpp_fit.loglik:.1f}" in text
    assert "Residual" not in text
    agq = glmm(CBPP, cbpp).fit(nAGQ=7)
    assert "Adaptive Gauss-Hermite Quadrature, nAGQ = 7" in str(agq.summary())


def test_probit_link_fit():
    df = simulate_logistic(3, groups=60, per=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fit = glmm("y ~ x + (1 | g)", df, get_family("binomial", link="probit")).fit()
    logit = glmm("y ~ x + (1 | g)", df).fit()
    # probit coefficients are about logit / 1.6-1.8
    assert 1.4 < logit.fixef["x"] / fit.fixef["x"] < 2.0
    assert "( probit )" in str(fit.summary())


def test_predict(cbpp, cbpp_fit):
    np.testing.assert_allclose(cbpp_fit.predict(), cbpp_fit.fitted)
    np.testing.assert_allclose(cbpp_fit.predict(cbpp), cbpp_fit.fitted, rtol=1e-12)
    eta = cbpp_fit.predict(cbpp, type="link")
    np.testing.assert_allclose(special.expit(eta), cbpp_fit.fitted, rtol=1e-12)
    pop = cbpp_fit.predict(cbpp, re_form=None, type="link")
    X = cbpp_fit.design.X
    np.testing.assert_allclose(pop, X @ cbpp_fit.fixef.to_numpy())
    np.testing.assert_allclose(cbpp_fit.predict(re_form=None, type="link"), pop)
    # a herd not seen in the fit is refused by default, population level with allow_new_levels=True
    new = cbpp.iloc[:2].copy()
    new["herd"] = new["herd"].cat.add_categories(["99"])
    new.loc[new.index[0], "herd"] = "99"
    with pytest.raises(memoe.errors.DataError, match=r"'herd' has 1 new level.*'99'"):
        cbpp_fit.predict(new, type="link")
    p = cbpp_fit.predict(new, type="link", allow_new_levels=True)
    assert p.iloc[0] == pytest.approx(pop.iloc[0], abs=1e-12)
    assert p.iloc[1] == pytest.approx(eta.iloc[1], abs=1e-12)
    with pytest.raises(memoe.errors.MemoeError, match="type must be"):
        cbpp_fit.predict(type="probability")


def test_predict_replays_formula_offsets():
    rng = np.random.default_rng(4)
    df = pd.DataFrame({"g": np.repeat(list("abcdefgh"), 15), "E": rng.uniform(1, 4, 120)})
    df["y"] = rng.poisson(df.E * 2.0)
    fit = glmm("y ~ 1 + offset(np.log(E)) + (1 | g)", df, "poisson").fit(warn=False)
    np.testing.assert_allclose(fit.predict(df), fit.fitted, rtol=1e-10)
    doubled = fit.predict(df.assign(E=2 * df.E))
    np.testing.assert_allclose(doubled, 2 * fit.fitted, rtol=1e-10)


def test_predict_rejects_bad_newdata(cbpp_fit):
    with pytest.raises(memoe.errors.DataError, match="pandas DataFrame, got dict"):
        cbpp_fit.predict({"period": [1]})
    with pytest.raises(memoe.errors.DataError, match=r"lacks column .herd. used in the grouping factor"):
        cbpp_fit.predict(pd.DataFrame({"period": pd.Categorical(["1"], categories=["1", "2", "3", "4"])}))


def test_likelihood_ratio_test_with_compare(cbpp, cbpp_fit):
    """GLMM results work with memoe.compare (lme4's anova): LRT of the period effect."""
    f0 = glmm("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", cbpp).fit()
    table = memoe.compare(f0, cbpp_fit)
    assert list(table["npar"]) == [2, 5]
    assert table["Chisq"].iloc[1] == pytest.approx(2 * (cbpp_fit.loglik - f0.loglik), rel=1e-10)
    assert table["Df"].iloc[1] == 3
    assert table["Pr(>Chisq)"].iloc[1] == pytest.approx(stats.chi2.sf(table["Chisq"].iloc[1], 3), rel=1e-10)


def test_complete_separation_does_not_crash():
    """x separates the outcomes: like glm, the slope runs off with a huge SE instead of an exception."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200)
    df = pd.DataFrame({"y": (x > 0).astype(float), "x": x, "g": np.repeat(np.arange(20), 10).astype(str)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy floating-point noise
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = glmm("y ~ x + (1 | g)", df).fit()
    assert fit.fixef["x"] > 20
    assert fit.bse["x"] > 100 * fit.fixef["x"]
    assert np.isfinite(fit.loglik) and fit.loglik > -1e-3

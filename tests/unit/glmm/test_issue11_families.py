"""Issue 11: Gamma, inverse Gaussian, Gaussian (non-identity link) and negative binomial families, GLMs
without random effects, and the GLMM intervals and tests (unit level; R comparisons in
tests/golden/test_glmm_families.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import memoe
from memoe.errors import DataError, FamilyError, HypothesisError, QuadratureError
from memoe.glmm import glmm
from memoe.glmm.families import (
    Gamma,
    Gaussian,
    InverseGaussian,
    NegativeBinomial,
    get_family,
    get_link,
)


@pytest.fixture(scope="module")
def gsim():
    return memoe.datasets.load("glmm_gamma_sim")


@pytest.fixture(scope="module")
def nbsim():
    return memoe.datasets.load("glmm_nb_sim")


@pytest.fixture(scope="module")
def gamma_fit(gsim):
    return glmm("y ~ x + trt + (1 | g)", gsim, Gamma(link="log")).fit()


@pytest.fixture(scope="module")
def nb_fit(nbsim):
    return glmm("y ~ x + (1 | g)", nbsim, "nbinom2").fit()


# ---------------------------------------------------------------------------------------------- families
@pytest.mark.parametrize("name, cls", [
    ("Gamma", Gamma), ("gamma", Gamma), ("inverse.gaussian", InverseGaussian), ("inverse_gaussian", InverseGaussian),
    ("nbinom2", NegativeBinomial), ("negative_binomial", NegativeBinomial), ("negative.binomial", NegativeBinomial),
])
def test_r_spellings(name, cls):
    fam = get_family(name)
    assert type(fam) is cls
    assert get_family(name, "log").link.name == "log"


def test_family_objects_and_refusals():
    assert str(Gamma(link="log")) == "Gamma ( log )"
    assert str(InverseGaussian()) == "inverse.gaussian ( 1/mu^2 )"
    assert str(NegativeBinomial(theta=1.23456)) == "Negative Binomial(1.235) ( log )"
    assert get_family(Gamma(), link="identity").link.name == "identity"
    with pytest.raises(FamilyError, match="link 'logit' is not available for the Gamma family"):
        Gamma(link="logit")
    with pytest.raises(FamilyError, match="theta must be a positive number"):
        NegativeBinomial(theta=-1.0)
    with pytest.raises(FamilyError, match=r"memoe\.lmm"):
        get_family("gaussian")
    with pytest.raises(FamilyError, match=r"memoe\.lmm"):
        get_family(Gaussian())
    assert get_family("gaussian", "log").link.name == "log"
    with pytest.raises(FamilyError, match="unknown link 'cauchit'"):
        get_link("cauchit")


@pytest.mark.parametrize("link", ["inverse", "1/mu^2", "sqrt", "log", "identity"])
def test_new_links_invert_and_differentiate(link):
    L = get_link(link)
    mu = np.array([0.3, 1.0, 2.5, 7.0])
    eta = L.linkfun(mu)
    np.testing.assert_allclose(L.linkinv(eta), mu, rtol=1e-14)
    h = 1e-6 * np.maximum(np.abs(eta), 1.0)
    numeric = (L.linkinv(eta + h) - L.linkinv(eta - h)) / (2 * h)
    np.testing.assert_allclose(L.mu_eta(eta), numeric, rtol=1e-7)


def test_loglik_against_scipy():
    rng = np.random.default_rng(3)
    y = rng.gamma(3.0, 1.0, 50)
    mu = y * np.exp(rng.normal(0, 0.2, 50))
    wt, n = np.ones(50), np.ones(50)
    g = Gamma(link="log")
    phi = g.dev_resids(y, mu, wt).sum() / 50
    ref = stats.gamma.logpdf(y, a=1 / phi, scale=mu * phi).sum()
    # R's Gamma()$aic adds 2 for the profiled dispersion: lme4's GLMM deviance keeps it
    assert g.loglik(y, mu, wt, n) == pytest.approx(ref - 1.0, rel=1e-12)
    ig = InverseGaussian(link="log")
    phi = ig.dev_resids(y, mu, wt).sum() / 50
    ref = stats.invgauss.logpdf(y, mu * phi, scale=1 / phi).sum()
    assert ig.loglik(y, mu, wt, n) == pytest.approx(ref - 1.0, rel=1e-12)
    k = rng.poisson(3.0, 50).astype(float)
    nb = NegativeBinomial(theta=1.7)
    ref = stats.nbinom.logpmf(k, 1.7, 1.7 / (1.7 + mu)).sum()
    assert nb.loglik(k, mu, wt, n) == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(nb.variance(mu), mu + mu**2 / 1.7)
    # the unit deviance is 2 (loglik(saturated) - loglik) for the fixed-scale NB
    sat = stats.nbinom.logpmf(k, 1.7, 1.7 / (1.7 + k))
    np.testing.assert_allclose(nb.dev_resids(k, mu, wt), 2 * (sat - stats.nbinom.logpmf(k, 1.7, 1.7 / (1.7 + mu))),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family, col", [("Gamma", "y"), ("inverse_gaussian", "y")])
def test_positive_response_refused(gsim, family, col):
    d = gsim.copy()
    d.loc[3, col] = 0.0
    with pytest.raises(DataError, match=r"non-positive values not allowed .*response 'y' has 1 values <= 0"):
        glmm("y ~ x + (1 | g)", d, get_family(family, "log"))


def test_negative_counts_refused_for_nb(nbsim):
    d = nbsim.copy()
    d.loc[0, "y"] = -1
    with pytest.raises(DataError, match="negative values not allowed for the 'negative binomial' family"):
        glmm("y ~ x + (1 | g)", d, "nbinom2")


def test_agq_refused_with_estimated_nb_theta(nbsim):
    with pytest.raises(QuadratureError, match="cannot estimate the negative binomial theta"):
        glmm("y ~ x + (1 | g)", nbsim, "nbinom2").fit(nAGQ=5)
    fit = glmm("y ~ x + (1 | g)", nbsim, NegativeBinomial(theta=1.8)).fit(nAGQ=5)
    assert fit.family_theta == 1.8 and fit.family_theta_se is None


# ---------------------------------------------------------------------------------------------- GLMMs
def test_gamma_glmm_interface(gamma_fit):
    f = gamma_fit
    assert f.df_model == 5 and np.isfinite(f.sigma) and f.dispersion > 0
    assert f.comparable_loglik == pytest.approx(f.loglik + 1.0)
    # the Laplace deviance of a log-link Gamma GLMM, redone by hand at the optimum
    P, st = f.model.problem, f.state.pirls
    phi = st.dev_resid.sum() / P.n
    ll = stats.gamma.logpdf(P.y, a=1 / phi, scale=st.mu * phi).sum()
    assert f.criterion == pytest.approx(-2 * ll + 2 + st.sqrL + st.ldL2, rel=1e-12)
    eta = f.predict(type="link")
    np.testing.assert_allclose(np.exp(eta), f.predict(type="response"), rtol=1e-12)
    nd = pd.DataFrame({"x": [0.0, 1.0], "trt": pd.Categorical(["a", "b"], categories=["a", "b"]), "g": ["g01", "g02"]})
    p = f.predict(nd, re_form=None, type="link").to_numpy()
    b = f.fixef
    np.testing.assert_allclose(p, [b["(Intercept)"], b["(Intercept)"] + b["x"] + b["trtb"]], rtol=1e-12)
    for kind in ("deviance", "pearson", "response", "working"):
        assert f.residuals(kind).notna().all()
    tidy, glance = f.tidy(), f.glance()
    assert list(tidy["term"])[:3] == ["(Intercept)", "x", "trtb"]
    assert glance["sigma"].iloc[0] == pytest.approx(f.sigma)


def test_nb_glmm_theta_and_save(nb_fit, tmp_path):
    f = nb_fit
    assert f.family_theta > 0 and f.df_model == 4
    se = f.family_theta_se
    assert se["theta"] == pytest.approx(f.family_theta * se["log_theta"])
    path = tmp_path / "nb.memoe"
    f.save(path)
    g = memoe.load(path)
    assert g.loglik == f.loglik and g.family_theta == f.family_theta
    assert g.family_theta_se["log_theta"] == f.family_theta_se["log_theta"]
    pd.testing.assert_frame_equal(g.vcov(), f.vcov())


def test_gamma_save_load(gamma_fit, tmp_path):
    path = tmp_path / "g.memoe"
    gamma_fit.save(path)
    g = memoe.load(path)
    assert str(g.response_family) == "Gamma ( log )" and g.loglik == gamma_fit.loglik and g.sigma == gamma_fit.sigma


def test_wald_test_and_anova(gamma_fit):
    f = gamma_fit
    t = f.test("x = 0")
    z = f.fixef["x"] / f.bse["x"]
    assert t["Chisq"].iloc[0] == pytest.approx(z**2, rel=1e-10)
    assert t["Pr(>F)"].iloc[0] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-8)
    a = f.anova()
    assert list(a.index) == ["x", "trt"] and list(a.columns) == ["Chisq", "Df", "Pr(>Chisq)"]
    assert a.loc["trt", "Chisq"] == pytest.approx((f.fixef["trtb"] / f.bse["trtb"]) ** 2, rel=1e-10)
    with pytest.raises(HypothesisError, match=r"not available for a GLMM.*asymptotic"):
        f.test("x = 0", ddf="satterthwaite")
    with pytest.raises(HypothesisError, match=r"unknown coefficient|not a coefficient|x2"):
        f.test("x2 = 0")


def test_bootstrap_is_seeded(nbsim):
    fit = glmm("y ~ x", nbsim, "poisson").fit()
    a = fit.confint(method="bootstrap", nsim=8, seed=11)
    b = fit.confint(method="bootstrap", nsim=8, seed=11)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.index) == ["(Intercept)", "x"]
    assert np.all(a["lower"] < fit.fixef) and np.all(fit.fixef < a["upper"])


def test_profile_interval_of_a_glm_beta_brackets_the_estimate(nbsim):
    fit = glmm("y ~ x", nbsim, "poisson").fit()
    ci = fit.confint(method="profile")
    wald = fit.confint()
    # a Poisson GLM's profile and Wald intervals agree to O(1/n) on 400 rows
    np.testing.assert_allclose(ci.to_numpy(), wald.to_numpy(), atol=0.01)


# ---------------------------------------------------------------------------------------------- GLMs
def test_glm_matches_statsmodels(gsim):
    import statsmodels.api as sm

    fit = glmm("y ~ x + trt", gsim, Gamma(link="log")).fit()
    X = np.column_stack([np.ones(len(gsim)), gsim["x"], (gsim["trt"] == "b").astype(float)])
    sm_fit = sm.GLM(gsim["y"].to_numpy(), X, family=sm.families.Gamma(sm.families.links.Log())).fit(tol=1e-14)
    np.testing.assert_allclose(fit.fixef.to_numpy(), sm_fit.params, rtol=1e-8)
    # statsmodels' default scale for Gamma is Pearson chi2 / df_resid, as R's summary.glm
    np.testing.assert_allclose(fit.bse.to_numpy(), sm_fit.bse, rtol=1e-7)
    assert fit.coef_table().attrs["statistic"] == "t"


def test_glm_refuses_random_effect_only_methods(nbsim):
    fit = glmm("y ~ x", nbsim, "poisson").fit()
    assert fit.varcorr.empty and fit.ranef == {} and fit.ngroups.empty
    assert "Null deviance" in str(fit.summary())
    assert fit.test("x = 0", ddf="residual")["DenDF"].iloc[0] == fit.nobs - 2


def test_cli_accepts_new_families(tmp_path, gsim):
    from memoe.cli import main

    csv = tmp_path / "g.csv"
    gsim.to_csv(csv, index=False)
    out = tmp_path / "tidy.csv"
    assert main(["fit", "y ~ x + trt + (1 | g)", "--data", str(csv), "--family", "Gamma", "--link", "log",
                 "-o", str(out)]) == 0
    t = pd.read_csv(out)
    assert t.loc[t["term"] == "x", "estimate"].iloc[0] == pytest.approx(0.5505, abs=1e-3)


def test_observed_information_weights():
    """The observed weights are the second derivative of -log f in eta (numerically), and the Fisher
    weights for canonical links."""
    rng = np.random.default_rng(5)
    y = rng.poisson(3.0, 20).astype(float)
    eta = rng.normal(1.0, 0.3, 20)
    wt = np.ones(20)
    nb = NegativeBinomial(theta=1.5)
    h = 1e-4

    def nll(e):
        mu = np.exp(e)
        return -stats.nbinom.logpmf(y, 1.5, 1.5 / (1.5 + mu))

    numeric = (nll(eta + h) - 2 * nll(eta) + nll(eta - h)) / h**2
    np.testing.assert_allclose(nb.observed_weights(y, np.exp(eta), eta, wt), numeric, rtol=1e-5)
    pois = get_family("poisson")
    mu = np.exp(eta)
    np.testing.assert_allclose(pois.observed_weights(y, mu, eta, wt), mu, rtol=1e-12)
    b = get_family("binomial")
    p = 1 / (1 + np.exp(-eta))
    np.testing.assert_allclose(b.observed_weights(np.round(p), p, eta, wt), p * (1 - p), rtol=1e-10)


def test_observed_laplace_refusals(gsim, nbsim):
    with pytest.raises(memoe.errors.ArgumentError, match="fixed scale"):
        glmm("y ~ x + (1 | g)", gsim, Gamma(link="log")).fit(laplace="observed")
    with pytest.raises(memoe.errors.ArgumentError, match="needs nAGQ=1"):
        glmm("y ~ x + (1 | g)", nbsim, "poisson").fit(nAGQ=3, laplace="observed")
    with pytest.raises(memoe.errors.ArgumentError, match="laplace must be one of expected, observed"):
        glmm("y ~ x + (1 | g)", nbsim, "poisson").fit(laplace="exact")


def test_observed_laplace_equals_expected_for_canonical_links(nbsim):
    m = glmm("y ~ x + (1 | g)", nbsim, "poisson")
    a, b = m.fit(), m.fit(laplace="observed")
    assert a.loglik == pytest.approx(b.loglik, abs=1e-9)


def test_observed_laplace_fit_saves(nbsim, tmp_path):
    fit = glmm("y ~ x + (1 | g)", nbsim, "nbinom2").fit(laplace="observed")
    fit.save(tmp_path / "o.memoe")
    back = memoe.load(tmp_path / "o.memoe")
    assert back.laplace == "observed" and back.loglik == fit.loglik
    pd.testing.assert_series_equal(back.bse, fit.bse)


def test_compare_gamma_glm_with_glmm_uses_the_loglikelihood(gsim, gamma_fit):
    glm = glmm("y ~ x + trt", gsim, Gamma(link="log")).fit()
    table = memoe.compare(glm, gamma_fit, boundary=True)
    # lme4's GLMM logLik keeps R's aic "+ 2"; the test statistic uses the likelihood itself
    assert table["Chisq"].iloc[1] == pytest.approx(2 * (gamma_fit.loglik + 1.0 - glm.loglik), rel=1e-12)
    assert table["logLik"].iloc[1] == pytest.approx(gamma_fit.comparable_loglik)
    assert any("aic '+ 2'" in n for n in table.notes)
    with pytest.warns(memoe.errors.MemoeWarning, match="different response families"):
        other = memoe.compare(glmm("y ~ x + trt", gsim, "Gamma").fit(), gamma_fit)
    assert np.isnan(other["Pr(>Chisq)"].iloc[1])


def test_hopeless_links_are_refused_not_nan(gsim):
    """R's glm stops with 'no valid set of coefficients has been found' when IRLS leaves the link's domain
    from the starting means; memoe raises a ConvergenceError instead of returning NaN estimates."""
    with pytest.raises(memoe.errors.ConvergenceError, match=r"no valid coefficients .*inverse.gaussian"):
        glmm("yig ~ x + trt", gsim, "inverse_gaussian").fit(warn=False)
    with pytest.raises(memoe.errors.ConvergenceError, match=r"no finite deviance .*Gamma \( inverse \)"):
        glmm("yig ~ x + trt + (1 | g)", gsim, "Gamma").fit(warn=False)
    # the canonical Gamma GLM on Gamma data is fine (R: 0.3155058526847, -0.1113918398521, -0.0517079112787)
    fit = glmm("y ~ x + trt", gsim, "Gamma").fit()
    np.testing.assert_allclose(fit.fixef, [0.3155058526847, -0.1113918398521, -0.0517079112787], rtol=1e-9)
    assert fit.loglik == pytest.approx(-499.3835466606287, abs=1e-9)

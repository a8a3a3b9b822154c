"""Golden tests: GLMM families of issue 11 against R (tools/reference/cases/glmm_families.R).

Targets (the issue's): logLik 1e-6, estimates 1e-5, SEs 1e-4, theta 1e-4 relative, profile limits 1e-3.

Which R number is the target (the "tight optimum" convention of test_glmm_reference.py):

* lme4 evaluates its Laplace deviance with the factor of the *previous* PIRLS iterate and stops PIRLS at
  a relative change of 1e-7 (``tolPwrss``), so its reported logLik of a GLMM carries an error of order
  1e-4 to 3e-3 that depends on where each evaluation's PIRLS started (test_glmm_reference.py replays it
  for cbpp). memoe minimises the exact Laplace deviance. Where lme4 can be refitted with
  ``tolPwrss = 1e-13`` (Gamma, log link) its objective is then the exact one, and that tight refit
  is the 1e-6 / 1e-5 / 1e-4 target. Elsewhere lme4's PIRLS fails at such tolerances (inverse link,
  inverse Gaussian: "PIRLS loop resulted in NaN"; glmer.nb's tol= argument does not reach its optimize()
  in lme4 1.1-31), and the tests compare at lme4's estimates: our exact Laplace log-likelihood there
  differs from lme4's reported one by at most lme4's stale-factor error (bounded below by the measured
  values), our optimum is at least as good on the exact criterion, and the estimates agree within what
  that objective error allows.
* glmmTMB's Laplace approximation uses the observed Hessian of the joint log density in u; lme4 (and
  memoe, which reproduces lme4) the expected (Fisher) weights. For NB2 with the log link (not canonical)
  the two likelihoods differ, so glmer.nb and glmmTMB do not reach the same optimum: on nb_sim theta is
  1.7913 (glmer.nb) vs 1.7891 (glmmTMB), the intercept 0.9404 vs 0.9577. ``observed_laplace`` below
  evaluates glmmTMB's objective with memoe's PIRLS pieces, which reproduces glmmTMB's logLik at its
  estimates to 1e-6: the difference is the Laplace variant, nothing else.
* GLMs: R's glm.fit stops at a relative deviance change of 1e-8; the ``tight_refit`` (epsilon 1e-15)
  is the exact MLE and the target at 1e-8.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.glmm import glmm
from memoe.glmm.families import get_family
from tests.conftest import r_matrix, reference, reference_data

GLMER = {
    "gamma_log_glmer": ("y ~ x + trt + (1 | g)", ("Gamma", "log")),
    "gamma_inverse_glmer": ("y ~ x + trt + (1 | g)", ("Gamma", "inverse")),
    "invgauss_log_glmer": ("yig ~ x + trt + (1 | g)", ("inverse_gaussian", "log")),
    "nb_sim_glmer_nb": ("y ~ x + (1 | g)", ("nbinom2", None)),
    "grouseticks_glmer_nb": ("TICKS ~ YEAR + HEIGHT_scaled + (1 | LOCATION)", ("nbinom2", None)),
    "gamma_log_weights_glmer": ("y ~ x + trt + (1 | g)", ("Gamma", "log"), {"weights": "w"}),
    "gaussian_log_offset_glmer": ("y ~ x + trt + (1 | g) + offset(off)", ("gaussian", "log"), {"weights": "w"}),
}
# lme4 refits with tolPwrss = 1e-13 (exact Laplace) succeeded for these
TIGHT = ["gamma_log_glmer", "gamma_log_weights_glmer", "gaussian_log_offset_glmer"]
NB = ["nb_sim_glmer_nb", "grouseticks_glmer_nb"]
TMB = {"nb_sim_glmmtmb": "nb_sim_glmer_nb", "grouseticks_glmmtmb_nb": "grouseticks_glmer_nb"}
GLM = {
    "cbpp_binomial_glm": ("cbind(incidence, size - incidence) ~ period", ("binomial", None)),
    "grouseticks_poisson_glm": ("TICKS ~ YEAR + HEIGHT_scaled", ("poisson", None)),
    "gamma_log_glm": ("y ~ x + trt", ("Gamma", "log")),
    "invgauss_log_glm": ("yig ~ x + trt", ("inverse_gaussian", "log")),
    "nb_sim_glm_nb": ("y ~ x", ("nbinom2", None)),
    "gamma_log_weights_glm": ("y ~ x + trt", ("Gamma", "log"), {"weights": "w"}),
    "gaussian_log_offset_glm": ("y ~ x + trt + offset(off)", ("gaussian", "log"), {"weights": "w"}),
}
# lme4's stale-factor error in its reported GLMM logLik, measured as |exact Laplace - lme4| at lme4's
# estimates (3.5e-4, 7.8e-5, 2.7e-3, 4.8e-5, 3.4e-4); the bound is the same order, not a fit to digits
LME4_OBJECTIVE_ERROR = {
    "gamma_log_glmer": 1e-3, "gamma_inverse_glmer": 1e-3, "invgauss_log_glmer": 5e-3,
    "nb_sim_glmer_nb": 1e-3, "grouseticks_glmer_nb": 1e-3, "gamma_log_weights_glmer": 1e-3,
    "gaussian_log_offset_glmer": 1e-3,
}


def _model(case: str, spec: dict):
    formula, (fam, link), *kwargs = spec[case]
    return glmm(formula, reference_data(case), get_family(fam, link), **(kwargs[0] if kwargs else {}))


@cache
def fitted(case: str):
    spec = GLMER if case in GLMER else GLM
    return _model(case, spec).fit(warn=False)


def at_r(case: str):
    """A new model's result at lme4's estimates (its own model: an NB theta is set on it)."""
    r = reference(case)["results"]
    m = _model(case, GLMER)
    theta = pd.Series(r["theta"])[m.design.theta_map.names].to_numpy()
    beta = pd.Series(r["fixef"])[m.design.fixef_names].to_numpy()
    return m.result_at(theta, beta, family_theta=r.get("nb_theta"))


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


# ---------------------------------------------------------------------------------------------- glmer
@pytest.mark.parametrize("case", TIGHT)
def test_matches_lme4_tight_refit(case):
    """Gamma(log), weighted Gamma(log), Gaussian(log) with weights and offset: with PIRLS converged
    (tolPwrss 1e-13) lme4 minimises the exact Laplace deviance (measured for gamma_log_glmer)."""
    r = reference(case)["results"]
    t = r["tight_refit"]
    fit = fitted(case)
    assert abs(fit.loglik - t["loglik"]) < 1e-6  # measured 2.5e-8
    assert rel(fit.fixef[list(t["fixef"])], list(t["fixef"].values())) < 1e-5  # 1.3e-6
    assert rel(fit.theta, list(t["theta"].values())) < 1e-5  # 3.2e-6
    assert abs(fit.sigma / t["sigma"] - 1) < 1e-5  # lme4's sigma(): sqrt((Pearson RSS + |u|^2) / n)
    se_r = np.sqrt(np.diag(r_matrix(t["vcov"]).to_numpy()))
    assert rel(fit.bse.to_numpy(), se_r) < 1e-4  # Hessian SEs, 3e-6
    # lme4 counts the dispersion: df = p + ntheta + 1 and AIC with it
    assert fit.df_model == r["df"]
    assert fit.aic == pytest.approx(-2 * fit.loglik + 2 * r["df"], abs=1e-9)


@pytest.mark.parametrize("case", sorted(GLMER))
def test_exact_laplace_at_lme4_estimates(case):
    """At lme4's estimates: our exact Laplace logLik is within lme4's stale-factor error of its value,
    and the quantities conditional on the estimates (modes, sigma, RX covariance) are lme4's."""
    r = reference(case)["results"]
    res = at_r(case)
    assert abs(res.loglik - r["loglik"]) < LME4_OBJECTIVE_ERROR[case]
    assert res.df_model == r["df"]
    assert res.nobs == r["nobs"]
    # the sum of squared deviance residuals at lme4's (not fully converged) modes: 1e-5 relative
    assert abs(res.deviance / r["deviance"] - 1) < 1e-4
    vrx = r_matrix(r["vcov_rx"]).to_numpy()
    assert rel(np.sqrt(np.diag(res.vcov_rx.to_numpy())), np.sqrt(np.diag(vrx))) < 1e-4
    if reference(case)["results"]["use_sc"]:
        assert abs(res.sigma / r["sigma"] - 1) < 1e-4
    else:
        assert np.isnan(res.sigma)
    # residuals and fitted values at lme4's modes, which lme4's PIRLS stops short of (tolPwrss 1e-7 on the
    # penalised deviance leaves the modes ~1e-4 off: measured residual differences up to 3.8e-4)
    np.testing.assert_allclose(res.residuals("pearson").to_numpy(), r["pearson_residuals"], rtol=1e-3, atol=1e-3)
    resp_r = np.asarray(r["response_residuals"])
    assert np.max(np.abs(res.residuals("response").to_numpy() - resp_r)) < 1e-3 * np.max(np.asarray(r["fitted"]))
    np.testing.assert_allclose(res.residuals("deviance").to_numpy(), r["deviance_residuals"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(res.fitted.to_numpy(), r["fitted"], rtol=1e-3)


@pytest.mark.parametrize("case", sorted(GLMER))
def test_optimum_at_least_lme4s_and_estimates_close(case):
    """Our optimum of the exact Laplace deviance is no worse than lme4's point; the estimates agree within
    what lme4's objective error allows (measured: fixef <= 4.1e-4 absolute, theta <= 2.4e-3 relative,
    the inverse Gaussian, whose lme4 fit fails lme4's own gradient check, excepted below)."""
    r = reference(case)["results"]
    fit, res = fitted(case), at_r(case)
    assert fit.loglik >= res.loglik - 1e-8
    assert fit.converged
    tol_beta, tol_theta = (2e-3, 5e-3) if case == "invgauss_log_glmer" else (5e-4, 3e-3)
    assert np.max(np.abs(fit.fixef.to_numpy() - list(r["fixef"].values()))) < tol_beta
    assert rel(fit.theta, list(r["theta"].values())) < tol_theta
    if case in NB:
        # theta of the negative binomial: 1e-4 relative (measured 3.8e-6 and 7.9e-6)
        assert abs(fit.family_theta / r["nb_theta"] - 1) < 1e-4
        t = r["tight_refit"]["nb_theta"]
        assert abs(fit.family_theta / t - 1) < 1e-4
        # glmer.nb's SEs are those of its final glmer fit at fixed theta, as ours (measured 2e-5)
        se_r = [row["std_error"] for row in r["coef_table"]]
        assert rel(fit.bse.to_numpy(), se_r) < 1e-4


def test_invgauss_lme4_fit_did_not_converge():
    """lme4's inverse Gaussian fit fails its gradient check (max|grad| 0.03) and its Hessian SEs are 40
    times too small; ours converges to a point 2.7e-3 better on the exact criterion. Its RX-based SEs at
    lme4's estimates agree with ours there (test above)."""
    ref = reference("invgauss_log_glmer")
    assert not ref["fit_info"]["converged"]
    fit = fitted("invgauss_log_glmer")
    assert fit.converged and fit.vcov_source == "hessian"
    se_rx = np.sqrt(np.diag(fit.vcov_rx.to_numpy()))
    assert np.all(fit.bse.to_numpy() > 0.5 * se_rx) and np.all(fit.bse.to_numpy() < 2 * se_rx)


def test_gamma_random_effect_variance_is_theta_squared():
    """lme4 1.1-31's VarCorr multiplies a Gamma GLMM's random-effect variance by sigma^2 (lme4 issue #852,
    fixed in later lme4 by PR #906); memoe reports the variance of the model's random effects, theta^2."""
    case = "gamma_log_glmer"
    r = reference(case)["results"]
    res = at_r(case)
    sd_r = r["varcorr"][0]["sd"]["(Intercept)"]
    theta = next(iter(r["theta"].values()))
    assert sd_r == pytest.approx(theta * r["sigma"], rel=1e-12)
    assert res.varcorr["sdcor"].iloc[0] == pytest.approx(theta, rel=1e-12)


def test_family_lines():
    assert str(fitted("gamma_log_glmer").summary()).splitlines()[1] == " Family: Gamma  ( log )"
    nb = str(fitted("nb_sim_glmer_nb").summary())
    assert " Family: Negative Binomial(1.791)  ( log )" in nb
    assert "Negative binomial theta = 1.791" in nb
    assert "Dispersion: sigma = 0.4852" in str(fitted("gamma_log_glmer").summary())


# ---------------------------------------------------------------------------------------------- glmmTMB
def observed_laplace(fit_model, theta, beta, nb_theta) -> float:
    """glmmTMB's Laplace deviance (test oracle): the same modes, log det with the observed information.

    For NB2 with the log link ``-d^2 log f / d eta^2 = (y + theta) mu theta / (mu + theta)^2`` (the
    Fisher weight ``mu theta / (mu + theta)`` with ``y`` in place of its mean).
    """
    m = fit_model
    m.set_family_theta(nb_theta)
    P = m.problem
    st = P.solve(theta, beta=beta)
    mu = st.mu
    w_obs = P.wt * (P.y + nb_theta) * mu * nb_theta / (mu + nb_theta) ** 2
    _, _, ldL2 = P.wls(theta, w_obs, np.zeros(P.n), with_beta=False)
    return P.loglik_terms(mu) + st.sqrL + ldL2


@pytest.mark.parametrize("case", sorted(TMB))
def test_glmmtmb_is_the_observed_information_laplace(case):
    r = reference(case)["results"]
    lme4_case = TMB[case]
    m = _model(lme4_case, GLMER)
    beta = pd.Series(r["fixef"])[m.design.fixef_names].to_numpy()
    theta = np.array(list(r["re_sd"].values()))  # one scalar term: theta = sd (sigma = 1)
    dev = observed_laplace(m, theta, beta, r["nb_theta"])
    assert abs(-0.5 * dev - r["loglik"]) < 1e-6  # TMB's inner optimisation is exact
    # the expected-information Laplace (lme4's, ours) is a different likelihood: 1e-2 apart here
    ours = m.result_at(theta, beta, family_theta=r["nb_theta"], hessian=False)
    assert abs(ours.loglik - r["loglik"]) > 1e-3


@pytest.mark.parametrize("case", sorted(TMB))
def test_fit_with_observed_laplace_is_glmmtmb(case):
    """``fit(laplace="observed")`` minimises glmmTMB's objective jointly in (theta, beta, log theta_NB):
    logLik 1e-6 (measured 6e-12 and 2.6e-9), theta_NB and the random-effect SD 1e-4 relative (2e-7, 7e-7),
    SEs (glmmTMB's joint-Hessian covariance) 1e-4 (1.7e-6), log(theta) SE 1e-4 (7.8e-7). The fixed
    effects within the optimisers' slack: glmmTMB's logLik is within ~5e-9 of the optimum, which allows
    ``sqrt(2 * 5e-9) = 1e-4`` standard errors (measured 1.5e-5 relative = 5e-5 SE on grouseticks)."""
    r = reference(case)["results"]
    m = _model(TMB[case], GLMER)
    fit = m.fit(laplace="observed")
    assert fit.converged and fit.laplace == "observed"
    assert abs(fit.loglik - r["loglik"]) < 1e-6
    assert abs(fit.family_theta / r["nb_theta"] - 1) < 1e-4
    assert rel(fit.theta, list(r["re_sd"].values())) < 1e-4
    se_r = np.array([row["std_error"] for row in r["coef_table"]])
    assert rel(fit.bse.to_numpy(), se_r) < 1e-4
    assert np.max(np.abs(fit.fixef.to_numpy() - list(r["fixef"].values())) / se_r) < 1e-4
    assert abs(fit.family_theta_se["log_theta"] / r["log_theta_se"] - 1) < 1e-4
    assert fit.df_model == r["df"]
    assert fit.aic == pytest.approx(r["aic"], abs=2e-6)


@pytest.mark.parametrize("case", sorted(TMB))
def test_glmmtmb_theta_and_log_theta_se_close(case):
    """Same data, slightly different likelihoods: theta within 0.5%, its log-scale SE within 2%."""
    r = reference(case)["results"]
    fit = fitted(TMB[case])
    assert abs(fit.family_theta / r["nb_theta"] - 1) < 5e-3
    assert abs(fit.family_theta_se["log_theta"] / r["log_theta_se"] - 1) < 2e-2
    assert abs(fit.df_model - r["df"]) == 0


# ---------------------------------------------------------------------------------------------- profile
def test_cbpp_profile_intervals_match_lme4():
    r = reference("cbpp_binomial_profile")["results"]
    fit = glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", reference_data("cbpp_binomial_profile"),
               "binomial").fit()
    ci = fit.confint(method="profile")
    for row in r["confint_profile"]["table"]:
        # lme4 interpolates zeta by splines through its profile grid: ~1e-4; measured <= 3.4e-5
        assert ci.loc[row["param"], "lower"] == pytest.approx(row["lower"], abs=1e-3)
        assert ci.loc[row["param"], "upper"] == pytest.approx(row["upper"], abs=1e-3)
    wald = fit.confint()
    for row in r["confint_wald"]["table"]:
        # Wald limits move with our optimum (fixef 4e-4 from lme4's, SE 1%: test_glmm_reference.py)
        assert wald.loc[row["param"], "lower"] == pytest.approx(row["lower"], abs=2e-2)


# ---------------------------------------------------------------------------------------------- GLMs
@pytest.mark.parametrize("case", sorted(GLM))
def test_glm_matches_r_glm(case):
    r = reference(case)["results"]
    t = r["tight_refit"]
    fit = fitted(case)
    assert type(fit).__name__ == "GlmResult"
    # both at the MLE to rounding: the deviances agree to all digits, and the coefficients within what that
    # rounding allows on a flat optimum (1e-6 SE; measured 1.8e-7 SE for the weighted Gaussian-log fit)
    se = fit.bse[list(t["coef"])].to_numpy()
    assert np.max(np.abs(fit.fixef[list(t["coef"])].to_numpy() - list(t["coef"].values())) / se) < 1e-6
    assert rel(fit.bse[list(t["std_error"])], list(t["std_error"].values())) < 1e-7
    assert abs(fit.loglik - t["loglik"]) < 1e-8 * max(1.0, abs(t["loglik"]))
    assert abs(fit.deviance - t["deviance"]) < 1e-8 * t["deviance"]
    # R's default fit stops when the deviance changes by < 1e-8 relative: its deviance can be that far above
    # the minimum, which (on the likelihood scale, deviance / phi) allows sqrt(2 * 1e-8 * dev / phi) SEs
    slack = 3.0 * np.sqrt(2e-8 * t["deviance"] / fit.dispersion_pearson) + 1e-6
    assert np.max(np.abs(fit.fixef[list(r["coef"])].to_numpy() - list(r["coef"].values())) / se) < slack
    assert fit.df_model == r["df"] and fit.nobs == r["nobs"]
    assert fit.aic == pytest.approx(r["aic"], abs=1e-6)
    assert fit.null_deviance == pytest.approx(r["null_deviance"], rel=1e-6)
    assert fit.df_resid == r["df_residual"]
    # R's fitted means are those of its (default) coefficients: our design, offset and link give them exactly
    P = fit.model.problem
    beta_r = pd.Series(r["coef"])[fit.design.fixef_names].to_numpy()
    np.testing.assert_allclose(fit.response_family.linkinv(P.X @ beta_r + P.offset), r["fitted"], rtol=1e-12)
    np.testing.assert_allclose(fit.fitted.to_numpy(), r["fitted"], rtol=1e-3)
    # R's Pearson residuals at its means: sqrt(wt) (y - mu) / sqrt(V(mu)) (the NB's V needs R's theta)
    mu_r = np.asarray(r["fitted"])
    fam_r = fit.response_family if r.get("theta") is None else fit.response_family.with_theta(r["theta"])
    pearson_r = np.sqrt(P.wt) * (P.y - mu_r) / np.sqrt(fam_r.variance(mu_r))
    np.testing.assert_allclose(pearson_r, r["pearson_residuals"], rtol=1e-10, atol=1e-12)
    if r.get("theta") is not None:
        assert abs(fit.family_theta / t["theta"] - 1) < 1e-7
        # MASS's theta.ml returns the information of the Newton iterate before its last step (it stops at
        # eps^0.25 = 1.2e-4 on theta): its SE is that far from the one at the optimum (measured 2.4e-5)
        assert abs(fit.family_theta_se["theta"] / t["theta_se"] - 1) < 1e-4
    p_r = np.array([row["p_value"] for row in r["coef_table"]])
    # p-values on the log scale: the statistics agree to 1e-4 (the default fit's coefficients)
    p = fit.coef_table()["p_value"].to_numpy()
    finite = p_r > 0
    assert np.all(p[~finite] < 1e-300)
    assert np.max(np.abs(np.log(p[finite]) - np.log(p_r[finite]))) < 1e-2


@pytest.mark.parametrize(
    "case, term", [("cbpp_binomial_glm", "(1 | herd)"), ("grouseticks_poisson_glm", "(1 | LOCATION)")]
)
def test_boundary_lrt_glm_vs_glmm(case, term):
    """memoe.compare(glm, glmm, boundary=True): the 0.5 chi2(0) + 0.5 chi2(1) test of sigma_u^2 = 0."""
    r = reference(case)["results"]
    b = r["boundary_lrt"]
    formula, (fam, link), *_ = GLM[case]
    g0 = fitted(case)
    g1 = glmm(f"{formula} + {term}", reference_data(case), get_family(fam, link)).fit()
    # lme4 with tolPwrss = 1e-13 is the exact Laplace: 1e-6 (measured 1e-8 and 3e-7)
    assert abs(g1.loglik - b["glmer_loglik"]) < 1e-6
    table = memoe.compare(g0, g1, boundary=True)
    assert table["Chisq"].iloc[1] == pytest.approx(b["lrt"], abs=2e-6)
    assert "0.5*chi2(0) + 0.5*chi2(1)" in table["null"].iloc[1]
    if b["p_chibar"] > 1e-300:
        assert np.log(table["Pr(>Chisq)"].iloc[1]) == pytest.approx(np.log(b["p_chibar"]), abs=1e-4)

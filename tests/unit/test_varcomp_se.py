"""Variance-component standard errors, Wald z tests and Wald intervals (memoe.inference.varcomp).

The reference SEs are built here independently: the marginal (RE)ML criterion of the sleepstudy model is
written densely from V_i = Z_i G Z_i' + sigma^2 I (no PLS, no theta), in the sd/cor/sigma
parameterisation itself, and differentiated twice by central differences with relative steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

import memoe
from memoe.inference.varcomp import BOUNDARY_NOTE, central_hessian, lmm_deviance_z, varpar_wald_interval

# Accuracy of the reference: central differences with relative step h = 1e-3 (see _reference_se) have
# truncation error O(h^2) ~ 1e-6 and rounding error ~ eps |d| / (h sd)^2 ~ 1e-16 * 1750 / (2.4e-3)^2 ~ 3e-8 relative to
# Hessian entries ~ 2 / se^2; memoe's own step (1e-3 on log / atanh scales) costs ~1e-6. The two SEs
# therefore agree to ~1e-5; 1e-4 leaves a margin without hiding a wrong formula (a factor sqrt(2) or an
# omitted REML term changes the SEs by > 1 %).
RTOL_SE = 1e-4


@pytest.fixture(scope="module")
def sleep():
    return memoe.datasets.load("sleepstudy")


def _dense_criterion(data, reml: bool):
    """-2 log L (ML, beta at its GLS optimum) or the REML criterion as a function of (sd0, sd1, cor, sigma)."""
    data = data.sort_values(["Subject", "Days"])
    groups = [g for _, g in data.groupby("Subject", sort=True)]
    Xs = [np.column_stack([np.ones(len(g)), g["Days"].to_numpy(float)]) for g in groups]
    ys = [g["Reaction"].to_numpy(float) for g in groups]
    n = sum(len(y) for y in ys)
    p = 2

    def crit(par: np.ndarray) -> float:
        sd0, sd1, cor, sigma = par
        G = np.array([[sd0**2, cor * sd0 * sd1], [cor * sd0 * sd1, sd1**2]])
        XtVX = np.zeros((p, p))
        XtVy = np.zeros(p)
        logdet = 0.0
        Vinv = []
        for X, y in zip(Xs, ys, strict=True):
            V = X @ G @ X.T + sigma**2 * np.eye(len(y))
            Vi = np.linalg.inv(V)
            Vinv.append(Vi)
            logdet += np.linalg.slogdet(V)[1]
            XtVX += X.T @ Vi @ X
            XtVy += X.T @ Vi @ y
        beta = np.linalg.solve(XtVX, XtVy)
        quad = sum(float((y - X @ beta) @ Vi @ (y - X @ beta)) for X, y, Vi in zip(Xs, ys, Vinv, strict=True))
        if reml:
            return logdet + np.linalg.slogdet(XtVX)[1] + quad + (n - p) * math.log(2 * math.pi)
        return logdet + quad + n * math.log(2 * math.pi)

    return crit


def _reference_se(crit, est: np.ndarray) -> np.ndarray:
    # relative step 1e-3: with 1e-4 the rounding of the dense criterion (~1e-13 of 1750) over h^2 moved the
    # correlation's SE by up to 3e-4 between two estimates 1e-7 apart (both optima of the same fit); with
    # 1e-3 the reference agrees with memoe to <= 3e-6 at either, truncation O(h^2) ~ 1e-6
    h = 1e-3 * np.where(np.abs(est) > 0.1, np.abs(est), 0.1)
    H = central_hessian(crit, est, h)
    return np.sqrt(np.diag(2.0 * np.linalg.inv(H)))


@pytest.mark.parametrize("reml", [True, False])
def test_lmm_se_match_dense_numerical_hessian(sleep, reml):
    fit = memoe.LMM("Reaction ~ Days + (Days | Subject)", sleep).fit(reml=reml)
    rp = fit.tidy(effects="ran_pars")
    assert list(rp["term"]) == ["sd__(Intercept)", "sd__Days", "cor__(Intercept).Days", "sd__Observation"]
    est = rp["estimate"].to_numpy(float)
    crit = _dense_criterion(sleep, reml)
    # the dense criterion is the fitted one: same value at the estimates
    assert crit(est) == pytest.approx(fit.deviance, rel=1e-10)
    np.testing.assert_allclose(rp["std_error"].to_numpy(float), _reference_se(crit, est), rtol=RTOL_SE)


def test_deviance_in_z_reproduces_fit(sleep):
    for reml in (True, False):
        fit = memoe.LMM("Reaction ~ Days + (Days | Subject)", sleep).fit(reml=reml)
        f, z, _ = lmm_deviance_z(fit)
        assert f(z) == pytest.approx(fit.deviance, rel=1e-12)


def test_lmm_and_lme_agree(sleep):
    """Two independent paths (PLS deviance in sd/cor vs nlme's apVar of the lme fit) give the same SEs;
    the estimates themselves agree to the optimisers' tolerance (~1e-6), hence 1e-3."""
    a = memoe.LMM("Reaction ~ Days + (Days | Subject)", sleep).fit().tidy(effects="ran_pars")
    b = memoe.lme("Reaction ~ Days + (Days | Subject)", sleep).fit().tidy(effects="ran_pars")
    assert list(a["term"]) == list(b["term"])
    np.testing.assert_allclose(a["std_error"], b["std_error"], rtol=1e-3)


def test_wald_z_p_values_and_boundary_note(sleep):
    fit = memoe.LMM("Reaction ~ Days + (Days | Subject)", sleep).fit()
    rp = fit._ran_pars()
    z = rp["estimate"] / rp["std_error"]
    np.testing.assert_allclose(rp["statistic"], z, rtol=1e-14)
    assert np.all(np.isinf(rp["df"]))
    sd_rows = rp["term"].str.startswith("sd__").to_numpy()
    # SDs: the null value 0 is on the boundary -> chi-bar-square: the two-sided p halved
    np.testing.assert_allclose(rp.loc[sd_rows, "p_value"], stats.norm.sf(z[sd_rows]), rtol=1e-12)
    np.testing.assert_allclose(rp.loc[~sd_rows, "p_value"], 2 * stats.norm.sf(np.abs(z[~sd_rows])), rtol=1e-12)
    assert "boundary" in rp.attrs["note"] and rp.attrs["note"] == BOUNDARY_NOTE


def test_confint_wald_variance_rows_are_log_scale_intervals(sleep):
    fit = memoe.LMM("Reaction ~ Days + (Days | Subject)", sleep).fit()
    ci = fit.confint(method="wald", level=0.9)
    rp = fit.tidy(effects="ran_pars", conf_int=True, level=0.9)
    q = stats.norm.ppf(0.95)
    sd = rp.iloc[0]
    assert ci.loc["sd_(Intercept)|Subject", "lower"] == pytest.approx(
        sd["estimate"] * math.exp(-q * sd["std_error"] / sd["estimate"]), rel=1e-12
    )
    cor = rp.iloc[2]
    zc, sez = math.atanh(cor["estimate"]), cor["std_error"] / (1 - cor["estimate"] ** 2)
    assert ci.loc["cor_Days.(Intercept)|Subject", "upper"] == pytest.approx(math.tanh(zc + q * sez), rel=1e-12)
    # tidy's intervals are confint's
    by_name = {"sd__(Intercept)": "sd_(Intercept)|Subject", "sd__Days": "sd_Days|Subject",
               "cor__(Intercept).Days": "cor_Days.(Intercept)|Subject", "sd__Observation": "sigma"}
    for _, r in rp.iterrows():
        assert r["conf_low"] == pytest.approx(ci.loc[by_name[r["term"]], "lower"], rel=1e-12)
        assert r["conf_high"] == pytest.approx(ci.loc[by_name[r["term"]], "upper"], rel=1e-12)
    assert np.all(ci["lower"] < ci["upper"])
    assert "log-SD" in ci.attrs["varpar_scale"]


def test_interval_helper_stays_in_parameter_space():
    lo, hi = varpar_wald_interval(np.array([0.5, 0.95, 1.0]), np.array([1.0, 0.2, np.nan]),
                                  np.array(["sd", "cor", "sd"], dtype=object), 0.95)
    assert lo[0] > 0 and -1 < lo[1] < hi[1] < 1 and np.isnan(lo[2]) and np.isnan(hi[2])


def test_singular_fit_gives_nan_for_the_boundary_sd():
    dy2 = memoe.datasets.load("Dyestuff2")
    fit = memoe.LMM("Yield ~ 1 + (1 | Batch)", dy2).fit(warn=False)
    rp = fit.tidy(effects="ran_pars")
    assert np.isnan(rp.loc[0, "std_error"]) and np.isnan(rp.loc[0, "p_value"])
    # sigma is interior: with the batch SD fixed at 0 its SE is that of an iid normal SD, sigma / sqrt(2 (n - p))
    n = len(dy2)
    assert rp.loc[1, "std_error"] == pytest.approx(fit.sigma / math.sqrt(2 * (n - 1)), rel=1e-4)
    ci = fit.confint()
    assert np.isnan(ci.loc["sd_(Intercept)|Batch"]).all() and np.isfinite(ci.loc["sigma"]).all()


def test_glmm_se_match_numerical_hessian_of_the_laplace_deviance():
    cbpp = memoe.datasets.load("cbpp")
    model = memoe.GLMM("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    fit = model.fit()
    rp = fit.tidy(effects="ran_pars")
    x = np.concatenate([fit.state.theta, fit.state.beta])
    f = model.objective(1)
    # steps of 1e-3 relative: PIRLS converges to ~1e-10 in the deviance, so the noise in a second difference
    # is ~1e-10 / (6e-4)^2 ~ 3e-4 against Hessian entries 2 / se^2 ~ 60 (5e-6 relative); lme4's own step
    # (1e-4 absolute) has truncation error ~1e-8: 1e-4 covers both and catches a wrong factor or scale
    H = central_hessian(f, x, 1e-3 * np.maximum(np.abs(x), 0.1))
    se_ref = math.sqrt(2.0 * np.linalg.inv(H)[0, 0])  # sd = theta for a scalar random intercept
    assert rp.loc[0, "std_error"] == pytest.approx(se_ref, rel=1e-4)
    assert rp.loc[0, "p_value"] == pytest.approx(stats.norm.sf(rp.loc[0, "statistic"]), rel=1e-12)


def test_glmm_without_hessian_has_nan_se():
    cbpp = memoe.datasets.load("cbpp")
    fit = memoe.GLMM("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial").fit(nAGQ=0)
    rp = fit.tidy(effects="ran_pars")
    assert np.isnan(rp["std_error"]).all()

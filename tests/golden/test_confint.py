"""Confidence intervals: lme4's profile intervals for sleepstudy (REML and ML), Wald, parametric bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from memoe.errors import MemoeError
from memoe.inference.bootstrap import bootstrap
from memoe.inference.profile import Profiler
from tests.conftest import fitted_case, reference

PROFILE_CASES = ["sleepstudy_corr_slope_reml", "sleepstudy_corr_slope_ml"]
NAMES = [
    "sd_(Intercept)|Subject",
    "cor_Days.(Intercept)|Subject",
    "sd_Days|Subject",
    "sigma",
    "(Intercept)",
    "Days",
]
Z975 = stats.norm.ppf(0.975)


@pytest.fixture(scope="module")
def profile_tables():
    return {case: fitted_case(case).confint(method="profile") for case in PROFILE_CASES}


@pytest.mark.parametrize("case", PROFILE_CASES)
def test_profile_matches_lme4(case, profile_tables):
    ref = pd.DataFrame(reference(case)["results"]["confint_profile"]["table"]).set_index("param")
    ci = profile_tables[case]
    assert list(ci.index) == NAMES == list(ref.index)
    assert list(ci.columns) == ["lower", "upper"]
    rel_lo = np.abs(ci["lower"] - ref["lower"]) / np.abs(ref["lower"])
    rel_hi = np.abs(ci["upper"] - ref["upper"]) / np.abs(ref["upper"])
    # lme4 interpolates zeta with splines: its limits are off by up to ~5e-5 (relative) here
    assert rel_lo.max() < 1e-3 and rel_hi.max() < 1e-3


def test_profile_limits_solve_the_zeta_equation(profile_tables):
    """Our limits are roots of zeta = -/+ z; lme4's (spline) limits are close to them."""
    case = "sleepstudy_corr_slope_ml"
    prof = Profiler(fitted_case(case))
    ci = profile_tables[case]
    ref = pd.DataFrame(reference(case)["results"]["confint_profile"]["table"]).set_index("param")
    for name in ["cor_Days.(Intercept)|Subject", "sigma", "Days"]:
        assert abs(prof.zeta(name, ci.loc[name, "lower"]) + Z975) < 1e-6
        assert abs(prof.zeta(name, ci.loc[name, "upper"]) - Z975) < 1e-6
        assert abs(prof.zeta(name, ref.loc[name, "upper"]) - Z975) < 1e-3
    assert abs(prof.zeta("Days", prof.estimates[-1])) < 1e-4  # optimiser noise only


def test_profile_reaches_the_boundary_of_a_singular_fit():
    fit = fitted_case("dyestuff2_ml")  # the batch variance is estimated as zero
    ci = fit.confint(method="profile", level=0.9)
    assert list(ci.columns) == ["lower", "upper"]
    assert ci.loc["sd_(Intercept)|Batch", "lower"] == 0.0
    assert 0 < ci.loc["sd_(Intercept)|Batch", "upper"] < np.inf
    est = fit.fixef["(Intercept)"]
    assert ci.loc["(Intercept)", "lower"] < est < ci.loc["(Intercept)", "upper"]


def test_wald_intervals():
    fit = fitted_case("sleepstudy_corr_slope_reml")
    ci = fit.confint()
    assert list(ci.index) == NAMES
    # lme4 gives no Wald interval for the variance parameters (memoe.inference.confint keeps lme4's NaN);
    # fit.confint() fills them with delta-method intervals (memoe.inference.varcomp)
    from memoe.inference import confint as lme4_confint

    assert lme4_confint(fit, method="wald").loc[NAMES[:4]].isna().all().all()
    assert np.isfinite(ci.loc[NAMES[:4]].to_numpy()).all()
    np.testing.assert_allclose(ci.loc[["(Intercept)", "Days"], "lower"], fit.fixef - Z975 * fit.bse, rtol=1e-12)
    np.testing.assert_allclose(ci.loc[["(Intercept)", "Days"], "upper"], fit.fixef + Z975 * fit.bse, rtol=1e-12)
    assert list(fit.confint(level=0.99).columns) == ["lower", "upper"]
    assert list(fit.confint(parm="beta_").index) == ["(Intercept)", "Days"]
    assert list(fit.confint(parm=["Days", "sigma"]).index) == ["Days", "sigma"]
    with pytest.raises(MemoeError, match="unknown parameter"):
        fit.confint(parm="Day")
    with pytest.raises(MemoeError, match=r"jackknife.*not available"):
        fit.confint(method="jackknife")


def test_bootstrap_reproducible_whatever_the_workers():
    fit = fitted_case("sleepstudy_corr_slope_reml")
    serial = bootstrap(fit, nsim=24, seed=42, n_jobs=1, progress=False)
    parallel = bootstrap(fit, nsim=24, seed=42, n_jobs=2, progress=False, chunksize=5)
    np.testing.assert_array_equal(serial.replicates.to_numpy(), parallel.replicates.to_numpy())
    assert serial.n_failed == 0 and list(serial.replicates.columns) == NAMES
    other = bootstrap(fit, nsim=24, seed=43, n_jobs=1, progress=False)
    assert not np.allclose(other.replicates.to_numpy(), serial.replicates.to_numpy())
    # the first replicates do not depend on how many are drawn
    short = bootstrap(fit, nsim=6, seed=42, n_jobs=1, progress=False)
    np.testing.assert_array_equal(short.replicates.to_numpy(), serial.replicates.to_numpy()[:6])
    # percentile intervals are the replicates' quantiles
    ci = serial.confint(level=0.8)
    np.testing.assert_allclose(ci["10 %"], serial.replicates.quantile(0.1), rtol=1e-12)
    np.testing.assert_allclose(ci["90 %"], serial.replicates.quantile(0.9), rtol=1e-12)


def test_bootstrap_simulates_from_the_fit():
    fit = fitted_case("sleepstudy_corr_slope_ml")
    boot = bootstrap(fit, nsim=40, seed=7, n_jobs=1, progress=False)
    np.testing.assert_allclose(boot.estimates, Profiler(fit).estimates, rtol=1e-10)
    means = boot.replicates.mean()
    # sigma has a tiny sampling SD (about 1.4 / sqrt(40)); the random-effect SD a larger one
    assert abs(means["sigma"] / fit.sigma - 1) < 0.02
    assert abs(means["sd_(Intercept)|Subject"] / boot.estimates["sd_(Intercept)|Subject"] - 1) < 0.2
    assert abs(means["Days"] - fit.fixef["Days"]) < 3 * boot.replicates["Days"].std() / np.sqrt(40)


def test_confint_bootstrap_method():
    fit = fitted_case("dyestuff_ml")
    ci = fit.confint(method="bootstrap", nsim=20, seed=1, n_jobs=1, progress=False, parm="theta_")
    assert list(ci.index) == ["sd_(Intercept)|Batch", "sigma"]
    assert np.all(ci["lower"] < ci["upper"])
    with pytest.raises(TypeError):
        fit.confint(method="profile", nsim=10)

"""Information criteria: formulas, the N convention (ML: sum n_i; REML: N - p) and lme4's BIC."""

from __future__ import annotations

import math

import pytest

from memoe.inference.criteria import information_criteria
from tests.conftest import fitted_case, reference


@pytest.mark.parametrize("case", ["sleepstudy_corr_slope_ml", "orthodont_lmer_ml", "pastes_ml"])
def test_ml_criteria(case):
    fit = fitted_case(case)
    ic = information_criteria(fit)
    k, n, ll = fit.df_model, fit.nobs, fit.loglik
    assert ic["N"] == n and ic["npar"] == k
    assert ic["AIC"] == pytest.approx(-2 * ll + 2 * k, abs=1e-9)
    assert ic["AICc"] == pytest.approx(-2 * ll + 2 * k + 2 * k * (k + 1) / (n - k - 1), abs=1e-9)
    assert ic["BIC"] == pytest.approx(-2 * ll + k * math.log(n), abs=1e-9)
    assert ic["HQIC"] == pytest.approx(-2 * ll + 2 * k * math.log(math.log(n)), abs=1e-9)
    assert ic["CAIC"] == pytest.approx(-2 * ll + k * (math.log(n) + 1), abs=1e-9)
    # ML: the same BIC as lme4 and R's reference
    ref = reference(case)["results"]
    assert ic["BIC"] == ic["BIC_lme4"]
    assert abs(ic["BIC"] - ref["bic"]) < 1e-5 and abs(ic["AIC"] - ref["aic"]) < 1e-5
    assert "sum n_i" in ic.convention


@pytest.mark.parametrize("case", ["sleepstudy_corr_slope_reml", "orthodont_lmer_reml"])
def test_reml_uses_n_minus_p(case):
    fit = fitted_case(case)
    ic = fit.information_criteria()
    k, n, p, ll = fit.df_model, fit.nobs, fit.design.p, fit.loglik
    assert ic["N"] == n - p
    assert ic["BIC"] == pytest.approx(-2 * ll + k * math.log(n - p), abs=1e-9)
    assert ic["CAIC"] == pytest.approx(-2 * ll + k * (math.log(n - p) + 1), abs=1e-9)
    assert ic["AICc"] == pytest.approx(-2 * ll + 2 * k + 2 * k * (k + 1) / (n - p - k - 1), abs=1e-9)
    # lme4's convention: log(nobs) for REML fits too (and the REML log-likelihood)
    ref = reference(case)["results"]
    assert ic["BIC_lme4"] == pytest.approx(fit.bic, abs=1e-9)
    assert abs(ic["BIC_lme4"] - ref["bic"]) < 1e-5
    assert ic["BIC"] < ic["BIC_lme4"]
    assert f"N = sum n_i - p = {n} - {p} = {n - p}" in ic.convention and "log(nobs)" in ic.convention
    assert "log(nobs)" in repr(ic)


def test_aicc_undefined_when_too_few_observations():
    from types import SimpleNamespace

    # the minimum interface information_criteria reads
    tiny = SimpleNamespace(loglik=-10.0, df_model=5, nobs=6, reml=False, method="ML", design=SimpleNamespace(p=1))
    ic = information_criteria(tiny)
    assert math.isinf(ic["AICc"]) and math.isfinite(ic["AIC"])

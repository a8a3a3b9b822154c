"""Golden tests: nlme's ``gls`` / ``lme`` with correlation and variance structures against our fits.

Two kinds of checks per case:

* *at R's parameters*: our objective evaluated at nlme's own estimates (theta and the unconstrained
  correlation parameters, which use the same transforms as nlme for AR1, CAR1 and Exp) must give
  nlme's log-likelihood, fixed effects and sigma to rounding (1e-8); this tests the likelihood
  formulas free of optimiser slack;
* *our optimum*: logLik within 1e-4 absolute, fixed effects within 1e-4 relative, standard errors
  within 1e-3, sigma, theta and structure parameters within 1e-3, AIC/BIC/df, the t table with nlme's
  df, the sequential and marginal F tables, BLUPs and fitted values (conditional and marginal).

Measured (this machine, after the fit; ours - nlme's logLik, then max relative differences):

=============================== ======== ======= ======= ======= ======= ======== =======
case                            dlogLik  fixef   SE      sigma   cor     var      theta
=============================== ======== ======= ======= ======= ======= ======== =======
bodyweight_gls_car1_ml          8.0e-11  6.5e-09 2.0e-06 2.0e-06 1.1e-08
bodyweight_gls_car1_reml        1.3e-12  9.7e-11 3.5e-08 3.5e-08 1.6e-10
ovary_lme_ar1_ml                1.1e-13  2.6e-09 1.5e-08 6.1e-09 1.1e-08          9.4e-09
ovary_lme_ar1_reml              1.1e-13  2.2e-09 9.9e-09 5.5e-09 9.1e-09          8.1e-10
orthodont_gls_mmrm_reml         1.3e-10  3.1e-13 8.9e-07 2.4e-07 1.1e-06 6.5e-07
bodyweight_lme_exp_nugget_ml    3.4e-11  2.5e-07 7.3e-07 3.2e-06 1.2e-05          4.7e-06
bodyweight_lme_exp_nugget_reml  6.5e-10  1.1e-07 6.0e-06 2.0e-06 5.7e-06          1.1e-05
=============================== ======== ======= ======= ======= ======= ======== =======

Our logLik is never below nlme's: the remaining differences are nlme stopping at its own tolerance
on flat directions (range/nugget of the exponential structure), not a different optimum.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest

from memoe.marginal import AR1, CAR1, Exp, Symm, VarIdent, gls, lme
from tests.conftest import r_matrix, reference, reference_data

OVARY = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)"

# case -> (constructor, formula, keyword arguments, reml)
CASES = {
    "bodyweight_gls_car1_ml": (gls, "weight ~ Time * Diet", {"correlation": CAR1("Time", "Rat")}, False),
    "bodyweight_gls_car1_reml": (gls, "weight ~ Time * Diet", {"correlation": CAR1("Time", "Rat")}, True),
    "ovary_lme_ar1_ml": (lme, OVARY, {"correlation": AR1()}, False),
    "ovary_lme_ar1_reml": (lme, OVARY, {"correlation": AR1()}, True),
    "orthodont_gls_mmrm_reml": (
        gls,
        "distance ~ C(age) * Sex",
        {"correlation": Symm("Subject"), "weights": VarIdent("age")},
        True,
    ),
    "bodyweight_lme_exp_nugget_ml": (
        lme,
        "weight ~ Time * Diet + (Time | Rat)",
        {"correlation": Exp("Time", nugget=True)},
        False,
    ),
    "bodyweight_lme_exp_nugget_reml": (
        lme,
        "weight ~ Time * Diet + (Time | Rat)",
        {"correlation": Exp("Time", nugget=True)},
        True,
    ),
}
NAMES = sorted(CASES)
# nlme's unconstrained scale equals ours for these structures (tanh(u/2), logistic, exp/logistic)
SAME_SCALE = [c for c in NAMES if "mmrm" not in c]


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-8)))


def model(case: str):
    make, formula, kwargs, _ = CASES[case]
    return make(formula, reference_data(case), **kwargs)


@cache
def fitted(case: str):
    return model(case).fit(reml=CASES[case][3])


def results(case: str) -> dict:
    return reference(case)["results"]


# ---------------------------------------------------------------------------- at R's parameters
@pytest.mark.parametrize("case", SAME_SCALE)
def test_objective_at_nlme_parameters(case):
    r = results(case)
    m = model(case)
    theta = list(r["theta"].values()) if r.get("theta") else []
    u = list(r["corStruct"]["params_unconstrained"].values())
    sol = m.problem.solve(np.array(theta + u, dtype=float), CASES[case][3])
    assert -0.5 * sol.deviance == pytest.approx(r["loglik"], abs=1e-8)
    assert _rel(sol.beta, list(r["fixef"].values())) < 1e-8
    assert sol.sigma == pytest.approx(r["sigma"], rel=1e-8)


# ---------------------------------------------------------------------------- our optimum
@pytest.mark.parametrize("case", NAMES)
def test_loglik_and_criteria(case):
    fit, r = fitted(case), results(case)
    assert fit.loglik == pytest.approx(r["loglik"], abs=1e-4)
    assert fit.loglik >= r["loglik"] - 1e-6
    assert fit.df_model == r["df"]
    assert fit.nobs == r["nobs"]
    assert fit.aic == pytest.approx(r["aic"], abs=2e-4)
    assert fit.bic == pytest.approx(r["bic"], abs=2e-4)


@pytest.mark.parametrize("case", NAMES)
def test_fixef_vcov_sigma(case):
    fit, r = fitted(case), results(case)
    assert _rel(fit.fixef, list(r["fixef"].values())) < 1e-4
    V = r_matrix(r["vcov"]).to_numpy()
    assert _rel(fit.bse, np.sqrt(np.diag(V))) < 1e-3
    assert _rel(fit.vcov().to_numpy(), V) < 2e-3
    assert fit.sigma == pytest.approx(r["sigma"], rel=1e-3)


@pytest.mark.parametrize("case", NAMES)
def test_structure_parameters(case):
    fit, r = fitted(case), results(case)
    cor = r["corStruct"]["params"]
    assert list(fit.cor_params.index) == list(cor)
    assert _rel(fit.cor_params, list(cor.values())) < 1e-3
    if r["varStruct"]:
        var = r["varStruct"]["params"]
        assert list(fit.var_params.index) == list(var)
        assert _rel(fit.var_params, list(var.values())) < 1e-3
    else:
        assert fit.var_params.empty


@pytest.mark.parametrize("case", NAMES)
def test_coef_table(case):
    fit, r = fitted(case), results(case)
    ref = pd.DataFrame(r["coef_table"])
    ct = fit.coef_table()
    assert _rel(ct["statistic"], ref["t_value"]) < 1e-3
    assert _rel(ct["p_value"], ref["p_value"]) < 2e-2  # tiny p-values amplify the t slack
    expected_df = ref["df"] if "df" in ref else np.full(len(ref), r["residual_df"])
    np.testing.assert_array_equal(ct["df"].to_numpy(), np.asarray(expected_df, dtype=float))


@pytest.mark.parametrize("case", NAMES)
def test_fitted_and_residuals(case):
    fit, r = fitted(case), results(case)
    y = np.asarray(r["fitted"]) + np.asarray(r["residuals"])
    scale = np.std(y)
    assert np.max(np.abs(fit.fitted.to_numpy() - np.asarray(r["fitted"]))) < 1e-4 * scale
    assert np.max(np.abs(fit.resid.to_numpy() - np.asarray(r["residuals"]))) < 1e-4 * scale
    if r.get("fitted_marginal"):
        assert np.max(np.abs(fit.fitted_marginal.to_numpy() - np.asarray(r["fitted_marginal"]))) < 1e-4 * scale


@pytest.mark.parametrize("case", NAMES)
@pytest.mark.parametrize("kind", ["sequential", "marginal"])
def test_anova_f_tables(case, kind):
    fit, r = fitted(case), results(case)
    ref = pd.DataFrame(r[f"anova_{kind}"])
    ours = fit.anova(kind)
    assert len(ours) == len(ref)
    np.testing.assert_array_equal(ours["numDF"].to_numpy(), ref["num_df"].to_numpy())
    den = ref["den_df"].to_numpy() if "den_df" in ref else np.full(len(ref), r["residual_df"])
    np.testing.assert_array_equal(ours["denDF"].to_numpy(), np.asarray(den, dtype=float))
    assert _rel(ours["F-value"], ref["f_value"]) < 1e-3


def _reference_intervals(r: dict) -> list[tuple[str, float, float, float]]:
    """(part, lower, est, upper) in nlme's order: fixed, reStruct, corStruct, varStruct, sigma."""
    out = [("fixed", x["lower"], x["est"], x["upper"]) for x in r["fixed"]]
    for lst in (r.get("reStruct") or {}).values():
        out += [("reStruct", x["lower"], x["est"], x["upper"]) for x in lst]
    out += [("corStruct", x["lower"], x["est"], x["upper"]) for x in r.get("corStruct") or []]
    out += [("varStruct", x["lower"], x["est"], x["upper"]) for x in r.get("varStruct") or []]
    out.append(("sigma", r["sigma"]["lower"], r["sigma"]["est"], r["sigma"]["upper"]))
    return out


@pytest.mark.parametrize("case", NAMES)
def test_intervals(case):
    """nlme's ``intervals(fit, which = "all")``.

    Fixed effects to 1e-3 of the interval width. Covariance parameters: Wald intervals from the
    Hessian of the log-likelihood on nlme's scales; nlme's Hessian is its own finite-difference
    approximation (``fdHess``), ours a central difference, so endpoints agree to ~1e-2 relative
    (measured worst 1.4e-2: the random-effects correlation of BodyWeight REML), not better.
    ``Symm`` correlations are excluded: nlme's spherical parametrisation differs from our
    partial-correlation one, so their Wald intervals differ by construction.
    """
    fit, r = fitted(case), results(case)["intervals"]
    ours = fit.intervals()
    ref = _reference_intervals(r)
    assert len(ours) == len(ref)
    for (part, lo, est, up), (key, row) in zip(ref, ours.iterrows(), strict=True):
        assert key[0] == part
        assert row["lower"] <= row["est."] <= row["upper"]
        if part == "fixed":
            width = up - lo
            assert abs(row["lower"] - lo) < 1e-3 * width and abs(row["upper"] - up) < 1e-3 * width
        elif not (part == "corStruct" and "mmrm" in case):
            assert row["est."] == pytest.approx(est, rel=1e-3)
            assert row["lower"] == pytest.approx(lo, rel=3e-2)
            assert row["upper"] == pytest.approx(up, rel=3e-2)


@pytest.mark.parametrize("case", NAMES)
@pytest.mark.parametrize("kind", ["CR0", "CR2"])
def test_cluster_robust_vcov(case, kind):
    """clubSandwich's ``vcovCR`` (clusters = the grouping factor); measured agreement 2e-6 or better."""
    fit, r = fitted(case), results(case)["clubSandwich"]
    ref = r_matrix(r[kind]).to_numpy()
    ours = fit.vcov(robust=kind).to_numpy()
    assert np.max(np.abs(ours - ref)) < 1e-4 * np.max(np.abs(ref))
    assert _rel(np.sqrt(np.diag(ours)), np.sqrt(np.diag(ref))) < 1e-4


@pytest.mark.parametrize("case", NAMES)
def test_example_correlation_matrix(case):
    """nlme's ``corMatrix`` of one group (visit order), at our estimates."""
    fit, r = fitted(case), results(case)
    ex = r["corStruct"]["example_corr_matrix"]
    ref = np.array(ex["matrix"]["values"], dtype=float)
    ours = fit.residual_correlation(ex["group"])
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) < 1e-4


LME_CASES = [c for c in NAMES if "lme" in c]


@pytest.mark.parametrize("case", LME_CASES)
def test_random_effects(case):
    fit, r = fitted(case), results(case)
    assert _rel(fit.theta, list(r["theta"].values())) < 1e-3
    vc = r["varcorr"][0]
    cov = r_matrix(vc["cov"])
    assert _rel(fit.ranef_cov.to_numpy(), cov.to_numpy()) < 2e-3
    ref = pd.DataFrame(next(iter(r["ranef"].values()))).set_index("group")
    ours = fit.ranef[fit.design.blocks[0].factor.name]
    assert [str(v) for v in ours.index] == list(ref.index)
    for col in ref.columns:
        scale = np.max(np.abs(ref[col]))
        assert np.max(np.abs(ours[col].to_numpy() - ref[col].to_numpy())) < 1e-3 * scale
    assert fit.ngroups.to_dict() == r["ngroups"]


def test_summary_layout():
    text = str(fitted("ovary_lme_ar1_reml").summary())
    assert text.startswith("Linear mixed-effects model fit by REML")
    assert "Correlation Structure: AR(1)" in text and "Phi" in text
    assert "Number of Observations: 308" in text
    text = str(fitted("orthodont_gls_mmrm_reml").summary())
    assert text.startswith("Generalized least squares fit by REML")
    assert "cor(1,2)" in text and "Different standard deviations per stratum" in text
    assert "Degrees of freedom: 108 total; 100 residual" in text

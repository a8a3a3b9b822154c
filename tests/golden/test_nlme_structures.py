"""Golden tests: nlme's variance functions and correlation structures (issue 11) against our gls / lme.

References: ``tools/reference/cases/nlme_structures.R`` (cases ``nlmes_*``): ``varPower`` of the fitted
values (gls and lme, ML and REML) and of a covariate by stratum, ``varExp``, ``varConstPower``,
``varFixed``, ``varComb``, ``corARMA(1, 1)`` and ``(2, 0)``, ``corGaus`` / ``corSpher`` / ``corLin`` /
``corRatio`` with and without nugget (BodyWeight, one coordinate, within Rat; Wheat2, two coordinates,
euclidean and manhattan).

Two kinds of checks, the "tight optimum" convention of ``test_marginal_reference.py``:

* *at nlme's parameters* (same unconstrained scales as nlme for every structure here): our objective
  and profiled estimates at nlme's optimum give nlme's log-likelihood (1e-6), fixed effects (1e-5
  relative) and sigma (1e-5); for a fitted-value covariate the covariate is nlme's final fitted values
  (the reference loops to tolerance 1e-10, so they are the fixed point);
* *our optimum*: our log-likelihood is never below nlme's by more than 1e-6 and within 1e-6 of it;
  fixed effects 1e-5, structure parameters and sigma 1e-5 (absolute for parameters below 1 in size),
  standard errors 1e-4 relative.

Documented exceptions (each measured, see ``SLACK``):

* fitted-value covariates: nlme's alternation stops when its inner ``nlminb`` optimum is imprecise
  (deviance gradient up to 2.5e-4 at nlme's point against 2e-6 at ours; both points reproduce their
  covariate as fitted values to 1e-9); our log-likelihood is then higher by up to 1.2e-6 and sigma /
  power differ by up to 6e-5 relative.
* ``varConstPower(~ age | Sex)``: ``const.Female`` runs to its boundary 0 (log scale to -inf); nlme
  stops at 2e-4, we at 1e-5, our log-likelihood 3e-6 higher; the other parameters agree to 5e-4.
* Wheat2 ``corSpher`` from Pinheiro & Bates' start ``c(28, 0.2)``: nlme stops at a local optimum
  0.19 below ours; the same fit started at ``c(36, 0.18)`` (``..._start36_reml``) reaches our optimum.
  Only the at-nlme-parameter checks and "ours is not lower" apply to the first.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest

from memoe.marginal import (
    AR1,
    ARMA,
    CompSymm,
    Gaus,
    Lin,
    Ratio,
    Spher,
    VarComb,
    VarConstPower,
    VarExp,
    VarFixed,
    VarIdent,
    VarPower,
    gls,
    lme,
)
from tests.conftest import r_matrix, reference, reference_data

OVARY = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time)"
ORTH = "distance ~ age * Sex"
BW = "weight ~ Time * Diet"

CASES: dict[str, tuple] = {}
for _reml, _m in ((True, "reml"), (False, "ml")):
    CASES[f"nlmes_orthodont_gls_varpower_fitted_{_m}"] = (gls, ORTH, {"weights": VarPower()}, _reml)
    CASES[f"nlmes_orthodont_gls_varexp_age_{_m}"] = (gls, ORTH, {"weights": VarExp("age")}, _reml)
    CASES[f"nlmes_bodyweight_lme_varpower_fitted_{_m}"] = (lme, BW + " + (Time | Rat)", {"weights": VarPower()}, _reml)
    CASES[f"nlmes_ovary_gls_arma11_{_m}"] = (gls, OVARY, {"correlation": ARMA(p=1, q=1, group="Mare")}, _reml)
    CASES[f"nlmes_ovary_lme_arma20_{_m}"] = (lme, OVARY + " + (1 | Mare)", {"correlation": ARMA(p=2)}, _reml)
CASES.update({
    "nlmes_orthodont_gls_varpower_age_by_sex_reml": (
        gls, ORTH, {"weights": VarPower("age", by="Sex"), "correlation": CompSymm("Subject")}, True),
    "nlmes_orthodont_gls_varconstpower_age_by_sex_reml": (
        gls, ORTH, {"weights": VarConstPower("age", by="Sex")}, True),
    "nlmes_orthodont_gls_varfixed_age_reml": (gls, ORTH, {"weights": VarFixed("age")}, True),
    "nlmes_orthodont_gls_varcomb_reml": (
        gls, ORTH, {"weights": VarComb(VarIdent("Sex"), VarPower("age"))}, True),
    "nlmes_orthodont_lme_varexp_age_by_sex_ml": (
        lme, ORTH + " + (1 | Subject)", {"weights": VarExp("age", by="Sex")}, False),
    "nlmes_bodyweight_lme_gaus_nugget_reml": (
        lme, BW + " + (1 | Rat)", {"correlation": Gaus("Time", nugget=True)}, True),
    "nlmes_bodyweight_lme_lin_ml": (lme, BW + " + (1 | Rat)", {"correlation": Lin("Time")}, False),
    "nlmes_wheat2_gls_spher_nugget_reml": (
        gls, "yield ~ 0 + variety", {"correlation": Spher("latitude", "longitude", group=None, nugget=True)}, True),
    "nlmes_wheat2_gls_ratio_nugget_manhattan_reml": (
        gls, "yield ~ 0 + variety",
        {"correlation": Ratio(("latitude", "longitude"), nugget=True, metric="manhattan")}, True),
})
for _cls, _name, _nug, _reml in (
    (Gaus, "gaus", False, False), (Gaus, "gaus", True, True), (Spher, "spher", False, True),
    (Spher, "spher", True, False), (Lin, "lin", False, False), (Lin, "lin", True, True),
    (Ratio, "ratio", False, True), (Ratio, "ratio", True, False),
):
    _case = f"nlmes_bodyweight_gls_{_name}{'_nugget' if _nug else ''}_{'reml' if _reml else 'ml'}"
    CASES[_case] = (gls, BW, {"correlation": _cls("Time", "Rat", nugget=_nug)}, _reml)
CASES["nlmes_wheat2_gls_spher_nugget_start36_reml"] = CASES["nlmes_wheat2_gls_spher_nugget_reml"]
CASES.update({
    "nlmes_bodyweight_lme_varexp_fitted_ml": (lme, BW + " + (1 | Rat)", {"weights": VarExp()}, False),
    "nlmes_ovary_gls_arma01_reml": (gls, OVARY, {"correlation": ARMA(q=1, group="Mare")}, True),
    "nlmes_ovary_lme_arma11_ml": (lme, OVARY + " + (1 | Mare)", {"correlation": ARMA(p=1, q=1)}, False),
    "nlmes_bodyweight_lme_ratio_nugget_reml": (
        lme, BW + " + (1 | Rat)", {"correlation": Ratio("Time", nugget=True)}, True),
    "nlmes_orthodont_gls_ar1_varpower_fitted_ml": (
        gls, ORTH, {"correlation": AR1("Subject"), "weights": VarPower()}, False),
    "nlmes_bodyweight_gls_gaus_varpower_time_reml": (
        gls, BW, {"correlation": Gaus("Time", "Rat"), "weights": VarPower("Time")}, True),
})
NAMES = sorted(CASES)
# case -> (log-likelihood slack, relative slack of structure parameters and sigma, parameters not compared)
SLACK = {
    # SD = sigma |fitted|^power with fitted values 17-32: sigma and power trade along a ridge; nlme stops
    # 2.5e-5 (relative) along it, its log-likelihood 1.7e-8 below ours
    "nlmes_orthodont_gls_varpower_fitted_ml": (1e-6, 1e-4, ()),
    "nlmes_bodyweight_lme_varpower_fitted_reml": (1e-6, 1e-4, ()),
    # nlme's inner optimum: deviance gradient 2.5e-4 at its point, its log-likelihood 1.2e-6 below ours
    "nlmes_orthodont_gls_ar1_varpower_fitted_ml": (2e-6, 1e-4, ()),
    "nlmes_orthodont_gls_varconstpower_age_by_sex_reml": (1e-5, 1e-3, ("const.Female",)),
}
# nlme stopped at a local optimum below ours
LOCAL_OPTIMUM = {"nlmes_wheat2_gls_spher_nugget_reml"}
OPTIMUM = [c for c in NAMES if c not in LOCAL_OPTIMUM]


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-8))) if a.size else 0.0


def model(case: str):
    make, formula, kwargs, _ = CASES[case]
    return make(formula, reference_data(case), **kwargs)


@cache
def fitted(case: str):
    return model(case).fit(reml=CASES[case][3])


def results(case: str) -> dict:
    return reference(case)["results"]


def _at_nlme(case: str):
    """Our profiled solution at nlme's optimum (its unconstrained parameters, its fitted covariate)."""
    r = results(case)
    m = model(case)
    P = m.problem
    theta = list(r["theta"].values()) if r.get("theta") else []
    u = list(r["corStruct"]["params_unconstrained"].values()) if r.get("corStruct") else []
    v = list(r["varStruct"]["params_unconstrained"].values()) if r.get("varStruct") else []
    if P.var is not None and P.var.needs_fitted:
        P.var = P.var.with_fitted(np.asarray(r["fitted"], dtype=float))
    return P.solve(np.array(theta + u + v, dtype=float), CASES[case][3])


# ---------------------------------------------------------------------------- at nlme's parameters
@pytest.mark.parametrize("case", NAMES)
def test_objective_at_nlme_parameters(case):
    r = results(case)
    sol = _at_nlme(case)
    assert -0.5 * sol.deviance == pytest.approx(r["loglik"], abs=1e-6)
    assert _rel(sol.beta, list(r["fixef"].values())) < 1e-5
    assert sol.sigma == pytest.approx(r["sigma"], rel=1e-5)


# ---------------------------------------------------------------------------- our optimum
@pytest.mark.parametrize("case", NAMES)
def test_not_below_nlme(case):
    assert fitted(case).loglik >= results(case)["loglik"] - 1e-6


@pytest.mark.parametrize("case", OPTIMUM)
def test_loglik_and_criteria(case):
    fit, r = fitted(case), results(case)
    slack = SLACK.get(case, (1e-6, 1e-5, ()))[0]
    assert fit.loglik == pytest.approx(r["loglik"], abs=slack)
    assert fit.df_model == r["df"]
    assert fit.nobs == r["nobs"]
    assert fit.aic == pytest.approx(r["aic"], abs=2 * slack)
    assert fit.bic == pytest.approx(r["bic"], abs=2 * slack)


@pytest.mark.parametrize("case", OPTIMUM)
def test_fixef_se_sigma(case):
    fit, r = fitted(case), results(case)
    assert _rel(fit.fixef, list(r["fixef"].values())) < 1e-5
    V = r_matrix(r["vcov"]).to_numpy()
    assert _rel(fit.bse, np.sqrt(np.diag(V))) < 1e-4
    assert fit.sigma == pytest.approx(r["sigma"], rel=SLACK.get(case, (1e-6, 1e-5, ()))[1])


@pytest.mark.parametrize("case", OPTIMUM)
def test_structure_parameters(case):
    fit, r = fitted(case), results(case)
    _, tol, skip = SLACK.get(case, (1e-6, 1e-5, ()))
    for ours, key in ((fit.cor_params, "corStruct"), (fit.var_params, "varStruct")):
        ref = (r.get(key) or {}).get("params") or {}
        assert list(ours.index) == list(ref), key
        keep = [k for k in ref if k not in skip]
        ref_v = np.array([ref[k] for k in keep], dtype=float)
        # parameters below 1 in size absolutely, ranges / powers relative to their size
        assert np.all(np.abs(ours[keep].to_numpy() - ref_v) <= tol * np.maximum(np.abs(ref_v), 1.0)), key


@pytest.mark.parametrize("case", OPTIMUM)
def test_fitted_values(case):
    fit, r = fitted(case), results(case)
    ref = np.asarray(r["fitted"], dtype=float)
    assert np.max(np.abs(fit.fitted.to_numpy() - ref)) < 1e-5 * np.std(ref)


@pytest.mark.parametrize("case", [c for c in OPTIMUM if "wheat2" not in c])
def test_example_correlation_matrix(case):
    """nlme's ``corMatrix`` of the largest group, at our estimates."""
    r = results(case)
    if not r.get("corStruct"):
        pytest.skip("no correlation structure")
    ex = r["corStruct"]["example_corr_matrix"]
    ref = np.array(ex["matrix"]["values"], dtype=float)
    ours = fitted(case).residual_correlation(ex["group"])
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) < 1e-5


def test_summary_prints_nlme_blocks():
    text = str(fitted("nlmes_ovary_gls_arma11_reml").summary())
    assert "Correlation Structure: ARMA(1,1)" in text and "Phi1" in text and "Theta1" in text
    text = str(fitted("nlmes_orthodont_gls_varpower_fitted_reml").summary())
    assert "Structure: Power of variance covariate" in text and "Formula: ~fitted(.)" in text
    assert "power" in text
    text = str(fitted("nlmes_orthodont_gls_varcomb_reml").summary())
    assert "Combination of variance functions:" in text and "Formula: ~age" in text
    text = str(fitted("nlmes_bodyweight_gls_spher_nugget_ml").summary())
    assert "Spherical spatial correlation" in text and "nugget" in text


def test_tidy_lists_structure_parameters():
    fit = fitted("nlmes_orthodont_gls_varpower_age_by_sex_reml")
    td = fit.tidy()
    terms = list(td["term"])
    assert "varPower(Male)" in terms and "varPower(Female)" in terms and "Rho" in terms
    row = td.set_index("term").loc["varPower(Male)"]
    assert row["estimate"] == pytest.approx(fit.var_params["Male"])
    assert isinstance(fit.glance(), pd.DataFrame)


# power of a covariate with a narrow range (age 8-14, fitted values 17-32) is nearly confounded with
# log sigma: the Wald intervals then hinge on the finite-difference Hessian along a ridge, where nlme's
# fdHess and our central differences differ by 10-15% of the width (measured); not compared
RIDGE_INTERVALS = {
    "nlmes_orthodont_gls_varcomb_reml",
    "nlmes_orthodont_gls_varpower_fitted_reml",
    "nlmes_orthodont_gls_ar1_varpower_fitted_ml",
}


@pytest.mark.parametrize("case", OPTIMUM)
def test_structure_intervals(case):
    """nlme's ``intervals``: Wald limits on the unconstrained scale mapped as a whole vector (ARMA's map is
    not elementwise). Both Hessians are finite differences: endpoints within 3% of the interval width
    (measured worst 2.5% outside ``RIDGE_INTERVALS``). The Hessian steps of variance parameters are scaled so a
    step moves the log SD ratios by 1e-3 (varExp of fitted values near 400 needs steps 400 times smaller)."""
    iv = results(case)["intervals"]
    if not iv.get("available"):
        pytest.skip(f"nlme gives no intervals: {iv.get('reason')}")
    ours = fitted(case).intervals()
    parts = ("corStruct",) if case in RIDGE_INTERVALS else ("corStruct", "varStruct")
    for part in parts:
        for x in iv.get(part) or []:
            row = ours.loc[(part, x["param"])]
            width = x["upper"] - x["lower"]
            assert abs(row["lower"] - x["lower"]) <= 3e-2 * width, (part, x["param"])
            assert abs(row["upper"] - x["upper"]) <= 3e-2 * width, (part, x["param"])

"""GEE against geepack 1.3.9 ``geeglm(distance ~ age * Sex, id = Subject, data = Orthodont, ...)``.

memoe.gee replays geepack's algorithm (start, update order, moment estimators, stopping rule
``max |change| <= 1e-4``), so every reference quantity is met to rounding, far inside the targets
(coefficients 1e-6, robust SEs 1e-5, alpha and scale 1e-5 relative). Measured largest relative
differences (exchangeable / AR(1)):

* coefficients 7.3e-15 / 7.3e-15; robust SEs 6.9e-15 / 2.0e-14; naive SEs 4.0e-15 / 9.7e-15;
  robust and naive covariance matrices (entries relative to sqrt(v_ii v_jj)) 1.4e-14 / 4.0e-14;
* alpha 0 / 0; alpha SE 4.4e-16 / 2.2e-16; scale 2.2e-16 / 2.2e-16; scale SE 0 / 4.4e-16;
* Wald 2.7e-14 / 4.3e-14; fitted values 4.4e-16 / 3.3e-16 (residuals 1e-14 absolute);
* QIC, QICu, quasi-likelihood, QICC below 2e-15, CIC 4e-14 / 5e-14.

Why the trajectory matters: for AR(1) the exact root of the estimating equations (``tol=1e-12``)
lies 2.0e-6 (relative) from geepack's coefficients, 2.7e-7 in alpha and 2.5e-8 in the robust SEs;
``test_ar1_needs_geepack_stopping_rule`` keeps that measured, so a tolerance-free implementation
would fail the 1e-6 target.

Differences kept on purpose (measured, tested with the stated tolerance):

* ``Pr(>|W|)``: geepack computes ``1 - pchisq(W, 1)``, which cancels below ~1e-12 (0 for the
  intercept, 1.554e-15 for ``age``, where the accurate value is 1.517e-15); memoe uses the
  chi-square survival function. They agree to 7e-15 absolute (from the Wald rounding).
* ``QICC``: geepack 1.3.9's correction divides by (clusters - kpm - 1) (its value equals
  QIC + 60/21 here); memoe does the same, so it matches to rounding (a geepack ``qic.R`` read for
  this module divides by the number of observations, 102 here, instead).

The scale is sum(r^2) / N, not / (N - p): geepack's Fisher step for the dispersion with the identity
scale link has that fixed point (``update_gamma`` in gee2.cc); ``test_scale_denominator_is_n``
checks it against the reference residuals, independently of memoe's code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memoe.gee import gee
from tests.conftest import r_matrix, reference, reference_data

CASES = {"orthodont_gee_exchangeable": "exchangeable", "orthodont_gee_ar1": "ar1"}


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _fit(case: str, **kw):
    return gee("distance ~ age * Sex", reference_data(case), group="Subject", corstr=CASES[case]).fit(**kw)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    return request.param


@pytest.fixture(scope="module")
def fitted(case):
    return _fit(case)


def test_design_and_sizes(case, fitted):
    ref = reference(case)["results"]
    assert list(fitted.params.index) == list(ref["coefficients"])
    assert fitted.nobs == ref["nobs"]
    assert fitted.ngroups["Subject"] == ref["n_clusters"]
    assert fitted.max_cluster_size == ref["max_cluster_size"]
    assert fitted.converged
    assert fitted.model.corstr == ref["corstr"]


def test_coefficients(case, fitted):
    ref = pd.Series(reference(case)["results"]["coefficients"])
    assert _rel(fitted.params[ref.index], ref) < 1e-6


def test_robust_and_naive_covariances(case, fitted):
    res = reference(case)["results"]
    assert _rel(fitted.bse, pd.Series(res["robust_se"])[fitted.bse.index]) < 1e-5
    assert _rel(fitted.coef_table(robust="naive")["std_error"], pd.Series(res["naive_se"])[fitted.bse.index]) < 1e-5
    for ours, key in ((fitted.vcov(), "vcov_robust"), (fitted.vcov("naive"), "vcov_naive")):
        ref = r_matrix(res[key])
        # off-diagonal entries are O(1) relative to the diagonal, so compare on the diagonal scale
        scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
        assert np.max(np.abs(ours.loc[ref.index, ref.columns].to_numpy() - ref.to_numpy()) / scale) < 1e-6


def test_correlation_and_scale(case, fitted):
    res = reference(case)["results"]
    assert _rel(fitted.alpha["alpha"], res["working_correlation"]["alpha"]) < 1e-5
    assert _rel(fitted.scale, res["scale"]["(Intercept)"]) < 1e-5
    assert _rel(fitted.alpha_se["alpha"], res["working_correlation_se"]["alpha"]) < 1e-5
    assert _rel(fitted.scale_se, res["scale_se"]["(Intercept)"]) < 1e-5
    R = fitted.working_correlation
    a = res["working_correlation"]["alpha"]
    expected = a ** abs(1 - 4) if CASES[case] == "ar1" else a
    assert R.shape == (4, 4)
    assert R.loc[1, 4] == pytest.approx(expected, rel=1e-5)


def test_coef_table(case, fitted):
    ref = pd.DataFrame(reference(case)["results"]["coef_table"]).set_index("term")
    tab = fitted.coef_table()
    assert list(tab.columns) == ["estimate", "std_error", "statistic", "df", "p_value"]
    assert _rel(tab["estimate"], ref["estimate"]) < 1e-6
    assert _rel(tab["std_error"], ref["std_error"]) < 1e-5
    assert _rel(tab["statistic"], ref["wald"]) < 1e-5
    # geepack's 1 - pchisq() cancels for tiny p (module docstring)
    assert np.max(np.abs(tab["p_value"] - ref["p_value"])) < 1e-12


def test_fitted_and_residuals(case, fitted):
    res = reference(case)["results"]
    assert _rel(fitted.fitted, res["fitted"]) < 1e-8
    assert np.max(np.abs(fitted.resid.to_numpy() - np.asarray(res["residuals"]))) < 1e-8


def test_qic(case, fitted):
    ref = reference(case)["results"]["qic"]
    ours = fitted.qic()
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, rel=1e-8), key


def test_summary_reports_reference_numbers(case, fitted):
    text = str(fitted.summary())
    res = reference(case)["results"]
    assert f"Correlation structure = {CASES[case]} " in text
    assert "Number of clusters:   27  Maximum cluster size: 4" in text
    assert f"{res['working_correlation']['alpha']:.4f}" in text
    assert f"{res['scale']['(Intercept)']:.3f}" in text
    for term in res["coefficients"]:
        assert term in text


def test_scale_denominator_is_n(case):
    """geepack's dispersion is the mean squared Pearson residual (N, not N - p), from the reference alone."""
    res = reference(case)["results"]
    r = np.asarray(res["residuals"])
    assert res["scale"]["(Intercept)"] == pytest.approx(np.sum(r**2) / len(r), rel=1e-12)
    assert res["scale"]["(Intercept)"] != pytest.approx(np.sum(r**2) / (len(r) - 4), rel=1e-3)


def test_ar1_needs_geepack_stopping_rule():
    """The exact root differs from geepack's reported AR(1) fit by more than the 1e-6 target."""
    case = "orthodont_gee_ar1"
    ref = pd.Series(reference(case)["results"]["coefficients"])
    exact = _fit(case, tol=1e-12)
    gap = _rel(exact.params[ref.index], ref)
    assert 1e-6 < gap < 1e-5
    assert _rel(_fit(case).params[ref.index], ref) < 1e-12

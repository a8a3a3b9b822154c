"""Kenward-Roger on the marginal path (``gls`` / ``lme`` with residual structures, MMRM) against R.

There is no R mmrm package on the reference machine, so ``tools/reference/cases/kenward_roger_marginal.R``
applies pbkrtest's Kenward-Roger algebra densely (N x N) to the marginal model of each nlme fit, with
numerical derivatives of V in memoe's parameterisation, and pbkrtest's own ``Lb_ddf`` / ``.KR_adjust``
for the df and F scaling. Two kinds of check:

* **lmer-equivalent models** (gls with compound symmetry = lmer ``(1 | Subject)``; lme with random
  intercept and slope only): ``"kenward-roger-linear"`` against ``pbkrtest::vcovAdj`` / ``Lb_ddf`` /
  ``KRmodcomp`` on the lmer fit (tight lme4 refit): adjusted SEs 1e-5, df 1e-4 relative (the task's).
* **the marginal algebra** (unstructured + varIdent, AR(1), with missed visits, groups of several
  sizes, lme + AR(1)): both variants' SEs, the df and the F tests of every term. nlme's optimum
  and ours differ by the optimisers' slack (up to ~5e-6 in the SEs of the unstructured fit); the
  tolerance is the task's plus four times the drift the two optima show in the *unadjusted* SEs and
  estimates, measured per case.

Measured on this machine (max relative difference, ours vs R):

==================================== ======= ======= ======= ======= =======
case                                 se      se_kr   se_lin  df      F
==================================== ======= ======= ======= ======= =======
kr_orthodont_gls_symm_varident       4.6e-6  4.7e-6  4.6e-6  1e-14   1.6e-5
kr_orthodont_gls_symm_missing_visits 5.1e-7  5.2e-7  5.1e-7  5.7e-8  1.4e-6
kr_orthodont_gls_ar1                 1.7e-9  1.7e-9  1.6e-9  1.7e-9  1.5e-8
kr_ovary_gls_ar1                     1.5e-8  1.5e-8  1.5e-8  2.0e-8  1.7e-8
kr_orthodont_lme_ar1                 8.3e-8  8.6e-8  8.1e-8  9.1e-8  3.7e-7
kr_orthodont_gls_cs (pbkrtest)               2.1e-8 (linear)     1.7e-9
kr_sleepstudy_lme_slope (pbkrtest)           3.0e-9 (both)       1.5e-14
==================================== ======= ======= ======= ======= =======

``information="observed"`` (W from the Hessian of the REML criterion, R's mmrm convention) against the
same algebra with R's central-difference Hessian: SEs within 5.5e-6, df within 1.1e-5 (the unstructured
fit, whose optimum is the loosest), 1e-7 or better elsewhere.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

import memoe
from memoe.errors import ArgumentError, HypothesisError
from memoe.marginal import AR1, CompSymm, Symm, VarIdent, gls, lme
from tests.conftest import reference, reference_data

DROPPED = (4, 7, 14, 22, 35, 61, 78, 90, 103)  # 1-based rows of Orthodont dropped in the missed-visits case
OVARY = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time)"


def _unbalanced(df):
    df = df.copy()
    df["visit"] = (df["age"] / 2 - 3).astype(int)
    return df.drop(df.index[[i - 1 for i in DROPPED]]).reset_index(drop=True)


# case -> (constructor, formula, keyword arguments, data transform)
CASES = {
    "kr_orthodont_gls_symm_varident": (
        gls, "distance ~ age * Sex", {"correlation": Symm("Subject"), "weights": VarIdent("age")}, None,
    ),
    "kr_orthodont_gls_symm_missing_visits": (
        gls,
        "distance ~ age * Sex",
        {"correlation": Symm("Subject", visit="visit"), "weights": VarIdent("age")},
        _unbalanced,
    ),
    "kr_orthodont_gls_ar1": (gls, "distance ~ age * Sex", {"correlation": AR1("Subject")}, None),
    "kr_orthodont_gls_cs": (gls, "distance ~ age * Sex", {"correlation": CompSymm("Subject")}, None),
    "kr_ovary_gls_ar1": (gls, OVARY, {"correlation": AR1("Mare")}, None),
    "kr_sleepstudy_lme_slope": (lme, "Reaction ~ Days + (Days | Subject)", {}, None),
    "kr_orthodont_lme_ar1": (lme, "distance ~ age * Sex + (1 | Subject)", {"correlation": AR1()}, None),
}
NAMES = sorted(CASES)
PBKRTEST = [c for c in NAMES if "pbkrtest_lmer" in reference(c)["results"]]
VARIANTS = ("kenward-roger", "kenward-roger-linear")


@cache
def fitted(case: str):
    make, formula, kwargs, transform = CASES[case]
    data = reference_data(case)
    if transform is not None:
        data = transform(data)
    return make(formula, data, **kwargs).fit()


def _rel(a, b) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.abs(a - b) / np.abs(b)


def _drift(case: str) -> float:
    """How far apart nlme's optimum and ours are, seen in the unadjusted SEs and the estimates."""
    fit = fitted(case)
    k = reference(case)["results"]["kenward_roger_marginal"]["coef"]
    se = np.sqrt(np.diag(fit.kenward_roger().Phi))
    d_se = _rel(se, k["se"]).max()
    d_beta = (np.abs(fit.fixef.to_numpy() - np.asarray(k["estimate"])) / np.asarray(k["se"])).max()
    return float(max(d_se, d_beta))


@pytest.mark.parametrize("case", NAMES)
def test_coef_table_against_marginal_algebra(case):
    fit = fitted(case)
    k = reference(case)["results"]["kenward_roger_marginal"]
    drift = _drift(case)
    tol_se, tol_df = 1e-5 + 4 * drift, 1e-4 + 4 * drift
    assert len(fit.design.fixef_names) == len(k["coef"]["term"])  # the same columns in R's order
    for ddf, key in zip(VARIANTS, ("se_kr", "se_kr_linear"), strict=True):
        table = fit.coef_table(ddf=ddf)
        assert table.attrs["ddf"] == ddf
        np.testing.assert_allclose(table["std_error"], k["coef"][key], rtol=tol_se, err_msg=f"{case} {ddf} SE")
        np.testing.assert_allclose(table["df"], k["coef"]["df"], rtol=tol_df, err_msg=f"{case} {ddf} df")
        np.testing.assert_allclose(table["statistic"], table["estimate"] / table["std_error"], rtol=1e-12)


@pytest.mark.parametrize("case", NAMES)
def test_f_tests_against_marginal_algebra(case):
    fit = fitted(case)
    k = reference(case)["results"]["kenward_roger_marginal"]
    drift = _drift(case)
    for t in k["ftests"]:
        L = np.array(t["L"]["values"], dtype=float)
        for ddf, key in zip(VARIANTS, ("F_kr", "F_kr_linear"), strict=True):
            res = fit.test(L, ddf=ddf)
            assert res["NumDF"].iloc[0] == t["ndf"]
            assert res["F value"].iloc[0] == pytest.approx(t[key], rel=1e-5 + 4 * drift), (case, t["label"], ddf)
            assert res["DenDF"].iloc[0] == pytest.approx(t["ddf"], rel=1e-4 + 4 * drift), (case, t["label"], ddf)


@pytest.mark.parametrize("case", NAMES)
def test_observed_information_against_marginal_algebra(case):
    """information="observed": W from the Hessian of the REML criterion (R's mmrm convention); R takes
    that Hessian by central differences of the dense criterion."""
    fit = fitted(case)
    o = reference(case)["results"]["kenward_roger_marginal"]["observed_information"]
    drift = _drift(case)
    for ddf, key in zip(VARIANTS, ("se_kr", "se_kr_linear"), strict=True):
        table = fit.coef_table(ddf=ddf, information="observed")
        np.testing.assert_allclose(table["std_error"], o[key], rtol=1e-5 + 4 * drift, err_msg=f"{case} {ddf}")
        np.testing.assert_allclose(table["df"], o["df"], rtol=1e-4 + 4 * drift, err_msg=f"{case} {ddf} df")
    L_by_label = {
        t["label"]: np.array(t["L"]["values"], dtype=float)
        for t in reference(case)["results"]["kenward_roger_marginal"]["ftests"]
    }
    for t in o["ftests"]:
        for ddf, key in zip(VARIANTS, ("F_kr", "F_kr_linear"), strict=True):
            res = fit.test(L_by_label[t["label"]], ddf=ddf, information="observed")
            assert res["F value"].iloc[0] == pytest.approx(t[key], rel=1e-5 + 4 * drift), (case, t["label"], ddf)
            assert res["DenDF"].iloc[0] == pytest.approx(t["ddf"], rel=1e-4 + 4 * drift), (case, t["label"], ddf)
    # observed and expected information give different numbers (so the test above can fail), except for
    # the balanced designs whose covariance is linear in the natural variance components (compound symmetry,
    # random intercept and slope), where the two coincide at the REML optimum
    k = reference(case)["results"]["kenward_roger_marginal"]["coef"]
    differ = _rel(o["df"], k["df"]).max() > 1e-5 or _rel(o["se_kr"], k["se_kr"]).max() > 1e-5
    assert differ == (case not in PBKRTEST)


@pytest.mark.parametrize("case", NAMES)
def test_the_adjustment_is_visible(case):
    """The reference adjustment is far above the tolerance (so the tests above can fail), except where
    R's own algebra says it vanishes."""
    k = reference(case)["results"]["kenward_roger_marginal"]["coef"]
    adj = _rel(k["se_kr"], k["se"]).max()
    if case == "kr_sleepstudy_lme_slope":  # balanced random-slope design: pbkrtest's adjustment ~ 0
        assert adj < 1e-8
    else:
        assert adj > 1e-3


@pytest.mark.parametrize("case", PBKRTEST)
def test_linear_variant_against_pbkrtest_on_the_lmer_fit(case):
    fit = fitted(case)
    pb = reference(case)["results"]["pbkrtest_lmer"]
    table = fit.coef_table(ddf="kenward-roger-linear")
    np.testing.assert_allclose(table["std_error"], pb["se_kr"], rtol=1e-5)
    np.testing.assert_allclose(table["df"], pb["df_kr"], rtol=1e-4)
    k = reference(case)["results"]["kenward_roger_marginal"]
    for t, tp in zip(k["ftests"], pb["ftests"], strict=True):
        res = fit.test(np.array(t["L"]["values"], dtype=float), ddf="Kenward-Roger-Linear")
        assert res["F value"].iloc[0] == pytest.approx(tp["F"], rel=1e-5)
        assert res["DenDF"].iloc[0] == pytest.approx(tp["ddf"], rel=1e-4)


def test_random_effects_only_lme_is_linear_and_equals_lmm():
    """V is linear in (G entries, sigma^2): the R term vanishes, both variants are pbkrtest's, and
    equal memoe.lmm's Kenward-Roger on the same model."""
    fit = fitted("kr_sleepstudy_lme_slope")
    a, b = fit.coef_table(ddf="kenward-roger"), fit.coef_table(ddf="kenward-roger-linear")
    np.testing.assert_allclose(a["std_error"], b["std_error"], rtol=1e-9)
    np.testing.assert_allclose(a["df"], b["df"], rtol=1e-12)
    lmm = memoe.lmm("Reaction ~ Days + (Days | Subject)", reference_data("kr_sleepstudy_lme_slope")).fit()
    c = lmm.coef_table(ddf="kenward-roger")
    np.testing.assert_allclose(a["std_error"], c["std_error"], rtol=1e-5)
    np.testing.assert_allclose(a["df"], c["df"], rtol=1e-4)


def test_compound_symmetry_gls_equals_random_intercept_lme():
    """gls + compound symmetry and lme (1 | Subject) are one marginal model; the linear variant does not
    depend on the parameterisation, so the two agree (the full variant differs: Rho enters V nonlinearly)."""
    cs = fitted("kr_orthodont_gls_cs")
    ri = lme("distance ~ age * Sex + (1 | Subject)", reference_data("kr_orthodont_gls_cs")).fit()
    a = cs.coef_table(ddf="kenward-roger-linear")
    for ddf in VARIANTS:  # the random intercept is linear: both variants equal
        b = ri.coef_table(ddf=ddf)
        np.testing.assert_allclose(a["std_error"], b["std_error"], rtol=1e-5)
        np.testing.assert_allclose(a["df"], b["df"], rtol=1e-4)
    full = cs.coef_table(ddf="kenward-roger")
    assert _rel(full["std_error"], a["std_error"]).max() > 1e-3


def test_confint_anova_summary_and_aliases():
    fit = fitted("kr_orthodont_gls_symm_varident")
    ct = fit.coef_table(ddf="kenward-roger")
    for alias in ("kr", "KR", "Kenward-Roger", "kenward_roger"):
        np.testing.assert_array_equal(fit.coef_table(ddf=alias)["std_error"], ct["std_error"])
    lin = fit.coef_table(ddf="kenward-roger-linear")
    for alias in ("Kenward-Roger-Linear", "kr_linear", "kenward_roger_linear"):
        np.testing.assert_array_equal(fit.coef_table(ddf=alias)["std_error"], lin["std_error"])
    from scipy import stats

    ci = fit.confint(0.9, ddf="kr")
    q = stats.t.ppf(0.95, ct["df"])
    np.testing.assert_allclose(ci["lower"], ct["estimate"] - q * ct["std_error"], rtol=1e-12)
    np.testing.assert_allclose(ci["upper"], ct["estimate"] + q * ct["std_error"], rtol=1e-12)
    # anova: each term's columns = 0, the F tests of the reference
    k = reference("kr_orthodont_gls_symm_varident")["results"]["kenward_roger_marginal"]
    tab = fit.anova(ddf="kenward-roger")
    assert tab.attrs["ddf"] == "kenward-roger"
    by_label = {t["label"]: t for t in k["ftests"]}
    for term, column in (("age", "age"), ("Sex", "SexFemale"), ("age:Sex", "age:SexFemale")):
        ref = by_label[column]
        assert tab.loc[term, "F-value"] == pytest.approx(ref["F_kr"], rel=1e-4)
        assert tab.loc[term, "denDF"] == pytest.approx(ref["ddf"], rel=1e-4)
        assert tab.loc[term, "p-value"] == pytest.approx(stats.f.sf(ref["F_kr"], 1, ref["ddf"]), rel=1e-3)
    with pytest.raises(ArgumentError, match="marginal"):
        fit.anova(type="sequential", ddf="kr")
    # nlme's default anova unchanged
    assert list(fit.anova().columns) == ["numDF", "denDF", "F-value", "p-value"]
    text = str(fit.summary(ddf="kenward-roger"))
    assert "kenward-roger" in text and "DF" in text
    np.testing.assert_array_equal(fit.summary(ddf="kr").tables["coefficients"]["std_error"], ct["std_error"])


def test_refusals():
    fit = fitted("kr_orthodont_gls_ar1")
    with pytest.raises(ArgumentError, match="robust"):
        fit.coef_table(ddf="kenward-roger", robust="CR2")
    with pytest.raises(ArgumentError, match="kenward-roger"):
        fit.coef_table(ddf="kenward-rogers")
    with pytest.raises(ArgumentError, match="ddf"):
        fit.test("age = 0", ddf="nlme")
    ml = gls("distance ~ age * Sex", reference_data("kr_orthodont_gls_ar1"), correlation=AR1("Subject")).fit(reml=False)
    with pytest.raises(HypothesisError, match="REML"):
        ml.coef_table(ddf="kenward-roger")
    with pytest.raises(HypothesisError, match="REML"):
        ml.test("age = 0", ddf="kr-linear")


def test_kenward_roger_after_save_and_load(tmp_path):
    fit = fitted("kr_orthodont_gls_symm_missing_visits")
    path = tmp_path / "mmrm"
    fit.save(path)
    back = memoe.load(path)
    for ddf in VARIANTS:
        a, b = fit.coef_table(ddf=ddf), back.coef_table(ddf=ddf)
        np.testing.assert_allclose(b["std_error"], a["std_error"], rtol=1e-12)
        np.testing.assert_allclose(b["df"], a["df"], rtol=1e-12)

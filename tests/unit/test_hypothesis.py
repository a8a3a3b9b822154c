"""Unit tests of the denominator-df machinery: oracles on unbalanced data, parsing, errors, tables.

The golden cases are balanced designs on which the Kenward-Roger adjustment vanishes, so the
adjustment is checked here against a line-by-line dense (n x n) transcription of pbkrtest 0.5.2
(``.get_SigmaG``, ``vcovAdj16_internal``, ``.KR_adjust``, ``Lb_ddf``) on unbalanced data, for the
batched one-factor layout and the dense crossed-factor layout. Satterthwaite's analytic derivatives
are checked against lmerTest's own recipe: finite differences of its ``devfun_vp`` (the (RE)ML
deviance in ``(theta, sigma)``) and of ``sigma^2 (R_X' R_X)^-1``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import memoe
from memoe.errors import HypothesisError
from memoe.inference.anova_contrasts import doolittle, zapsmall
from memoe.inference.contrasts import as_hypothesis, parse_hypothesis
from memoe.inference.ddf import ingredient
from memoe.inference.frames import InferenceFrame
from memoe.inference.satterthwaite import fstat_ddf, satterthwaite_t, varpar_deviance
from memoe.lmm.result import LmmResult
from tests.conftest import fitted_case, reference_data


def _fit(formula: str, df: pd.DataFrame, reml: bool = True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memoe.lmm(formula, data=df).fit(reml=reml)


_CACHE: dict = {}


def _unbalanced(kind: str, reml: bool = True):
    """Unbalanced designs with a non-trivial KR adjustment (rows dropped at random, fixed seed)."""
    key = (kind, reml)
    if key in _CACHE:
        return _CACHE[key]
    rng = np.random.default_rng(20240607)
    if kind == "sleep":
        df = reference_data("sleepstudy_corr_slope_reml")
        df = df[rng.random(len(df)) > 0.35].copy()
        subjects = df["Subject"].cat.categories
        grp = dict(zip(subjects, np.tile(["a", "b"], len(subjects))[: len(subjects)], strict=True))
        df["grp"] = pd.Categorical(df["Subject"].map(grp).astype(str))
        fit = _fit("Reaction ~ Days * grp + (Days | Subject)", df, reml)
    else:
        df = reference_data("penicillin_reml")
        df = df[rng.random(len(df)) > 0.25].copy()
        df["x"] = rng.normal(size=len(df))
        fit = _fit("diameter ~ x + (1 | plate) + (1 | sample)", df, reml)
    _CACHE[key] = fit
    return fit


# --------------------------------------------------------------------------- pbkrtest transcription
def _pbkrtest_sigmaG(fit):
    """pbkrtest's .get_SigmaG: natural parameters and the n x n derivative matrices G_r."""
    d = fit.design
    n = d.n
    ggamma, G = [], []
    for term, cov in zip(d.terms, fit.term_covariances(), strict=True):
        blk = d.blocks[term.block]
        q = term.q
        Zt = np.zeros((n, blk.nlevels * q))
        for a in range(q):
            Zt[np.arange(n), blk.factor.codes * q + a] = blk.Z[:, term.offset + a]
        for c in range(q):
            for r in range(c, q):
                ggamma.append(cov[r, c])
                E = np.zeros((q, q))
                E[r, c] = E[c, r] = 1.0
                G.append(Zt @ np.kron(np.eye(blk.nlevels), E) @ Zt.T)
    ggamma.append(fit.sigma**2)
    G.append(np.eye(n))
    return np.array(ggamma), G


def _pbkrtest_vcovadj(fit):
    ggamma, G = _pbkrtest_sigmaG(fit)
    Sigma = sum(g * Gr for g, Gr in zip(ggamma, G, strict=True))
    X = fit.design.X
    Phi = fit.vcov().to_numpy()
    SigmaInv = np.linalg.inv(Sigma)
    R = len(G)
    TT = SigmaInv @ X
    HH = [Gr @ SigmaInv for Gr in G]
    OO = [H @ X for H in HH]
    PP = [-(O.T @ TT) for O in OO]
    QQ = {(r, s): OO[r].T @ SigmaInv @ OO[s] for r in range(R) for s in range(r, R)}
    IE2 = np.empty((R, R))
    for i in range(R):
        PhiP = Phi @ PP[i]
        for j in range(i, R):
            ktr = np.sum(HH[i].T * HH[j])
            IE2[i, j] = IE2[j, i] = ktr - 2 * np.sum(Phi * QQ[i, j]) + np.sum(PhiP * (PP[j] @ Phi))
    W = 2 * np.linalg.inv(IE2)
    UU = np.zeros_like(Phi)
    for i in range(R - 1):
        for j in range(i + 1, R):
            UU += W[i, j] * (QQ[i, j] - PP[i] @ Phi @ PP[j])
    UU = UU + UU.T
    for i in range(R):
        UU += W[i, i] * (QQ[i, i] - PP[i] @ Phi @ PP[i])
    return Phi + 2 * Phi @ UU @ Phi, PP, W, Phi


def _pbkrtest_kr_adjust(PhiA, P, W, Phi, L, beta, beta0, q=None):
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    A1 = A2 = 0.0
    for i in range(len(P)):
        for j in range(i, len(P)):
            e = 1 if i == j else 2
            ui = Theta @ Phi @ P[i] @ Phi
            uj = Theta @ Phi @ P[j] @ Phi
            A1 += e * W[i, j] * np.trace(ui) * np.trace(uj)
            A2 += e * W[i, j] * np.sum(ui * uj.T)
    q = np.linalg.matrix_rank(L) if q is None else q
    B = (A1 + 6 * A2) / (2 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    den = 3 * q + 2 * (1 - g)
    c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
    rho = 1 / q * ((1 - A2 / q) / (1 - c2 * B)) ** 2 * (1 + c1 * B) / (1 - c3 * B)
    df2 = 4 + (q + 2) / (q * rho - 1)
    scale = 1.0 if abs(df2 - 2) < 1e-2 else df2 * (1 - A2 / q) / (df2 - 2)
    diff = L @ beta - beta0
    wald = diff @ np.linalg.solve(L @ PhiA @ L.T, diff)
    return df2, scale * wald / q, wald / q


@pytest.mark.parametrize("kind", ["sleep", "penicillin"])
def test_kenward_roger_matches_pbkrtest_transcription(kind):
    fit = _unbalanced(kind)
    PhiA, P, W, Phi = _pbkrtest_vcovadj(fit)
    kr = ingredient(fit, "kr")
    # the adjustment is material on these designs (else the check would be empty)
    assert np.max(np.abs(PhiA - Phi) / np.sqrt(np.outer(np.diag(Phi), np.diag(Phi)))) > 1e-3
    np.testing.assert_allclose(kr.PhiA, PhiA, rtol=1e-8, atol=1e-10 * np.abs(PhiA).max())
    table = fit.coef_table(ddf="kenward-roger")
    np.testing.assert_allclose(table["std_error"], np.sqrt(np.diag(PhiA)), rtol=1e-8)
    beta = fit.fixef.to_numpy()
    p = len(beta)
    for j in range(p):
        l = np.eye(p)[j : j + 1]
        df_j, _, _ = _pbkrtest_kr_adjust(PhiA, P, W, Phi, l, beta, 0.0, q=1)
        assert table["df"].iloc[j] == pytest.approx(df_j, rel=1e-7)
    L = np.eye(p)[1:]
    ddf, F, Fu = _pbkrtest_kr_adjust(PhiA, P, W, Phi, L, beta, np.zeros(p - 1))
    if L.shape[0] > 1:
        assert abs(F / Fu - 1) > 1e-6  # the scaling is material for this multi-df test
    res = fit.test(L, ddf="kenward-roger")
    assert res["DenDF"].iloc[0] == pytest.approx(ddf, rel=1e-7)
    assert res["F value"].iloc[0] == pytest.approx(F, rel=1e-8)
    assert res["Pr(>F)"].iloc[0] == pytest.approx(stats.f.sf(F, p - 1, ddf), rel=1e-6)
    assert res.attrs["F_scaling"] == pytest.approx(F / Fu, rel=1e-8)


# --------------------------------------------------------------------------- lmerTest's recipe
def _numeric_ingredients(fit):
    """Hessian of devfun_vp and Jacobian of vcov(beta) by Richardson-extrapolated central differences."""
    x0 = np.append(fit.state.theta, fit.sigma)
    k = len(x0)
    h = 1e-3 * np.maximum(np.abs(x0), 0.1)

    def f(v):
        return varpar_deviance(fit, v)

    def hess(step):
        H = np.empty((k, k))
        for i in range(k):
            for j in range(i, k):
                ei, ej = np.eye(k)[i] * step[i], np.eye(k)[j] * step[j]
                H[i, j] = H[j, i] = (f(x0 + ei + ej) - f(x0 + ei - ej) - f(x0 - ei + ej) + f(x0 - ei - ej)) / (
                    4 * step[i] * step[j]
                )
        return H

    def covbeta(v):
        return v[-1] ** 2 * fit.model.problem.solve(v[:-1], fit.reml).vcov_unscaled

    def jac(step):
        return np.stack(
            [
                (covbeta(x0 + np.eye(k)[t] * step[t]) - covbeta(x0 - np.eye(k)[t] * step[t])) / (2 * step[t])
                for t in range(k)
            ]
        )

    H = (4 * hess(h / 2) - hess(h)) / 3
    J = (4 * jac(h / 2) - jac(h)) / 3
    return H, J


@pytest.mark.parametrize(("kind", "reml"), [("sleep", True), ("sleep", False), ("penicillin", True)])
def test_satterthwaite_derivatives_match_lmertest_recipe(kind, reml):
    fit = _unbalanced(kind, reml)
    vi = ingredient(fit, "varpar")
    H, J = _numeric_ingredients(fit)
    scale = np.sqrt(np.outer(np.abs(np.diag(H)), np.abs(np.diag(H))))
    assert np.max(np.abs(vi.hessian - H) / scale) < 1e-5
    np.testing.assert_allclose(vi.jacobian, J, rtol=1e-5, atol=1e-7 * np.abs(J).max())
    # lmerTest's df from the numerical ingredients
    A = 2 * np.linalg.inv(H)
    Phi = fit.vcov().to_numpy()
    for l in np.eye(len(Phi)):
        g = np.einsum("p,tpq,q->t", l, J, l)
        df_num = 2 * (l @ Phi @ l) ** 2 / (g @ A @ g)
        assert satterthwaite_t(vi, l[None])[0] == pytest.approx(df_num, rel=1e-5)


def test_deviance_gradient_vanishes_at_our_optimum():
    fit = _unbalanced("sleep")
    vi = ingredient(fit, "varpar")
    # the deviance in (theta, sigma) is stationary at the REML estimates (sigma profiled exactly)
    assert abs(vi.gradient[-1]) < 1e-8
    assert np.max(np.abs(vi.gradient)) < 1e-2


def test_fstat_ddf():
    assert fstat_ddf(np.array([7.5])) == 7.5
    assert fstat_ddf(np.array([10.0, 10.0 + 1e-10])) == pytest.approx(10.0)
    assert fstat_ddf(np.array([1.5, 30.0])) == 2.0
    nu = np.array([10.0, 20.0])
    E = np.sum(nu / (nu - 2))
    assert fstat_ddf(nu) == pytest.approx(2 * E / (E - 2))


def test_multi_df_satterthwaite_is_wald_over_q():
    fit = _unbalanced("sleep")
    beta, V = fit.fixef.to_numpy(), fit.vcov().to_numpy()
    L = np.eye(4)[[1, 3]]
    res = fit.test("Days = 0, Days:grpb = 0")
    wald = (L @ beta) @ np.linalg.solve(L @ V @ L.T, L @ beta) / 2
    assert res["F value"].iloc[0] == pytest.approx(wald, rel=1e-10)
    assert res["NumDF"].iloc[0] == 2
    assert 2 < res["DenDF"].iloc[0] < fit.nobs


# --------------------------------------------------------------------------- parsing
NAMES = ["(Intercept)", "Days", "age:SexFemale", "x", "xx", "C(a, contr.sum)S.x"]


@pytest.mark.parametrize(
    ("text", "row", "rhs"),
    [
        ("Days = 0", [0, 1, 0, 0, 0, 0], 0.0),
        ("Days", [0, 1, 0, 0, 0, 0], 0.0),
        ("Days = 2*x", [0, 1, 0, -2, 0, 0], 0.0),
        ("Days - x = 0", [0, 1, 0, -1, 0, 0], 0.0),
        ("(Intercept) - 250 = 10 * Days", [1, -10, 0, 0, 0, 0], 250.0),
        ("2*((Intercept) - xx)/4 = -1.5e1", [0.5, 0, 0, 0, -0.5, 0], -15.0),
        ("age:SexFemale == 3", [0, 0, 1, 0, 0, 0], 3.0),
        ("`xx` + -x = 0", [0, 0, 0, -1, 1, 0], 0.0),
        ("C(a, contr.sum)S.x = 1", [0, 0, 0, 0, 0, 1], 1.0),
    ],
)
def test_parse_single_equation(text, row, rhs):
    hyp = parse_hypothesis(text, NAMES)
    np.testing.assert_array_equal(hyp.L, [row])
    assert hyp.rhs[0] == rhs


def test_parse_several_equations():
    hyp = parse_hypothesis("Days = 0, x = xx, (Intercept) = 1", NAMES)
    assert hyp.L.shape == (3, 6)
    assert hyp.labels == ["Days = 0", "x = xx", "(Intercept) = 1"]
    np.testing.assert_array_equal(hyp.rhs, [0, 0, 1])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Dayz = 0", r"unknown coefficient 'Dayz'.*'\(Intercept\)', 'Days'"),
        ("Days2 = 0", "unknown coefficient 'Days2'"),
        ("Days * x = 0", "linear"),
        ("Days / x = 0", "linear"),
        ("Days / 0 = 1", "division by zero"),
        ("3 = 3", "involves no coefficient"),
        ("Days = = 0", "more than one '='|missing side"),
        ("Days = 0,", "empty equation"),
        ("(Days = 0", r"missing '\)'|unexpected"),
        ("Days x = 0", "unexpected"),
    ],
)
def test_parse_errors(text, match):
    with pytest.raises(HypothesisError, match=match):
        parse_hypothesis(text, NAMES)


def test_numeric_and_labelled_contrasts():
    names = ["(Intercept)", "Days"]
    assert as_hypothesis([0, 1], names).L.tolist() == [[0.0, 1.0]]
    assert as_hypothesis(np.eye(2), names).L.shape == (2, 2)
    assert as_hypothesis({"Days": 2.0}, names).L.tolist() == [[0.0, 2.0]]
    frame = pd.DataFrame({"Days": [1.0], "(Intercept)": [1.0]}, index=["sum"])
    hyp = as_hypothesis(frame, names)
    assert hyp.L.tolist() == [[1.0, 1.0]] and hyp.labels == ["sum"]
    hyp = as_hypothesis(([0, 1], 10.0), names)
    assert hyp.rhs.tolist() == [10.0]
    with pytest.raises(HypothesisError, match=r"needs 2 columns.*'\(Intercept\)', 'Days'"):
        as_hypothesis([1, 0, 0], names)
    with pytest.raises(HypothesisError, match="unknown coefficient"):
        as_hypothesis({"Dayz": 1.0}, names)
    with pytest.raises(HypothesisError, match="cannot interpret"):
        as_hypothesis(object(), names)


# --------------------------------------------------------------------------- test(), coef_table(), anova()
METHODS = ["residual", "containment", "satterthwaite", "kenward-roger", "asymptotic"]


@pytest.mark.parametrize("method", METHODS)
def test_single_coefficient_test_equals_t_squared(method):
    fit = _unbalanced("sleep")
    table = fit.coef_table(ddf=method)
    res = fit.test("Days = 0", ddf=method)
    stat = table["statistic"]["Days"]
    assert table.attrs["statistic"] == ("z" if method == "asymptotic" else "t")
    assert res["F value"].iloc[0] == pytest.approx(stat**2, rel=1e-9)
    assert res["NumDF"].iloc[0] == 1
    assert res["Pr(>F)"].iloc[0] == pytest.approx(table["p_value"]["Days"], rel=1e-7)
    if method == "asymptotic":
        assert np.isinf(table["df"]["Days"]) and np.isinf(res["DenDF"].iloc[0])
    else:
        assert res["DenDF"].iloc[0] == pytest.approx(table["df"]["Days"], rel=1e-9)
    assert res.attrs["ddf"] == method and table.ddf == method


def test_rhs_and_combinations():
    fit = fitted_case("sleepstudy_corr_slope_reml")
    b, V = fit.fixef, fit.vcov()
    res = fit.test("Days = 10", ddf="residual")
    assert res["F value"].iloc[0] == pytest.approx((b["Days"] - 10) ** 2 / V.loc["Days", "Days"], rel=1e-10)
    assert res["DenDF"].iloc[0] == fit.nobs - 2
    l = np.array([1.0, -2.0])
    res = fit.test("(Intercept) = 2 * Days", ddf="asymptotic")
    wald = (l @ b.to_numpy()) ** 2 / (l @ V.to_numpy() @ l)
    assert res["F value"].iloc[0] == pytest.approx(wald, rel=1e-10)
    assert res["Pr(>F)"].iloc[0] == pytest.approx(stats.chi2.sf(wald, 1), rel=1e-9)
    np.testing.assert_array_equal(res.attrs["L"].to_numpy(), [[1.0, -2.0]])


def test_redundant_and_contradictory_equations():
    fit = fitted_case("sleepstudy_corr_slope_reml")
    one = fit.test("Days = 0")
    two = fit.test("Days = 0, 2 * Days = 0")
    assert two["NumDF"].iloc[0] == 1
    assert two["F value"].iloc[0] == pytest.approx(one["F value"].iloc[0], rel=1e-10)
    assert two["DenDF"].iloc[0] == pytest.approx(one["DenDF"].iloc[0], rel=1e-10)
    with pytest.raises(HypothesisError, match="contradictory"):
        fit.test("Days = 0, Days = 1")


def test_errors():
    fit = fitted_case("sleepstudy_corr_slope_ml")
    with pytest.raises(HypothesisError, match="only available for REML"):
        fit.coef_table(ddf="kenward-roger")
    with pytest.raises(HypothesisError, match="only available for REML"):
        fit.anova(ddf="kr")
    with pytest.raises(HypothesisError, match=r"unknown ddf method 'bogus'.*satterthwaite"):
        fit.coef_table(ddf="bogus")
    with pytest.raises(HypothesisError, match="unknown ANOVA type"):
        fit.anova(type=2)
    with pytest.raises(HypothesisError, match=r"unknown coefficient 'day'.*'Days'"):
        fit.test("day = 0")
    with pytest.raises(HypothesisError, match="needs 2 columns"):
        fit.test(np.eye(3))
    reml = fitted_case("sleepstudy_corr_slope_reml")
    with pytest.raises(HypothesisError, match="robust"):
        reml.coef_table(ddf="kenward-roger", robust="CR2")


def test_robust_standard_errors():
    from memoe.inference.sandwich import vcov_cr

    fit = fitted_case("orthodont_lmer_reml")
    table = fit.coef_table(ddf="satterthwaite", robust="cr2")
    V = vcov_cr(fit, "CR2")
    np.testing.assert_allclose(table["std_error"], np.sqrt(np.diag(V.to_numpy())), rtol=1e-12)
    np.testing.assert_allclose(table["df"], fit.coef_table(ddf="satterthwaite")["df"], rtol=1e-12)
    assert "CR2" in table.note
    res = fit.test("age:SexFemale = 0", ddf="residual", robust="CR0")
    v0 = vcov_cr(fit, "CR0").loc["age:SexFemale", "age:SexFemale"]
    assert res["F value"].iloc[0] == pytest.approx(fit.fixef["age:SexFemale"] ** 2 / v0, rel=1e-10)


def test_printed_note_and_plain_slices():
    fit = fitted_case("sleepstudy_corr_slope_reml")
    table = fit.anova(ddf="kenward-roger")
    text = repr(table)
    assert text.startswith("Type III Analysis of Variance Table with Kenward-Roger's method")
    assert text.rstrip().endswith("(as pbkrtest)")
    assert isinstance(table, InferenceFrame)
    assert type(table[["F value"]]) is pd.DataFrame
    assert "Satterthwaite" in repr(fit.coef_table(ddf="satterthwaite"))


def test_type3_is_invariant_to_the_contrast_coding():
    """Sum-to-zero coding takes lmerTest's mapping path (ginv(X_T) X); the tests must not change."""
    df = reference_data("orthodont_lmer_reml")
    treat = fitted_case("orthodont_lmer_reml")
    summ = _fit("distance ~ age * C(Sex, contr.sum) + (age | Subject)", df)
    # same theta (the flat orthodont ridge lets two optimiser runs differ by ~1e-5)
    summ = LmmResult(summ.model, True, treat.state.theta, summ.opt, summ.convergence, summ.singular, [])
    assert "SexFemale" not in summ.fixef.index  # really another coding
    a, b = treat.anova(type=3), summ.anova(type=3)
    np.testing.assert_allclose(b["F value"].to_numpy(), a["F value"].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(b["DenDF"].to_numpy(), a["DenDF"].to_numpy(), rtol=1e-7)
    a, b = treat.anova(type=3, ddf="kenward-roger"), summ.anova(type=3, ddf="kenward-roger")
    np.testing.assert_allclose(b["F value"].to_numpy(), a["F value"].to_numpy(), rtol=1e-9)
    assert list(b.index) == ["age", "Sex", "age:Sex"]


def test_type1_and_type3_relations():
    fit = _unbalanced("sleep")
    t1, t3 = fit.anova(type=1), fit.anova(type=3)
    # the highest-order term is tested the same way by both types
    assert t1.loc["Days:grp", "F value"] == pytest.approx(t3.loc["Days:grp", "F value"], rel=1e-9)
    # type III of a main effect in a model with its interaction averages over the other factor
    assert t3.loc["Days", "F value"] != pytest.approx(fit.test("Days = 0")["F value"].iloc[0], rel=1e-3)
    assert t3.loc["Days", "F value"] == pytest.approx(fit.test("Days + 0.5 * Days:grpb = 0")["F value"].iloc[0])
    # type I: sequential sums of squares of a single-term model equal the test of that term
    one = fitted_case("sleepstudy_corr_slope_reml")
    assert one.anova(type=1).loc["Days", "F value"] == pytest.approx(one.test("Days = 0")["F value"].iloc[0])
    assert fitted_case("dyestuff_reml").anova().shape == (0, 6)


def test_containment_conventions():
    # crossed factors: strata ordered by number of levels (sample 6 < plate 24), intercept = max df
    assert fitted_case("penicillin_reml").coef_table(ddf="containment")["df"].iloc[0] == 144 - 24
    fit = _unbalanced("sleep")
    df = fit.coef_table(ddf="containment")["df"]
    n_subj = fit.ngroups["Subject"]
    # grpb is a between-subject factor: subjects - 1 (intercept) - 1 (grpb)
    assert df["grpb"] == n_subj - 2
    assert df["Days"] == df["Days:grpb"] == fit.nobs - n_subj - 2


def test_doolittle_and_zapsmall():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(6, 4))
    x = A.T @ A
    L, U = doolittle(x)
    np.testing.assert_allclose(L @ U, x, atol=1e-5)
    assert np.allclose(np.triu(L, 1), 0) and np.allclose(np.diag(L), 1)
    np.testing.assert_array_equal(zapsmall(np.array([1.0, 1e-9, -0.123456789])), [1.0, 0.0, -0.1234568])


def test_kenward_roger_anova_mean_square_is_unscaled():
    """lmerTest's mk_Ftable: Mean Sq from pbkrtest's FtestU, F value and p from the scaled Ftest."""
    fit = _unbalanced("sleep")
    df = fit.design.frame.data.copy()
    codes = df["Subject"].cat.codes.to_numpy() % 3
    df["g3"] = pd.Categorical(np.array(["u", "v", "w"])[codes])
    fit3 = _fit("Reaction ~ Days + g3 + (Days | Subject)", df)
    row = fit3.anova(ddf="kenward-roger").loc["g3"]
    res = fit3.test("g3v = 0, g3w = 0", ddf="kenward-roger")
    scale = res.attrs["F_scaling"]
    assert abs(scale - 1) > 1e-6 and row["NumDF"] == 2
    assert row["F value"] == pytest.approx(res["F value"].iloc[0], rel=1e-10)
    assert row["Mean Sq"] == pytest.approx(res["F value"].iloc[0] / scale * fit3.sigma**2, rel=1e-10)
    assert row["Pr(>F)"] == pytest.approx(res["Pr(>F)"].iloc[0], rel=1e-10)

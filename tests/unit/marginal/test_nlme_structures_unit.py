"""Unit tests of the issue-11 residual structures: definitions against a dense oracle, refusals,
save/load round trips and the command-line spellings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import memoe
import memoe.datasets
from memoe.cli.structures import parse_correlation, parse_weights
from memoe.errors import ArgumentError, ArgumentTypeError, DataError, MemoeError, MemoeWarning
from memoe.marginal import (
    ARMA,
    CompSymm,
    Exp,
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
from memoe.marginal.arma import arma_acf, arma_coefficients, arma_unconstrained


def _sim(seed: int = 5, n_groups: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        n = int(rng.integers(3, 7))
        t = np.sort(rng.choice(np.arange(1, 25), size=n, replace=False)).astype(float)
        for k in range(n):
            rows.append((f"g{g:02d}", t[k], float(rng.uniform(0, 5)), k + 1, rng.choice(["a", "b"]), rng.normal()))
    df = pd.DataFrame(rows, columns=["id", "t", "s", "visit", "arm", "x"])
    df["y"] = 10.0 + 0.3 * df["t"] + 0.5 * df["x"] + rng.normal(0, 1, len(df)) * (1 + 0.1 * df["t"])
    df["w"] = rng.uniform(0.5, 2.0, len(df))
    return df


def _dense_ll(X, y, V, reml):
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    ll = stats.multivariate_normal(mean=X @ beta, cov=V).logpdf(y)
    if reml:
        ll += 0.5 * X.shape[1] * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(X.T @ Vi @ X)[1]
    return ll


def _dense_check(m, params, reml, cor_fn, sd_fn):
    """Our profiled objective against the (N, N) definition at sigma: V = sigma^2 S C S."""
    df = m.design.frame.data.reset_index(drop=True)
    sol = m.problem.solve(params, reml)
    N = len(df)
    C = np.zeros((N, N))
    for i in range(N):
        for j in range(N):
            if df["id"][i] == df["id"][j]:
                C[i, j] = 1.0 if i == j else cor_fn(df.iloc[i], df.iloc[j])
    s = sd_fn(df)
    V = sol.sigma**2 * (s[:, None] * C * s[None, :])
    ll = _dense_ll(m.design.X, m.design.y, V, reml)
    assert -0.5 * sol.deviance == pytest.approx(ll, abs=1e-8)


@pytest.mark.parametrize("reml", [False, True])
@pytest.mark.parametrize(
    ("cls", "rho", "offset"),
    [
        (Gaus, lambda x: np.exp(-(x**2)), False),
        (Spher, lambda x: (1 - 1.5 * x + 0.5 * x**3) if x < 1 else 0.0, True),
        (Lin, lambda x: (1 - x) if x < 1 else 0.0, True),
        (Ratio, lambda x: 1 / (1 + x**2), False),
    ],
)
def test_spatial_matches_dense_definition(cls, rho, offset, reml):
    df = _sim()
    m = gls("y ~ t + x", df, correlation=cls(("t", "s"), "id", nugget=True, metric="manhattan"))
    u = np.array([np.log(6.0), -1.0])
    # nlme's minD: the smallest within-group distance (manhattan here)
    dmin = min(
        abs(a.t - b.t) + abs(a.s - b.s)
        for _, g in df.groupby("id") for i, a in enumerate(g.itertuples()) for b in list(g.itertuples())[i + 1:]
    )
    rng = 6.0 + (dmin if offset else 0.0)
    nug = 1 / (1 + np.exp(1.0))
    _dense_check(
        m, u, reml,
        lambda a, b: (1 - nug) * rho((abs(a.t - b.t) + abs(a.s - b.s)) / rng),
        lambda d: np.ones(len(d)),
    )
    assert m.problem.cor.natural(u).to_dict() == pytest.approx({"range": rng, "nugget": nug})


def test_arma_acf_and_transform_match_known_values():
    # ARMA(1,1) with phi=0.3, theta=-0.5: R's ARMAacf(ar = 0.3, ma = -0.5)
    acf = arma_acf(np.array([0.3]), np.array([-0.5]), 3)
    np.testing.assert_allclose(acf, [1.0, -0.178947368421, -0.0536842105263, -0.0161052631579], rtol=1e-10)
    # nlme's unconstrained values (R: unclass(corARMA(c(0.3, -0.5), p = 1, q = 1)))
    np.testing.assert_allclose(arma_unconstrained([0.3], [-0.5]), [0.6190392084062235, -1.0986122886681098])
    phi, theta = arma_coefficients(np.array([0.4519851237430572, 0.2006706954621511]), 2, 0)
    np.testing.assert_allclose(phi, [0.2, 0.1], atol=1e-12)
    assert theta.size == 0
    # any unconstrained vector gives a stationary process: a valid (PD) correlation matrix
    rng = np.random.default_rng(0)
    for _ in range(20):
        phi, theta = arma_coefficients(rng.normal(0, 3, 5), 3, 2)
        acf = arma_acf(phi, theta, 9)
        R = acf[np.abs(np.arange(10)[:, None] - np.arange(10)[None, :])]
        assert np.linalg.eigvalsh(R).min() > 0


@pytest.mark.parametrize("reml", [False, True])
def test_arma_with_visit_matches_dense_definition(reml):
    df = _sim()
    m = gls("y ~ t + x", df, correlation=ARMA(p=1, q=1, group="id", time="visit"))
    u = np.array([0.7, -0.4])
    phi, theta = arma_coefficients(u, 1, 1)
    acf = arma_acf(phi, theta, 10)
    _dense_check(m, u, reml, lambda a, b: acf[int(abs(a.visit - b.visit))], lambda d: np.ones(len(d)))
    assert list(m.problem.cor.names) == ["Phi1", "Theta1"]


def test_arma10_on_consecutive_positions_is_nlme_ar1():
    m = gls("y ~ t", _sim(), correlation=ARMA(p=1, group="id"))
    assert m.problem.cor.names == ["Phi"]
    assert m.problem.cor.structure.label == "AR(1)"


@pytest.mark.parametrize("reml", [False, True])
def test_variance_functions_match_dense_definition(reml):
    df = _sim()
    f = VarComb(VarPower("t", by="arm"), VarConstPower("s"), VarExp("x"), VarFixed("w"))
    m = gls("y ~ t + x", df, correlation=Exp("t", "id"), weights=f)
    # strata in order of first appearance (nlme's unique()), then log const, power, expon
    first = list(dict.fromkeys(df["arm"]))
    assert m.problem.var.names == [f"A.{first[0]}", f"A.{first[1]}", "B.const", "B.power", "C.expon"]
    value = {"A.a": 0.3, "A.b": -0.2, "B.const": np.log(0.5), "B.power": 0.7, "C.expon": 0.2}
    params = np.concatenate([[np.log(5.0)], [value[n] for n in m.problem.var.names]])

    def sd(d):
        p = np.where(d["arm"] == "a", 0.3, -0.2)
        return d["t"] ** p * (0.5 + d["s"] ** 0.7) * np.exp(0.2 * d["x"]) * np.sqrt(d["w"])

    _dense_check(m, params, reml, lambda a, b: np.exp(-abs(a.t - b.t) / 5.0), lambda d: sd(d).to_numpy())


def test_fitted_covariate_fit_is_a_fixed_point():
    df = _sim()
    fit = gls("y ~ t + x", df, weights=VarPower()).fit(reml=True)
    P = fit.model.problem
    np.testing.assert_allclose(P.var.covariate, fit.fitted.to_numpy(), rtol=1e-6)
    ratios = np.abs(P.var.covariate) ** fit.var_params["power"]
    np.testing.assert_allclose(fit._s.ratios, ratios, rtol=1e-10)
    # lme: the covariate is the innermost-level (conditional) fitted values
    fit = lme("y ~ t + x + (1 | id)", df, weights=VarPower()).fit(reml=False)
    np.testing.assert_allclose(fit.model.problem.var.covariate, fit.fitted.to_numpy(), rtol=1e-6)


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("make", "err", "match"),
    [
        (lambda: ARMA(p=-1), ArgumentError, "p="),
        (lambda: ARMA(p=0, q=0), ArgumentError, "p > 0 or q > 0"),
        (lambda: ARMA(p=1.5), ArgumentTypeError, "p="),
        (lambda: Gaus("t", "id", metric="chebyshev"), ArgumentError, "metric"),
        (lambda: Spher("t", "id", nugget="yes"), ArgumentTypeError, "nugget"),
        (lambda: Lin(3), ArgumentTypeError, "column names"),
        (lambda: Ratio("x", "y", "z"), ArgumentError, "group by keyword"),
        (lambda: VarPower(form=3), ArgumentTypeError, "form"),
        (lambda: VarFixed(), ArgumentTypeError, "VarFixed"),
        (lambda: VarComb(VarPower("t")), ArgumentError, "at least two"),
        (lambda: VarComb(VarPower("t"), "age"), ArgumentTypeError, "argument 2"),
        (lambda: VarConstPower("t", fixed=0.5), ArgumentTypeError, "dict"),
    ],
)
def test_bad_arguments_are_refused(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_bad_data_are_refused_naming_the_column():
    df = _sim()
    df["cat"] = "u"
    with pytest.raises(DataError, match=r"'cat'.*numeric"):
        gls("y ~ t", df, correlation=Gaus("cat", "id"))
    with pytest.raises(DataError, match=r"'cat'.*numeric"):
        gls("y ~ t", df, weights=VarPower("cat"))
    bad = df.copy()
    bad.loc[3, "w"] = -1.0
    with pytest.raises(DataError, match=r"'w'.*positive"):
        gls("y ~ t", bad, weights=VarFixed("w"))
    dup = df.copy()
    dup.loc[1, "t"] = dup.loc[0, "t"]
    dup.loc[1, "id"] = dup.loc[0, "id"]
    with pytest.raises(DataError, match="distance 0"):
        gls("y ~ t", dup, correlation=Spher("t", "id"))
    with pytest.raises(DataError, match=r"'s'.*integers"):
        gls("y ~ t", df, correlation=ARMA(p=1, group="id", visit="s"))
    with pytest.raises(DataError, match="exceeds the largest lag"):
        gls("y ~ t", df.groupby("id").head(2), correlation=ARMA(p=2, group="id"))
    with pytest.raises(ArgumentError, match="'zz' is not a stratum"):
        gls("y ~ t", df, weights=VarPower("t", by="arm", fixed={"zz": 0.5}))
    with pytest.raises(MemoeError, match="weights must be"):
        gls("y ~ t", df, weights="varPower")


def test_fixed_parameters_are_held():
    df = _sim()
    fit = gls("y ~ t + x", df, weights=VarPower("t", by="arm", fixed={"a": 0.5})).fit()
    assert list(fit.var_params.index) == ["b"]
    np.testing.assert_allclose(fit._s.ratios[df["arm"].to_numpy() == "a"], df["t"][df["arm"] == "a"] ** 0.5)


# ------------------------------------------------------------------------------------------ persistence
@pytest.mark.parametrize(
    "kwargs",
    [
        {"weights": VarPower()},
        {"weights": VarComb(VarIdent("arm"), VarExp("t", fixed=None)), "correlation": ARMA(p=1, q=1, group="id")},
        {"weights": VarConstPower("s", by="arm"), "correlation": Gaus(("t", "s"), "id", nugget=True, metric="maximum")},
        {"weights": VarFixed("w"), "correlation": Lin("t", "id")},
        {"weights": VarPower("t", by="arm", fixed={"a": 0.25}), "correlation": Ratio("t", "id")},
    ],
)
def test_save_load_round_trip(tmp_path, kwargs):
    df = _sim()
    fit = gls("y ~ t + x", df, **kwargs).fit(reml=True)
    path = tmp_path / "fit.memoe"
    fit.save(path)
    back = memoe.load(path)
    assert back.loglik == pytest.approx(fit.loglik, abs=1e-10)
    np.testing.assert_allclose(back.fixef, fit.fixef, rtol=1e-12)
    pd.testing.assert_series_equal(back.var_params, fit.var_params)
    pd.testing.assert_series_equal(back.cor_params, fit.cor_params)
    assert back.model.weights == fit.model.weights and back.model.correlation == fit.model.correlation
    assert str(back.summary()) == str(fit.summary())


def test_lme_fitted_covariate_round_trip(tmp_path):
    fit = lme("y ~ t + x + (1 | id)", _sim(), weights=VarPower()).fit()
    fit.save(tmp_path / "f.memoe")
    back = memoe.load(tmp_path / "f.memoe")
    assert back.loglik == pytest.approx(fit.loglik, abs=1e-10)


def test_tidy_and_summary_name_the_structures():
    fit = gls("y ~ t + x", _sim(), weights=VarPower("t"), correlation=Spher("t", "id", nugget=True)).fit()
    terms = list(fit.tidy()["term"])
    assert "varPower(power)" in terms and "range" in terms and "nugget" in terms
    text = str(fit.summary())
    assert "Correlation Structure: Spherical spatial correlation" in text and "Formula: ~t | id" in text
    assert "Structure: Power of variance covariate" in text and "Formula: ~t" in text
    # the range sits at the smallest distance (no correlation left), so the nugget is not identified:
    # its interval is NaN with a warning; the other rows stay usable
    with pytest.warns(MemoeWarning, match=r"not positive definite.*\['nugget'\]"):
        iv = fit.intervals()
    assert np.isnan(iv.loc[("corStruct", "nugget")]).iloc[[0, 2]].all()
    lo, est, hi = iv.loc[("varStruct", "power")]
    assert lo < est < hi and est == pytest.approx(fit.var_params["power"])


# ------------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("arma(1, 1)", ARMA(1, 1)),
        ("corARMA(| Mare, p=2)", ARMA(p=2, group="Mare")),
        ("arma(visit | id, q=1)", ARMA(q=1, group="id", visit="visit")),
        ("gaus(Time | Rat, nugget)", Gaus("Time", "Rat", nugget=True)),
        ("corSpher(x + y | g, metric=manhattan)", Spher(("x", "y"), "g", metric="manhattan")),
        ("lin(Time)", Lin("Time")),
        ("ratio(Time | Rat, nugget=true)", Ratio("Time", "Rat", nugget=True)),
    ],
)
def test_cli_correlations(text, want):
    assert parse_correlation(text) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("varpower", VarPower()),
        ("varPower(age | Sex)", VarPower("age", by="Sex")),
        ("varexp(age, fixed=0.1)", VarExp("age", fixed=0.1)),
        ("varconstpower(age)", VarConstPower("age")),
        ("varfixed(w)", VarFixed("w")),
        ("varcomb(varident(Sex), varpower(age))", VarComb(VarIdent("Sex"), VarPower("age"))),
    ],
)
def test_cli_weights(text, want):
    assert parse_weights(text) == want


@pytest.mark.parametrize("text", ["arma(1, 1, 1)", "gaus(Time | Rat, metric=cosine)", "spher(| g)", "lin(T, p=1)"])
def test_cli_correlation_refusals(text):
    with pytest.raises(ArgumentError):
        parse_correlation(text)


@pytest.mark.parametrize("text", ["varfixed()", "varcomb(varpower)", "varpower(age, fixed=x)", "varfixed(w, fixed=1)"])
def test_cli_weights_refusals(text):
    with pytest.raises(ArgumentError, match="--weights"):
        parse_weights(text)


def test_strata_follow_nlme_row_order():
    """nlme names the strata by first appearance in its working order: data order for an ungrouped gls,
    rows sorted by the grouping factor otherwise (R: Female, Male and Male, Female on reversed Orthodont)."""
    o = memoe.datasets.load("Orthodont").iloc[::-1].reset_index(drop=True)
    m = gls("distance ~ age", o, weights=VarPower("age", by="Sex"))
    assert m.problem.var.names == ["Female", "Male"]
    m = gls("distance ~ age", o, weights=VarPower("age", by="Sex"), correlation=CompSymm("Subject"))
    assert m.problem.var.names == ["Male", "Female"]

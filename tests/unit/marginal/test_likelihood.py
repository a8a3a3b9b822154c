"""The batched objective against oracles: a dense multivariate normal, OLS, and memoe.lmm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import memoe
from memoe.errors import ArgumentError
from memoe.marginal import AR1, CAR1, Exp, Symm, VarIdent, gls, lme


def _sim(seed: int = 3, n_groups: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        n = int(rng.integers(2, 7))  # unbalanced: several size buckets
        t = np.sort(rng.choice(np.arange(20), size=n, replace=False)).astype(float)
        for k in range(n):
            rows.append((f"s{g:02d}", t[k], rng.choice(["lo", "hi"]), rng.normal()))
    df = pd.DataFrame(rows, columns=["id", "t", "arm", "x"])
    df["y"] = 1.0 + 0.3 * df["t"] + 0.5 * df["x"] + rng.normal(0, 1, len(df))
    df["y"] += df.groupby("id")["x"].transform(lambda s: rng.normal(0, 1.5))
    return df


def _dense_loglik(df, X, y, V, reml):
    """-2 log L from the full (N, N) covariance: the definition, no batching, no profiling."""
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    ll = stats.multivariate_normal(mean=X @ beta, cov=V).logpdf(y)
    if reml:
        ll += 0.5 * X.shape[1] * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(X.T @ Vi @ X)[1]
    return ll


@pytest.mark.parametrize("reml", [False, True])
def test_lme_car1_varident_matches_dense_oracle(reml):
    df = _sim()
    m = lme("y ~ t + x + (1 + t | id)", df, correlation=CAR1("t"), weights=VarIdent("arm"))
    params = np.array([0.8, 0.05, 0.1, 1.2, -0.4])  # theta (3), logit Phi, log ratio
    P = m.problem
    sol = P.solve(params, reml)
    # the dense V at sigma: sigma^2 (Z D Z' + S C S), assembled element by element
    N = len(df)
    lam = np.array([[0.8, 0.0], [0.05, 0.1]])
    D = lam @ lam.T
    phi = 1 / (1 + np.exp(-1.2))
    ratio = np.where(df["arm"] == "lo", np.exp(-0.4), 1.0)  # levels sorted: "hi" is the reference
    W = np.zeros((N, N))
    for i in range(N):
        for j in range(N):
            if df["id"][i] != df["id"][j]:
                continue
            zi, zj = np.array([1, df["t"][i]]), np.array([1, df["t"][j]])
            c = phi ** abs(df["t"][i] - df["t"][j])
            W[i, j] = zi @ D @ zj + ratio[i] * ratio[j] * c
    V = sol.sigma**2 * W
    X = m.design.X
    ll = _dense_loglik(df, X, m.design.y, V, reml)
    assert -0.5 * sol.deviance == pytest.approx(ll, abs=1e-8)


def test_gls_symm_matches_dense_oracle_and_row_order_does_not_matter():
    from memoe.marginal.correlation import symm_matrix

    df = _sim(5)
    m_max = int(df.groupby("id").size().max())
    u = np.linspace(-0.4, 0.6, m_max * (m_max - 1) // 2)
    m = gls("y ~ t + x", df, correlation=Symm("id"))
    sol = m.problem.solve(u, True)
    R = symm_matrix(u, m_max)
    pos = df.groupby("id").cumcount().to_numpy()  # visit position within the subject (data order)
    same = df["id"].to_numpy()[:, None] == df["id"].to_numpy()[None, :]
    W = np.where(same, R[pos[:, None], pos[None, :]], 0.0)
    ll = _dense_loglik(df, m.design.X, m.design.y, sol.sigma**2 * W, True)
    assert -0.5 * sol.deviance == pytest.approx(ll, abs=1e-8)
    # shuffle the rows; sorting by t (stable) restores the visit order within each subject only
    perm = np.random.default_rng(0).permutation(len(df))
    df2 = df.iloc[perm].sort_values("t", kind="stable")
    m2 = gls("y ~ t + x", df2, correlation=Symm("id"))
    assert m2.problem.deviance(u, True) == pytest.approx(sol.deviance, abs=1e-9)


def test_gls_without_structure_is_ols():
    df = _sim(7)
    fit = gls("y ~ t + x", df).fit(reml=False)
    import statsmodels.api as sm

    X = np.column_stack([np.ones(len(df)), df["t"], df["x"]])
    ols = sm.OLS(df["y"].to_numpy(), X).fit()
    assert fit.loglik == pytest.approx(ols.llf, abs=1e-8)
    np.testing.assert_allclose(fit.fixef.to_numpy(), ols.params, rtol=1e-10)
    # nlme's gls SEs use the (N - p) residual variance even for ML
    np.testing.assert_allclose(fit.bse.to_numpy(), ols.bse, rtol=1e-10)


@pytest.mark.parametrize("reml", [False, True])
def test_ar1_at_phi_zero_equals_independence(reml):
    df = memoe.datasets.load("BodyWeight")
    ar = gls("weight ~ Time * Diet", df, correlation=AR1(group="Rat"))
    ind = gls("weight ~ Time * Diet", df).fit(reml=reml)
    sol = ar.problem.solve(np.array([0.0]), reml)
    assert -0.5 * sol.deviance == pytest.approx(ind.loglik, abs=1e-9)
    np.testing.assert_allclose(sol.beta, ind.fixef.to_numpy(), rtol=1e-10)
    assert sol.sigma == pytest.approx(ind.sigma, rel=1e-12)


@pytest.mark.parametrize("reml", [False, True])
def test_lme_equals_lmm_when_residuals_are_independent(reml):
    df = memoe.datasets.load("Orthodont")
    formula = "distance ~ age * Sex + (age | Subject)"
    ref = memoe.lmm(formula, df).fit(reml=reml)
    fit = lme(formula, df).fit(reml=reml)
    assert fit.loglik == pytest.approx(ref.loglik, abs=1e-6)
    np.testing.assert_allclose(fit.fixef.to_numpy(), ref.fixef.to_numpy(), rtol=1e-6)
    assert fit.sigma == pytest.approx(ref.sigma, rel=1e-5)
    np.testing.assert_allclose(fit.vcov().to_numpy(), ref.vcov().to_numpy(), rtol=1e-4)
    b_ref = ref.ranef["Subject"].to_numpy()
    # BLUPs inherit the optimiser slack on Orthodont's flat ridge: compare on the scale of each column
    assert np.all(np.abs(fit.ranef["Subject"].to_numpy() - b_ref) <= 1e-4 * np.abs(b_ref).max(axis=0))
    # with a structure at its independence value (AR1, Phi = 0) the objective is lmm's deviance
    ar = lme(formula, df, correlation=AR1())
    theta = ref.theta.to_numpy()
    dev = ar.problem.deviance(np.concatenate([theta, [0.0]]), reml)
    assert dev == pytest.approx(ref.deviance, abs=1e-6)


def test_exp_nugget_near_zero_range_is_independence():
    df = memoe.datasets.load("BodyWeight")
    m = gls("weight ~ Time", df, correlation=Exp("Time", "Rat", nugget=True))
    ind = gls("weight ~ Time", df).fit(reml=True)
    # range -> 0: exp(-d / range) vanishes for d >= 1 (BodyWeight times are whole days)
    dev = m.problem.deviance(np.array([np.log(1e-3), 0.0]), True)
    assert -0.5 * dev == pytest.approx(ind.loglik, abs=1e-9)


def test_fit_is_reproducible_and_reports_timing():
    df = memoe.datasets.load("Ovary")
    f = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)"
    a = lme(f, df, correlation=AR1()).fit()
    b = lme(f, df, correlation=AR1()).fit()
    assert a.loglik == b.loglik
    assert a.seconds > 0 and a.feval > 0 and a.converged


def test_predict_replays_the_design_on_new_data():
    df = memoe.datasets.load("Ovary")
    f = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)"
    fit = lme(f, df, correlation=AR1()).fit()
    np.testing.assert_allclose(fit.predict(df).to_numpy(), fit.fitted.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(fit.predict(df, level=0).to_numpy(), fit.fitted_marginal.to_numpy(), rtol=1e-12)
    new = df.iloc[:3].copy()
    new["Mare"] = pd.Categorical(["unseen"] * 3)
    with pytest.raises(memoe.errors.DataError, match=r"'Mare' has 1 new level.*'unseen'"):
        fit.predict(new)
    np.testing.assert_allclose(
        fit.predict(new, allow_new_levels=True).to_numpy(), fit.fitted_marginal.to_numpy()[:3], rtol=1e-12
    )


def test_symm_visit_positions_with_missed_visits():
    from memoe.marginal.correlation import symm_matrix

    df = memoe.datasets.load("Orthodont")
    full = gls("distance ~ age * Sex", df, correlation=Symm("Subject")).fit()
    by_visit = gls("distance ~ age * Sex", df, correlation=Symm("Subject", visit="age")).fit()
    assert by_visit.loglik == pytest.approx(full.loglik, abs=1e-7)  # complete data: same positions
    # drop visit 2 (age 10) of three subjects: their rows keep positions 1, 3, 4
    drop = df.index[(df["age"] == 10) & df["Subject"].isin(["M01", "F03", "M10"])]
    sub = df.drop(drop).reset_index(drop=True)
    m = gls("distance ~ age * Sex", sub, correlation=Symm("Subject", visit="age"))
    u = np.array([0.4, 0.3, 0.2, 0.5, 0.1, 0.6])
    sol = m.problem.solve(u, True)
    R = symm_matrix(u, 4)
    pos = sub["age"].map({8: 0, 10: 1, 12: 2, 14: 3}).to_numpy()
    same = sub["Subject"].to_numpy()[:, None] == sub["Subject"].to_numpy()[None, :]
    W = np.where(same, R[pos[:, None], pos[None, :]], 0.0)
    ll = _dense_loglik(sub, m.design.X, m.design.y, sol.sigma**2 * W, True)
    assert -0.5 * sol.deviance == pytest.approx(ll, abs=1e-8)
    by_order = gls("distance ~ age * Sex", sub, correlation=Symm("Subject"))
    assert by_order.problem.deviance(u, True) != pytest.approx(sol.deviance, abs=1e-3)


def test_ar1_visit_lags():
    df = pd.DataFrame({"g": ["a"] * 3 + ["b"] * 3, "v": [1, 2, 4, 1, 3, 4], "y": [1.0, 2.0, 2.5, 0.3, 1.1, 0.9]})
    m = gls("y ~ 1", df, correlation=AR1(group="g", visit="v"))
    phi = 0.6
    W = m.problem.covariances(np.array([2 * np.arctanh(phi)]))[0]
    np.testing.assert_allclose(W[0], phi ** np.abs(np.subtract.outer([1, 2, 4], [1, 2, 4])), rtol=1e-14)
    np.testing.assert_allclose(W[1], phi ** np.abs(np.subtract.outer([1, 3, 4], [1, 3, 4])), rtol=1e-14)


@pytest.mark.parametrize("reml", [False, True])
def test_compound_symmetry_gls_equals_random_intercept(reml):
    from memoe.marginal import CompSymm

    df = memoe.datasets.load("Orthodont")
    cs = gls("distance ~ age * Sex", df, correlation=CompSymm("Subject")).fit(reml=reml)
    ri = memoe.lmm("distance ~ age * Sex + (1 | Subject)", df).fit(reml=reml)
    assert cs.loglik == pytest.approx(ri.loglik, abs=1e-6)
    np.testing.assert_allclose(cs.fixef.to_numpy(), ri.fixef.to_numpy(), rtol=1e-6)
    tau2, s2 = ri.varcorr["vcov"].iloc[0], ri.sigma**2
    assert cs.cor_params["Rho"] == pytest.approx(tau2 / (tau2 + s2), rel=1e-5)
    assert cs.sigma**2 == pytest.approx(tau2 + s2, rel=1e-5)


def test_intervals_of_an_independence_gls_are_ols_intervals():
    import statsmodels.api as sm

    df = _sim(11)
    fit = gls("y ~ t + x", df).fit(reml=True)
    X = np.column_stack([np.ones(len(df)), df["t"], df["x"]])
    ci = sm.OLS(df["y"].to_numpy(), X).fit().conf_int(0.05)
    iv = fit.intervals().loc["fixed"]
    np.testing.assert_allclose(iv[["lower", "upper"]].to_numpy(), ci, rtol=1e-10)
    # sigma: Wald on log sigma with the REML information 2 (N - p) for log sigma
    s = fit.intervals().loc[("sigma", "sigma")]
    half = stats.norm.ppf(0.975) / np.sqrt(2 * (len(df) - 3))
    assert s["lower"] == pytest.approx(fit.sigma * np.exp(-half), rel=1e-5)
    assert s["upper"] == pytest.approx(fit.sigma * np.exp(half), rel=1e-5)


def test_memoe_compare_accepts_marginal_fits():
    """The result offers what memoe.compare reads: a likelihood-ratio test of the AR(1) correlation."""
    df = memoe.datasets.load("Ovary")
    f = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)"
    m0 = memoe.lmm(f, df).fit(reml=False)
    m1 = lme(f, df, correlation=AR1()).fit(reml=False)
    table = memoe.compare(m0, m1)
    assert list(table["npar"]) == [5, 6]
    assert table["Chisq"].iloc[1] == pytest.approx(2 * (m1.loglik - m0.loglik), rel=1e-12)


def test_marginal_covariance_of_a_group():
    df = memoe.datasets.load("Ovary")
    f = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)"
    fit = lme(f, df, correlation=AR1()).fit()
    n = int((df["Mare"] == "3").sum())
    phi = fit.cor_params["Phi"]
    lag = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    expected = fit.ranef_cov.iloc[0, 0] * np.ones((n, n)) + fit.sigma**2 * phi**lag
    np.testing.assert_allclose(fit.marginal_covariance("3"), expected, rtol=1e-12)
    np.testing.assert_allclose(fit.residual_correlation("3"), phi**lag, rtol=1e-12)
    with pytest.raises(ArgumentError, match="'nope'"):
        fit.marginal_covariance("nope")

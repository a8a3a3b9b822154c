"""memoe.gee: independence = OLS with the CR0 sandwich, a per-cluster loop oracle of geepack's
algorithm on unbalanced data (batching by cluster size, waves with gaps), recovery of simulated
binomial / poisson coefficients, row order, missing values and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import memoe
from memoe.errors import ArgumentError, ArgumentTypeError, ConvergenceWarning, DataError, FormulaError, MemoeError
from memoe.gee import GEEOrderWarning, gee


def _orthodont() -> pd.DataFrame:
    return memoe.datasets.load("Orthodont")


def _unbalanced(seed: int = 3, n_groups: int = 40) -> pd.DataFrame:
    """Gaussian clusters of 1..5 rows with visits 1..6 (gaps), exchangeable-ish correlation."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        k = int(rng.integers(1, 6)) if g else 5  # at least one full cluster, and some singletons
        visits = np.sort(rng.choice(np.arange(1, 7), size=k, replace=False))
        u = rng.normal(scale=1.0)
        grp = "a" if g % 3 else "b"
        for v in visits:
            x = rng.normal()
            rows.append(
                {"id": f"s{g:02d}", "visit": int(v), "x": x, "grp": grp, "y": 1 + 0.5 * x + 0.2 * v + u + rng.normal()}
            )
    df = pd.DataFrame(rows)
    df["grp"] = pd.Categorical(df["grp"], categories=["a", "b"])
    return df


# ------------------------------------------------------------------------------------------------
# an independent, loop-per-cluster transcription of geepack's gee_est / gee_var (gaussian or poisson)


def _oracle(df: pd.DataFrame, corstr: str, time: str | None, tol: float = 1e-4, family: str = "gaussian"):
    X = np.column_stack([np.ones(len(df)), df["x"], (df["grp"] == "b").astype(float), df["visit"]])
    y = df["y"].to_numpy(float)
    # mean, d mu / d eta and variance: identity link or log link with v(mu) = mu
    if family == "gaussian":
        mean = lambda eta: eta  # noqa: E731
        dmu = lambda eta: np.ones_like(eta)  # noqa: E731
        var = lambda mu: np.ones_like(mu)  # noqa: E731
    else:
        mean = dmu = np.exp
        var = lambda mu: mu  # noqa: E731

    def pieces(c, beta):
        eta = X[c] @ beta
        mu = mean(eta)
        sv = np.sqrt(var(mu))
        return (dmu(eta) / sv)[:, None] * X[c], (y[c] - mu) / sv

    ids = df["id"].to_numpy()
    clusters = [np.flatnonzero(ids == g) for g in pd.unique(ids)]
    if time is None:
        waves = [np.arange(1, len(c) + 1) for c in clusters]
    else:
        levels = np.sort(df[time].unique())
        waves = [np.searchsorted(levels, df[time].to_numpy()[c]) + 1 for c in clusters]
    T = max(int(w.max()) for w in waves)
    pairs = [(a, b) for a in range(1, T + 1) for b in range(a + 1, T + 1)]

    def R_of(alpha, w):
        s = len(w)
        R = np.eye(s)
        for j in range(s):
            for k in range(s):
                if j == k or corstr == "independence":
                    continue
                if corstr == "exchangeable":
                    R[j, k] = alpha[0]
                elif corstr == "ar1":
                    R[j, k] = alpha[0] ** abs(w[k] - w[j])
                else:
                    a, b = sorted((w[j], w[k]))
                    R[j, k] = alpha[pairs.index((a, b))]
        return R

    def dR(alpha, w):
        rows = []
        for j in range(len(w)):
            for k in range(j + 1, len(w)):
                if corstr == "exchangeable":
                    rows.append([1.0])
                elif corstr == "ar1":
                    lag = abs(w[k] - w[j])
                    rows.append([1.0 if lag == 1 else lag * alpha[0] ** (lag - 1)])
                else:
                    e = np.zeros(len(pairs))
                    e[pairs.index(tuple(sorted((w[j], w[k]))))] = 1.0
                    rows.append(e)
        return np.array(rows)

    # start: the independence GLM by Fisher scoring to convergence
    beta = np.linalg.lstsq(X, y if family == "gaussian" else np.log(y + 0.5), rcond=None)[0]
    for _ in range(50):
        D, r = pieces(np.arange(len(y)), beta)
        beta = beta + np.linalg.solve(D.T @ D, D.T @ r)
    phi = np.mean(pieces(np.arange(len(y)), beta)[1] ** 2)
    q = {"independence": 0, "exchangeable": 1, "ar1": 1}.get(corstr, len(pairs))
    alpha = np.zeros(q)
    for _ in range(25):
        H = np.zeros((4, 4))
        G = np.zeros(4)
        for c, w in zip(clusters, waves, strict=True):
            Ri = np.linalg.inv(R_of(alpha, w))
            D, r = pieces(c, beta)
            H += D.T @ Ri @ D
            G += D.T @ Ri @ r
        db = np.linalg.solve(H, G)
        beta = beta + db
        r = pieces(np.arange(len(y)), beta)[1]
        dphi = np.mean(r**2) - phi
        phi += dphi
        da = np.zeros(q)
        if q:
            H3 = np.zeros((q, q))
            G3 = np.zeros(q)
            for c, w in zip(clusters, waves, strict=True):
                if len(c) < 2:
                    continue
                E = dR(alpha, w)
                rc = r[c] / np.sqrt(phi)
                z = np.array([rc[j] * rc[k] for j in range(len(c)) for k in range(j + 1, len(c))])
                R = R_of(alpha, w)
                rho = np.array([R[j, k] for j in range(len(c)) for k in range(j + 1, len(c))])
                H3 += E.T @ E
                G3 += E.T @ (z - rho)
            da = np.linalg.solve(H3, G3)
            alpha = alpha + da
        if max(np.max(np.abs(db)), abs(dphi), np.max(np.abs(da), initial=0)) <= tol:
            break
    A = np.zeros((4, 4))
    M = np.zeros((4, 4))
    for c, w in zip(clusters, waves, strict=True):
        Vi = np.linalg.inv(phi * R_of(alpha, w))
        D, r = pieces(c, beta)
        A += D.T @ Vi @ D
        u = D.T @ Vi @ r
        M += np.outer(u, u)
    Ai = np.linalg.inv(A)
    return beta, phi, alpha, Ai @ M @ Ai, Ai


@pytest.mark.parametrize("corstr", ["independence", "exchangeable", "ar1", "unstructured"])
@pytest.mark.parametrize("time", [None, "visit"])
def test_matches_loop_oracle_on_unbalanced_clusters(corstr, time):
    # 15 unstructured correlations need more clusters to stay positive definite
    df = _unbalanced(n_groups=200 if corstr == "unstructured" else 40)
    fit = gee("y ~ x + grp + visit", df, group="id", corstr=corstr, time=time).fit()
    assert fit.converged
    beta, phi, alpha, vrob, vnaive = _oracle(df, corstr, time)
    assert np.allclose(fit.params.to_numpy(), beta, rtol=1e-10, atol=0)
    assert fit.scale == pytest.approx(phi, rel=1e-10)
    assert np.allclose(fit.alpha.to_numpy(), alpha, rtol=1e-9, atol=1e-12)
    assert np.allclose(fit.vcov().to_numpy(), vrob, rtol=1e-9, atol=1e-14)
    assert np.allclose(fit.vcov("naive").to_numpy(), vnaive, rtol=1e-9, atol=1e-14)
    assert fit.ngroups["id"] == df["id"].nunique()
    assert list(fit.params.index) == ["(Intercept)", "x", "grpb", "visit"]


@pytest.mark.parametrize("corstr", ["exchangeable", "ar1"])
def test_poisson_matches_loop_oracle(corstr):
    df = _unbalanced(seed=5, n_groups=60)
    rng = np.random.default_rng(9)
    df["y"] = rng.poisson(np.exp(0.3 + 0.4 * df["x"] - 0.1 * df["visit"] + 0.2 * (df["y"] - df["y"].mean())))
    fit = gee("y ~ x + grp + visit", df, group="id", family="poisson", corstr=corstr, time="visit").fit()
    beta, phi, alpha, vrob, vnaive = _oracle(df, corstr, "visit", family="poisson")
    assert fit.converged
    assert np.allclose(fit.params.to_numpy(), beta, rtol=1e-8, atol=1e-10)
    assert fit.scale == pytest.approx(phi, rel=1e-8)
    assert np.allclose(fit.alpha.to_numpy(), alpha, rtol=1e-7)
    assert np.allclose(fit.vcov().to_numpy(), vrob, rtol=1e-7, atol=1e-12)
    assert np.allclose(fit.vcov("naive").to_numpy(), vnaive, rtol=1e-7, atol=1e-12)


def test_unstructured_names_and_matrix():
    df = _unbalanced(n_groups=200)
    fit = gee("y ~ x", df, group="id", corstr="unstructured", time="visit").fit()
    assert list(fit.alpha.index)[:3] == ["alpha.1:2", "alpha.1:3", "alpha.1:4"]
    assert len(fit.alpha) == 15
    R = fit.working_correlation
    assert R.loc[2, 5] == fit.alpha["alpha.2:5"] == R.loc[5, 2]
    assert np.all(np.isfinite(fit.alpha_se))


# ------------------------------------------------------------------------------------------------
# independence = OLS, CR0 sandwich


def test_independence_is_ols_with_cr0_sandwich():
    df = _orthodont()
    fit = gee("distance ~ age * Sex", df, group="Subject").fit()
    X = np.column_stack(
        [np.ones(len(df)), df["age"], df["Sex"] == "Female", df["age"] * (df["Sex"] == "Female")]
    ).astype(float)
    y = df["distance"].to_numpy()
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    e = y - X @ beta
    bread = np.linalg.inv(X.T @ X)
    meat = np.zeros((4, 4))
    for g in df["Subject"].unique():
        m = (df["Subject"] == g).to_numpy()
        u = X[m].T @ e[m]
        meat += np.outer(u, u)
    assert np.allclose(fit.params.to_numpy(), beta, rtol=1e-12)
    assert np.allclose(fit.vcov().to_numpy(), bread @ meat @ bread, rtol=1e-10)
    assert fit.scale == pytest.approx(np.mean(e**2), rel=1e-12)
    assert np.allclose(fit.vcov("naive").to_numpy(), fit.scale * bread, rtol=1e-10)
    assert fit.n_iter == 1 and len(fit.alpha) == 0
    # vcov() is the sandwich (also robust=None); "naive" the model-based matrix
    assert np.array_equal(fit.vcov(robust="sandwich"), fit.vcov()) and np.array_equal(fit.vcov(None), fit.vcov())
    with pytest.raises(MemoeError, match="not available"):
        fit.vcov(robust="CR2")
    # statsmodels' GEE agrees on everything but the scale (it divides by N - p)
    sm_fit = sm.GEE(y, X, groups=df["Subject"].astype(str), family=sm.families.Gaussian()).fit()
    assert np.allclose(sm_fit.params, beta, rtol=1e-10)
    assert np.allclose(sm_fit.cov_params(), fit.vcov().to_numpy(), rtol=1e-8)
    assert "Correlation structure = independence" in str(fit.summary())


# ------------------------------------------------------------------------------------------------
# non-Gaussian families on simulated data


def _simulate_counts(family: str, n_groups: int = 1500, seed: int = 11) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = 4
    gid = np.repeat(np.arange(n_groups), m)
    t = np.tile(np.arange(m), n_groups).astype(float)
    x = rng.normal(size=n_groups * m)
    trt = np.repeat(rng.integers(0, 2, n_groups), m)
    u = np.repeat(rng.normal(scale=0.5, size=n_groups), m)
    truth = np.array([-0.3, 0.6, -0.5, 0.15]) if family == "binomial" else np.array([0.4, 0.3, -0.4, 0.1])
    eta = truth[0] + truth[1] * x + truth[2] * trt + truth[3] * t
    if family == "binomial":
        # correlation through a shared latent normal threshold keeps the marginal model close to a logit
        p = 1.0 / (1.0 + np.exp(-(eta + u - 0.0)))
        y = (rng.uniform(size=len(p)) < p).astype(float)
    else:
        # multiplicative gamma frailty with mean 1: the marginal mean is exactly exp(eta)
        frail = np.repeat(rng.gamma(shape=4.0, scale=0.25, size=n_groups), m)
        y = rng.poisson(np.exp(eta) * frail).astype(float)
    df = pd.DataFrame({"y": y, "x": x, "trt": trt, "t": t, "id": gid})
    return df, truth


@pytest.mark.parametrize("corstr", ["exchangeable", "ar1"])
def test_poisson_recovers_coefficients(corstr):
    df, truth = _simulate_counts("poisson")
    fit = gee("y ~ x + trt + t", df, group="id", family="poisson", corstr=corstr).fit()
    assert fit.converged
    z = (fit.params.to_numpy() - truth) / fit.bse.to_numpy()
    assert np.all(np.abs(z) < 4), z
    assert fit.scale > 1.2  # the frailty overdisperses the counts
    assert 0.05 < fit.alpha.iloc[0] < 0.9
    # close to statsmodels' GEE (same equations, different alpha / scale estimators)
    cs = sm.cov_struct.Exchangeable() if corstr == "exchangeable" else sm.cov_struct.Autoregressive(grid=True)
    ref = sm.GEE.from_formula("y ~ x + trt + t", "id", df, time=df["t"], family=sm.families.Poisson(), cov_struct=cs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_params = ref.fit().params.to_numpy()
    assert np.max(np.abs(fit.params.to_numpy() - ref_params) / fit.bse.to_numpy()) < 0.2


def test_binomial_recovers_marginal_coefficients():
    df, truth = _simulate_counts("binomial", n_groups=3000)
    fit = gee("y ~ x + trt + t", df, group="id", family="binomial", corstr="exchangeable").fit()
    assert fit.converged
    # a random intercept attenuates marginal logit coefficients by about 1/sqrt(1 + 0.346 sigma^2)
    atten = 1.0 / np.sqrt(1.0 + 0.346 * 0.25)
    z = (fit.params.to_numpy() - truth * atten) / fit.bse.to_numpy()
    assert np.all(np.abs(z) < 4), z
    assert 0.0 < fit.alpha["alpha"] < 0.2
    assert fit.scale == pytest.approx(1.0, abs=0.1)
    assert np.all((fit.fitted > 0) & (fit.fitted < 1))
    assert np.allclose(fit.residuals("pearson"), fit.resid / np.sqrt(fit.fitted * (1 - fit.fitted)))


def test_scale_fix():
    df, _ = _simulate_counts("binomial", n_groups=200)
    fit = gee("y ~ x + trt", df, group="id", family="binomial", corstr="exchangeable", scale_fix=True).fit()
    # geepack holds phi at its start: the independence GLM's mean squared Pearson residual
    glm = sm.GLM(df["y"], sm.add_constant(df[["x", "trt"]]), family=sm.families.Binomial()).fit()
    assert fit.scale == pytest.approx(np.mean(glm.resid_pearson**2), rel=1e-8)
    assert np.isnan(fit.scale_se)
    assert "Scale is fixed." in str(fit.summary())
    free = gee("y ~ x + trt", df, group="id", family="binomial", corstr="exchangeable").fit()
    assert free.scale != pytest.approx(fit.scale, rel=1e-6)
    # alpha is scaled by the fixed phi (z = r_j r_k / phi)
    assert fit.alpha["alpha"] != pytest.approx(free.alpha["alpha"], rel=1e-6)


# ------------------------------------------------------------------------------------------------
# row order and missing values


def test_non_contiguous_groups_are_grouped_with_warning():
    df = _orthodont()
    ref = gee("distance ~ age * Sex", df, group="Subject", corstr="ar1").fit()
    rng = np.random.default_rng(0)
    # interleave subjects but keep each subject's own row order
    key = rng.permutation(len(df))
    key = np.sort(key.reshape(27, 4), axis=1).ravel()
    shuffled = df.iloc[np.argsort(key)]
    with pytest.warns(GEEOrderWarning, match="not contiguous") as rec:
        fit = gee("distance ~ age * Sex", shuffled, group="Subject", corstr="ar1").fit()
    assert rec[0].filename == __file__  # the warning points at the caller's line
    assert np.allclose(fit.params, ref.params, rtol=1e-12)
    assert np.allclose(fit.vcov(), ref.vcov(), rtol=1e-10)
    # per-row output follows the input rows
    assert fit.fitted.index.equals(shuffled.index)
    assert np.allclose(fit.fitted.loc[df.index], ref.fitted)


def test_time_orders_rows_within_clusters():
    df = _orthodont()
    ref = gee("distance ~ age * Sex", df, group="Subject", corstr="ar1").fit()
    reversed_within = df.iloc[::-1]  # clusters stay contiguous, ages descend within each
    desc = gee("distance ~ age * Sex", reversed_within, group="Subject", corstr="ar1").fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", GEEOrderWarning)
        timed = gee("distance ~ age * Sex", reversed_within, group="Subject", corstr="ar1", time="age").fit()
    assert np.allclose(timed.params, ref.params, rtol=1e-12)
    assert timed.alpha["alpha"] == pytest.approx(ref.alpha["alpha"], rel=1e-12)
    # AR(1) on the reversed row order without time: symmetric lags, same numbers too
    assert desc.alpha["alpha"] == pytest.approx(ref.alpha["alpha"], rel=1e-10)


def test_time_gaps_count_in_ar1_lags():
    df = _orthodont()
    dropped = df[~((df["age"] == 10) & df["Subject"].isin(["M01", "F01"]))]
    by_row = gee("distance ~ age * Sex", dropped, group="Subject", corstr="ar1").fit()
    by_time = gee("distance ~ age * Sex", dropped, group="Subject", corstr="ar1", time="age").fit()
    assert by_row.alpha["alpha"] != pytest.approx(by_time.alpha["alpha"], rel=1e-6)
    assert by_time.cluster_sizes.loc["M01"] == 3


def test_missing_values_dropped_and_aligned():
    df = _orthodont().copy()
    df.loc[[3, 50], "distance"] = np.nan
    df.loc[7, "Subject"] = np.nan
    fit = gee("distance ~ age * Sex", df, group="Subject", corstr="exchangeable").fit()
    assert fit.nobs == 105 and fit.n_dropped == 3
    assert fit.fitted.isna().sum() == 3 and np.isnan(fit.resid.loc[7])
    assert "3 rows dropped" in str(fit.summary())


def test_convergence_warning():
    df = _orthodont()
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        fit = gee("distance ~ age * Sex", df, group="Subject", corstr="ar1").fit(maxiter=2)
    assert not fit.converged


def test_tighter_tolerance_solves_the_estimating_equations():
    df = _orthodont()
    fit = gee("distance ~ age * Sex", df, group="Subject", corstr="ar1").fit(tol=1e-12)
    m = fit.model
    alpha = fit.alpha.to_numpy()
    # the beta step at the solution is zero
    assert np.max(np.abs(m._beta_step(fit.params.to_numpy(), alpha))) < 1e-10


# ------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"group": "Subjekt"}, DataError, "unknown group column 'Subjekt'"),
        ({"time": "visit"}, DataError, "unknown time column 'visit'"),
        ({"family": "gamma"}, ArgumentError, "family 'gamma'"),
        ({"corstr": "toeplitz"}, ArgumentError, "corstr 'toeplitz'"),
        ({"formula": "Sex ~ age"}, DataError, "response 'Sex' must be numeric"),
        ({"formula": "distance ~ age + (1 | Subject)"}, FormulaError, "random-effects"),
        ({"formula": "distance ~ age + height"}, DataError, "height"),
        ({"family": "binomial"}, DataError, r"must lie in \[0, 1\]"),
    ],
)
def test_bad_input(kwargs, err, match):
    args = {"formula": "distance ~ age * Sex", "group": "Subject"} | kwargs
    with pytest.raises(err, match=match):
        gee(args.pop("formula"), _orthodont(), **args)
    assert issubclass(err, MemoeError)


def test_bad_time_and_structure():
    df = _orthodont()
    dup = df.copy()
    dup.loc[1, "age"] = 8  # M01 now has two rows at age 8
    with pytest.raises(DataError, match="time column 'age' repeats a value within group 'M01'"):
        gee("distance ~ age", dup, group="Subject", corstr="ar1", time="age")
    df2 = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0], "id": [1, 1, 2, 2], "t": [1, 2, 3, 4]})
    with pytest.raises(DataError, match="never occur together"):
        gee("y ~ 1", df2, group="id", corstr="unstructured", time="t")
    single = pd.DataFrame({"y": [1.0, 2.0, 3.5], "id": [1, 2, 3]})
    with pytest.raises(DataError, match="one row"):
        gee("y ~ 1", single, group="id", corstr="exchangeable").fit()
    with pytest.raises(DataError, match="non-negative"):
        gee("y ~ 1", single.assign(y=[-1.0, 0.0, 1.0]), group="id", family="poisson")
    with pytest.raises(ArgumentTypeError, match="DataFrame"):
        gee("y ~ 1", single.to_dict(), group="id")


def test_predict():
    df = _orthodont()
    fit = gee("distance ~ age * Sex", df, group="Subject", corstr="ar1").fit()
    assert np.allclose(fit.predict(df), fit.fitted)
    new = pd.DataFrame({"age": [9.0, 11.0], "Sex": pd.Categorical(["Female", "Male"], categories=["Male", "Female"])})
    b = fit.params
    expected = [
        b["(Intercept)"] + b["SexFemale"] + 9 * (b["age"] + b["age:SexFemale"]),
        b["(Intercept)"] + 11 * b["age"],
    ]
    assert np.allclose(fit.predict(new), expected)
    counts, _ = _simulate_counts("poisson", n_groups=100)
    pois = gee("y ~ x + trt + t", counts, group="id", family="poisson").fit()
    assert np.allclose(np.exp(pois.predict(counts, type="link")), pois.predict(counts))
    with pytest.raises(memoe.errors.MemoeError, match="type must be"):
        fit.predict(df, type="terms")
    with pytest.raises(DataError, match="DataFrame"):
        fit.predict({"age": [1]})


def test_summary_number_formatting_follows_r():
    """printCoefmat / format.pval / print.data.frame outputs copied from published geeglm summaries."""
    from memoe.core.rformat import format_pval as _format_pvalues
    from memoe.core.rformat import r_format as _r_format

    # moth data (binomial, exchangeable): estimates and SEs rounded jointly to 6 decimals
    cs = np.round([-0.714717, 0.129102, -0.009385, 0.003221, -0.410238, 0.163953, 0.027762, 0.005812], 6)
    assert _r_format(cs, 4)[:4] == ["-0.714717", "0.129102", "-0.009385", "0.003221"]
    assert _r_format(np.round([30.6481, 8.48912, 6.26101, 22.8149], 3), 4) == ["30.648", "8.489", "6.261", "22.815"]
    assert _format_pvalues(np.array([3.09e-08, 0.00357, 0.01234, 1.78e-06])) == [
        "3.09e-08",
        "0.00357",
        "0.01234",
        "1.78e-06",
    ]
    # "<2e-16" without a space next to short p-values, with one next to wide ones
    assert _format_pvalues(np.array([0.0, 0.078, 0.040]))[0] == "<2e-16"
    assert _format_pvalues(np.array([0.0, 0.00016]))[0] == "< 2e-16"
    # scale / alpha tables: 4 significant digits per column
    assert _r_format([0.01313], 4) == ["0.01313"] and _r_format([0.006935], 4) == ["0.006935"]
    assert _r_format([2.453e-17], 4) == ["2.453e-17"]
    text = str(gee("distance ~ age * Sex", _orthodont(), group="Subject", corstr="exchangeable").fit().summary())
    assert "(Intercept)   16.34062 1.17148 194.566  < 2e-16 ***" in text
    assert "alpha   0.6178  0.1312" in text

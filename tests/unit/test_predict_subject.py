"""predict_subject: dynamic prediction from a subject's history, against a direct conditional normal.

The reference is built in each test from the dense marginal covariance of the subject's rows
(``fit.marginal_covariance(group)`` for gls / lme, ``Z G Z' + sigma^2 I`` for lmm) with
``numpy.linalg.solve``: two exact computations of the same conditional moments, so the tolerance is
rounding (1e-9 relative; the marginal covariances here have condition numbers below 1e5).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import memoe
from memoe.core.design.newdata import PredictArgumentError
from memoe.errors import DataError, MemoeError, MemoeWarning
from memoe.marginal import AR1, CAR1, Exp, gls, lme

RTOL = 1e-9
OVARY = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)"


def _quiet(f):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MemoeWarning)
        return f()


def _direct(V, X, y, beta, hist):
    """Conditional mean and SD of the rows ~hist given the rows hist of one subject."""
    h, t = hist, ~hist
    K = np.linalg.solve(V[np.ix_(h, h)], V[np.ix_(h, t)]).T
    mean = X[t] @ beta + K @ (y[h] - X[h] @ beta)
    var = np.diag(V[np.ix_(t, t)] - K @ V[np.ix_(h, t)])
    return mean, np.sqrt(var)


@pytest.fixture(scope="module")
def bodyweight():
    return memoe.datasets.load("BodyWeight")


@pytest.fixture(scope="module")
def marginal_fits(bodyweight):
    ovary = memoe.datasets.load("Ovary")
    return {
        "car1": (
            bodyweight,
            _quiet(lambda: gls("weight ~ Time * Diet", bodyweight, correlation=CAR1("Time", "Rat")).fit()),
            "Rat",
        ),
        "exp_nugget": (
            bodyweight,
            _quiet(
                lambda: lme(
                    "weight ~ Time * Diet + (Time | Rat)", bodyweight, correlation=Exp("Time", nugget=True)
                ).fit()
            ),
            "Rat",
        ),
        "ar1": (ovary, _quiet(lambda: lme(OVARY, ovary, correlation=AR1()).fit()), "Mare"),
    }


@pytest.mark.parametrize("structure", ["car1", "exp_nugget", "ar1"])
def test_marginal_structures_match_conditional_normal(marginal_fits, structure):
    df, fit, g = marginal_fits[structure]
    rng = np.random.default_rng(7)
    # a different split per subject: the first k_i rows observed (k_i from 1 to n_i - 1), the rest predicted
    pos = df.groupby(g, observed=True).cumcount().to_numpy()
    size = df.groupby(g, observed=True)[g].transform("size").to_numpy()
    k = {s: int(rng.integers(1, n)) for s, n in zip(df[g], size, strict=True)}
    hist = pos < np.array([k[s] for s in df[g]])
    out = fit.predict_subject(df[hist], df[~hist])
    assert list(out.index) == list(df.index[~hist])
    X = fit.design.fixed.matrix_for(df)
    y = df[fit.response_name].to_numpy(dtype=float)
    beta = fit.fixef.to_numpy()
    for s in pd.unique(df[g])[:6]:
        rows = (df[g] == s).to_numpy()
        V = fit.marginal_covariance(s)
        mean, sd = _direct(V, X[rows], y[rows], beta, hist[rows])
        got = out[out[g] == s]
        np.testing.assert_allclose(got["fit"], mean, rtol=RTOL)
        np.testing.assert_allclose(got["sd"], sd, rtol=RTOL)
    z = stats.norm.ppf(0.975)
    np.testing.assert_allclose(out["upper"] - out["fit"], z * out["sd"], rtol=1e-12)


def test_exp_nugget_confidence_leaves_out_the_measurement_error(marginal_fits, bodyweight):
    _, fit, _ = marginal_fits["exp_nugget"]
    h, t = bodyweight[bodyweight.Time < 30], bodyweight[bodyweight.Time >= 30]
    pred = fit.predict_subject(h, t)
    conf = fit.predict_subject(h, t, interval="confidence")
    tau2 = fit.cor_params["nugget"] * fit.sigma**2
    np.testing.assert_allclose(conf["fit"], pred["fit"], rtol=1e-13)
    np.testing.assert_allclose(pred["sd"] ** 2 - conf["sd"] ** 2, tau2, rtol=1e-8)


def test_time_array_equals_target_frame(marginal_fits, bodyweight):
    _, fit, _ = marginal_fits["car1"]
    h = bodyweight[bodyweight.Time <= 22]
    times = [29.0, 44.0, 64.0]
    a = fit.predict_subject(h, times)
    assert list(a.columns) == ["Rat", "Time", "fit", "sd", "lower", "upper"]
    target = h.groupby("Rat", observed=True).tail(1).loc[lambda d: d.index.repeat(3)].reset_index(drop=True)
    target["Time"] = np.tile(times, len(target) // 3)
    b = fit.predict_subject(h, target)
    np.testing.assert_allclose(a[["fit", "sd"]], b[["fit", "sd"]], rtol=1e-13)


# ---------------------------------------------------------------------------- LMM
@pytest.fixture(scope="module")
def sleep_fit():
    df = memoe.datasets.load("sleepstudy")
    return df, _quiet(lambda: memoe.lmm("Reaction ~ Days + (Days | Subject)", df).fit())


def test_lmm_matches_conditional_normal_and_new_subjects(sleep_fit):
    df, fit = sleep_fit
    hist = (df.Days < 3 + (df.Subject.astype(int) % 4)).to_numpy()  # history lengths 3 to 6
    out = fit.predict_subject(df[hist], df[~hist], time="Days")
    G = fit.term_covariances()[0]
    beta = fit.fixef.to_numpy()
    for s in pd.unique(df.Subject)[:5]:
        rows = (df.Subject == s).to_numpy()
        X = fit.design.fixed.matrix_for(df[rows])
        V = X @ G @ X.T + fit.sigma**2 * np.eye(rows.sum())  # Z = X = [1, Days]
        mean, sd = _direct(V, X, df.Reaction.to_numpy()[rows], beta, hist[rows])
        got = out[out.Subject == s]
        np.testing.assert_allclose(got["fit"], mean, rtol=RTOL)
        np.testing.assert_allclose(got["sd"], sd, rtol=RTOL)
        conf = fit.predict_subject(df[hist & rows], df[~hist & rows], interval="confidence")
        np.testing.assert_allclose(got["sd"] ** 2 - conf["sd"] ** 2, fit.sigma**2, rtol=1e-8)
    # a relabelled subject (not in the fit) with the same history gets the same prediction
    h1 = df[hist & (df.Subject == df.Subject.iloc[0])].assign(Subject="new")
    t1 = df[~hist & (df.Subject == df.Subject.iloc[0])].assign(Subject="new")
    np.testing.assert_allclose(fit.predict_subject(h1, t1)["fit"], out[out.Subject == df.Subject.iloc[0]]["fit"])


def test_lmm_subject_without_history_gets_marginal(sleep_fit):
    df, fit = sleep_fit
    target = pd.DataFrame({"Subject": ["nobody", "nobody"], "Days": [0.0, 5.0]})
    out = fit.predict_subject(df.head(10), target)
    X = np.column_stack([np.ones(2), target.Days])
    np.testing.assert_allclose(out["fit"], X @ fit.fixef.to_numpy(), rtol=1e-13)
    var = np.einsum("ij,jk,ik->i", X, fit.term_covariances()[0], X) + fit.sigma**2
    np.testing.assert_allclose(out["sd"] ** 2, var, rtol=1e-12)


def test_history_rows_with_missing_response_are_ignored(sleep_fit):
    df, fit = sleep_fit
    h = df[df.Days < 4].copy()
    t = df[df.Days >= 4]
    base = fit.predict_subject(h, t)
    h2 = pd.concat([h, h.head(3).assign(Reaction=np.nan, Days=9.5)])
    np.testing.assert_allclose(fit.predict_subject(h2, t)["fit"], base["fit"], rtol=1e-13)


# ---------------------------------------------------------------------------- refusals
def test_refusals_name_the_problem(sleep_fit, bodyweight):
    df, fit = sleep_fit
    with pytest.raises(DataError, match="'Reaction'"):
        fit.predict_subject(df.drop(columns="Reaction"), df)
    with pytest.raises(DataError, match="'Subject'"):
        fit.predict_subject(df, df.drop(columns="Subject"))
    with pytest.raises(PredictArgumentError, match="time="):
        fit.predict_subject(df, [1.0, 2.0])
    with pytest.raises(PredictArgumentError, match="interval"):
        fit.predict_subject(df, df, interval="credible")
    with pytest.raises(MemoeError, match="history must be a pandas DataFrame"):
        fit.predict_subject(df.to_numpy(), df)
    pen = memoe.datasets.load("Penicillin")
    crossed = _quiet(lambda: memoe.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", pen).fit())
    with pytest.raises(MemoeError, match="single grouping factor"):
        crossed.predict_subject(pen, pen)
    plain = _quiet(lambda: gls("weight ~ Time", bodyweight).fit())
    with pytest.raises(MemoeError, match="independent residuals"):
        plain.predict_subject(bodyweight, bodyweight)


def test_many_subjects_batched_quickly():
    """10,000 subjects with 3 history lengths: no per-subject loop (well under a second)."""
    import time

    df = memoe.datasets.load("sleepstudy")
    fit = _quiet(lambda: memoe.lmm("Reaction ~ Days + (Days | Subject)", df).fit())
    rng = np.random.default_rng(3)
    n = 10_000
    nh = rng.integers(1, 4, n)
    sid = np.repeat(np.arange(n), nh)
    days = np.concatenate([np.arange(k) for k in nh]).astype(float)
    hist = pd.DataFrame({"Subject": sid, "Days": days, "Reaction": 250 + 10 * days + rng.normal(0, 30, len(sid))})
    start = time.perf_counter()
    out = fit.predict_subject(hist, np.array([5.0, 9.0]), time="Days")
    elapsed = time.perf_counter() - start
    assert len(out) == 2 * n and np.isfinite(out[["fit", "sd"]]).all().all()
    assert elapsed < 5.0, elapsed

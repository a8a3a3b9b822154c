"""lme4's lmList: per-group OLS fits, pooled-SD tables, confint, NA coefficients, plot, shared interface.

References: ``tools/reference/cases/lmm_weights_transforms.R`` (lme4::lmList on sleepstudy, and on a copy
where subject 309 keeps a single row). Estimates are least-squares solutions of well-conditioned 10 x 2
problems: compared to 1e-8 relative; standard errors and p-values to 1e-6 relative.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.result import FitResult
from memoe.errors import FormulaError, MemoeError

DATA = Path(__file__).resolve().parents[1] / "data"


def _ref(case: str) -> dict:
    return json.loads((DATA / f"{case}.json").read_text())["results"]


def _data(short: bool = False) -> pd.DataFrame:
    df = pd.read_csv(DATA / "sleep_weighted.csv", dtype={"Subject": str})
    df["Subject"] = pd.Categorical(df["Subject"], categories=sorted(df["Subject"].unique(), key=int))
    if short:
        df = df[~((df["Subject"] == "309") & (df["Days"] > 0))].reset_index(drop=True)
    return df


@pytest.fixture(scope="module")
def fit():
    return memoe.lmlist("Reaction ~ Days | Subject", _data())


@pytest.fixture(scope="module")
def short():
    return memoe.lmlist("Reaction ~ Days | Subject", _data(short=True))


def _close(a, b, rtol):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.array_equal(np.isnan(a), np.isnan(b)), (a, b)
    ok = ~np.isnan(b)
    np.testing.assert_allclose(a[ok], b[ok], rtol=rtol, atol=0)


@pytest.mark.parametrize("case, which", [("lmlist_sleepstudy", "fit"), ("lmlist_sleepstudy_short", "short")])
def test_against_lme4(case, which, request):
    res = request.getfixturevalue(which)
    r = _ref(case)
    coef = pd.DataFrame(r["coef"]).set_index("group").astype(float)
    mine = res.coef()
    assert list(mine.columns) == list(coef.columns)
    _close(mine.loc[[str(g) for g in coef.index]].to_numpy(), coef.to_numpy(), 1e-8)
    assert res.pooled_df == r["pooled_df"]
    assert res.sigma == pytest.approx(r["pooled_sd"], rel=1e-10)
    tab = res.group_table()
    ref = pd.DataFrame(r["coefficients"]).set_index(["group", "term"]).astype(float)
    mine = tab.loc[list(ref.index)]
    _close(mine["estimate"], ref["estimate"], 1e-8)
    _close(mine["std_error"], ref["std_error"], 1e-6)
    _close(mine["statistic"], ref["t_value"], 1e-6)
    _close(mine["p_value"], ref["p_value"], 1e-6)
    ci = res.confint_frame(level=r["confint_level"])
    ref = pd.DataFrame(r["confint"]).set_index(["group", "term"]).astype(float)
    _close(ci.loc[list(ref.index), "lower"], ref["lower"], 1e-6)
    _close(ci.loc[list(ref.index), "upper"], ref["upper"], 1e-6)
    assert res.loglik == pytest.approx(r["loglik"], abs=1e-8)
    assert res.df_model == r["loglik_df"]
    _close(res.fixef[list(r["fixef"])], list(r["fixef"].values()), 1e-8)
    _close(res.fitted, r["fitted_values"], 1e-8)
    nd = pd.DataFrame(r["predict_newdata"]["newdata"])
    # lme4 returns the predictions grouped (groups in order of first appearance); memoe in row order
    first = {g: i for i, g in reversed(list(enumerate(nd["Subject"])))}
    order = sorted(range(len(nd)), key=lambda i: (first[nd["Subject"][i]], i))
    _close(res.predict(nd).to_numpy()[order], r["predict_newdata"]["predicted"], 1e-8)
    _close(res.r_squared.to_numpy(), r["r_squared"], 1e-8)


def test_batched_fits_equal_separate_least_squares(fit):
    df = _data()
    for g in ["308", "335", "372"]:
        sub = df[df["Subject"] == g]
        X = np.column_stack([np.ones(len(sub)), sub["Days"]])
        b = np.linalg.lstsq(X, sub["Reaction"].to_numpy(), rcond=None)[0]
        np.testing.assert_allclose(fit.coef().loc[g].to_numpy(), b, rtol=1e-10)


def test_shared_interface_and_summary(fit):
    assert isinstance(fit, FitResult) and fit.family == "lmlist"
    assert fit.params.shape == (36,) and fit.params.index[1] == "Days|308"
    assert fit.vcov().shape == (36, 36)
    np.testing.assert_allclose(fit.bse.to_numpy(), fit.coef_table()["std_error"].to_numpy(), rtol=1e-12)
    assert list(fit.coef_table().columns) == ["estimate", "std_error", "statistic", "df", "p_value"]
    assert {"lower", "upper"} <= set(fit.confint().columns)
    assert fit.ngroups["Subject"] == 18 and fit.nobs == 180
    assert fit.aic == pytest.approx(-2 * fit.loglik + 2 * 37)
    text = str(fit.summary())
    assert "Residual standard error" in text and "308" in text
    td = fit.tidy()
    assert len(td) == 36
    assert len(fit.glance()) == 1
    np.testing.assert_allclose(fit.predict().to_numpy(), fit.fitted.to_numpy())


def test_unpooled_table_uses_each_groups_sigma(fit):
    tab = fit.group_table(pool=False)
    df = _data()
    sub = df[df["Subject"] == "308"]
    X = np.column_stack([np.ones(len(sub)), sub["Days"]])
    y = sub["Reaction"].to_numpy()
    _, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    s2 = rss[0] / (len(y) - 2)
    se = np.sqrt(np.diag(np.linalg.inv(X.T @ X)) * s2)
    np.testing.assert_allclose(tab.loc["308", "std_error"].to_numpy(), se, rtol=1e-10)
    assert (tab["df"] == 8).all()


def test_plot_draws_one_panel_per_coefficient(fit):
    fig = fit.plot.intervals()
    assert len(fig.axes) == 2
    assert [a.get_title() for a in fig.axes] == ["(Intercept)", "Days"]
    assert "intervals" in fit.plot.available() and "residuals" in fit.plot.available()
    assert len(fit.plot.residuals().axes) >= 1


def test_bad_formulas_are_refused():
    df = _data()
    with pytest.raises(FormulaError, match="grouping factor after"):
        memoe.lmlist("Reaction ~ Days", df)
    with pytest.raises(MemoeError, match="Subjekt"):
        memoe.lmlist("Reaction ~ Days | Subjekt", df)


def test_no_residual_df_is_refused():
    df = _data().groupby("Subject", observed=True).head(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MemoeError, match="degrees of freedom"):
            memoe.lmlist("Reaction ~ Days | Subject", df)


def test_save_load_round_trip(fit, tmp_path):
    path = tmp_path / "lmlist.memoe"
    fit.save(str(path))
    back = memoe.load(str(path))
    assert type(back) is type(fit)
    np.testing.assert_array_equal(back.coef().to_numpy(), fit.coef().to_numpy())
    assert back.loglik == fit.loglik and back.sigma == fit.sigma
    pd.testing.assert_frame_equal(back.group_table(), fit.group_table())

"""Refusals and edge cases of LMM prior weights and offsets (lme4's ``weights=``, ``offset=``, ``offset()``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import DataError, FormulaError, MemoeError

F = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def ss() -> pd.DataFrame:
    d = memoe.datasets.load("sleepstudy")
    return d.assign(w=1.0 + (d["Days"] % 3) / 2.0, o=np.cos(d["Days"].to_numpy(float)), txt="a")


@pytest.mark.parametrize(
    "weights, match",
    [
        (-1.0, "negative.*lme4 refuses"),
        (0.0, "zero.*-Inf.*drop those rows"),
        (np.inf, "infinite value"),
    ],
)
def test_bad_weight_values_are_refused_naming_the_column(ss, weights, match):
    df = ss.copy()
    df.loc[3, "w"] = weights
    with pytest.raises(DataError, match=match) as info:
        memoe.lmm(F, df, weights="w")
    assert "'w'" in str(info.value)


def test_weights_array_of_wrong_length_or_type(ss):
    with pytest.raises(DataError, match="one value per data row"):
        memoe.lmm(F, ss, weights=np.ones(3))
    with pytest.raises(DataError, match=r"weights.*numeric"):
        memoe.lmm(F, ss, weights="txt")
    with pytest.raises(DataError, match="'nope' is not in the data"):
        memoe.lmm(F, ss, weights="nope")
    # a missing value in a weights array drops its row, as R's model frame does with NA weights
    arr = np.ones(len(ss))
    arr[2] = np.nan
    assert memoe.lmm(F, ss, weights=arr).fit().nobs == len(ss) - 1


def test_missing_weight_drops_the_row_as_r_does(ss):
    df = ss.copy()
    df.loc[[1, 2], "w"] = np.nan
    fit = memoe.lmm(F, df, weights="w").fit()
    assert fit.nobs == 178 and fit.n_dropped == 2
    assert np.isnan(fit.fitted.iloc[1]) and np.isfinite(fit.fitted.iloc[0])


def test_non_numeric_offset_is_refused(ss):
    with pytest.raises(DataError, match=r"offset.*'txt'.*numeric"):
        memoe.lmm("Reaction ~ Days + offset(txt) + (1 | Subject)", ss)
    with pytest.raises(DataError, match="offset column 'txt' must be numeric"):
        memoe.lmm(F, ss, offset="txt")
    with pytest.raises(FormulaError, match="cannot be subtracted"):
        memoe.lmm("Reaction ~ Days - offset(o) + (1 | Subject)", ss)


def test_offset_equals_shifting_the_response(ss):
    a = memoe.lmm("Reaction ~ Days + offset(o) + (Days | Subject)", ss).fit()
    b = memoe.lmm(F, ss.assign(Reaction=ss["Reaction"] - ss["o"])).fit()
    assert a.loglik == pytest.approx(b.loglik, abs=1e-8)
    np.testing.assert_allclose(a.fixef, b.fixef, rtol=1e-8)
    np.testing.assert_allclose(a.fitted - ss["o"], b.fitted, rtol=1e-8)
    # offset(expr) and offset= add up; offset(2 * o) is an expression
    c = memoe.lmm("Reaction ~ Days + offset(o) + (Days | Subject)", ss, offset="o").fit()
    d = memoe.lmm("Reaction ~ Days + offset(2 * o) + (Days | Subject)", ss).fit()
    assert c.loglik == pytest.approx(d.loglik, abs=1e-8)


def test_prediction_replays_formula_offsets_only(ss):
    fit = memoe.lmm("Reaction ~ Days + offset(o) + (Days | Subject)", ss, weights="w").fit()
    nd = ss.iloc[[0, 11]].copy()
    np.testing.assert_allclose(fit.predict(nd), fit.fitted.iloc[[0, 11]], rtol=1e-10)
    with pytest.raises(MemoeError, match="offset term offset\\(o\\)"):
        fit.predict(nd.drop(columns="o"))
    arg = memoe.lmm(F, ss, offset="o").fit()
    # lme4's predict(newdata) does not add the offset= argument
    pop = arg.predict(nd, re_form=None).to_numpy()
    np.testing.assert_allclose(pop, arg.fixef["(Intercept)"] + arg.fixef["Days"] * nd["Days"], rtol=1e-12)


def test_constant_weights_rescale_sigma_in_the_crossed_engine(ss):
    # weight 2 on every row (residual variance sigma^2 / 2): the same beta and theta, sigma * sqrt(2)
    base = memoe.lmm("Reaction ~ Days + (1 | Subject) + (1 | w)", ss).fit(reml=False)
    two = memoe.lmm("Reaction ~ Days + (1 | Subject) + (1 | w)", ss, weights=np.full(len(ss), 2.0)).fit(reml=False)
    np.testing.assert_allclose(two.fixef, base.fixef, rtol=1e-6)
    assert two.sigma == pytest.approx(base.sigma * np.sqrt(2.0), rel=1e-6)
    # lme4's logLik: the 0.5 sum(log w) term offsets the larger sigma exactly
    assert two.loglik == pytest.approx(base.loglik, abs=1e-6)

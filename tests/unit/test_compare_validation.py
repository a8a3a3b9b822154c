"""memoe.compare: non-nested models get no p-value (warning + note), invalid inputs a ModelComparisonError."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import ArgumentTypeError, MemoeError, MemoeWarning, ModelComparisonError
from memoe.inference.lrt import nesting
from memoe.marginal import AR1, CompSymm, gls


def _fit(formula, df, reml=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memoe.lmm(formula, data=df).fit(reml=reml)


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    df = memoe.datasets.load("sleepstudy")
    return df.assign(D2=df["Days"] ** 2, D3=df["Days"] ** 3, Dc=df["Days"] - 4.5)


@pytest.fixture(scope="module")
def base(sleep):
    return _fit("Reaction ~ Days + (1 | Subject)", sleep)


def test_non_nested_fixed_effects_get_no_p_value(sleep, base):
    other = _fit("Reaction ~ D2 + D3 + (1 | Subject)", sleep)  # one more parameter, Days not in its span
    with pytest.warns(MemoeWarning, match=r"m0 and m1 are not nested \(fixed effects \['Days'\].*not valid") as rec:
        table = memoe.compare({"m0": base, "m1": other})
    assert rec[0].filename == __file__
    assert table["Df"].iloc[1] == 1
    assert np.isnan(table["Chisq"].iloc[1]) and np.isnan(table["Pr(>Chisq)"].iloc[1])
    assert table.nested == [None, False]
    # the criteria are still there: the models can be compared by AIC / BIC
    assert np.all(np.isfinite(table["AIC"])) and np.all(np.isfinite(table["BIC"]))
    assert "not nested" in str(table) and "AIC / BIC" in str(table)


def test_non_nested_random_effects_same_npar(sleep, base):
    slope = _fit("Reaction ~ Days + (0 + Days | Subject)", sleep)
    with pytest.warns(MemoeWarning, match=r"Subject:\(Intercept\) of the smaller model are not in the larger one"):
        table = memoe.compare(base, slope)
    assert table.nested == [None, False] and np.isnan(table["Pr(>Chisq)"].iloc[1])


def test_reparametrised_nested_models_keep_their_test(sleep, base):
    # centred Days plus a quadratic contains the span of (1, Days): nested although the names differ
    big = _fit("Reaction ~ Dc + D2 + (1 | Subject)", sleep)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemoeWarning)
        table = memoe.compare(base, big)
    assert table.nested == [None, True]
    assert table["Chisq"].iloc[1] == pytest.approx(2 * (big.loglik - base.loglik), rel=1e-10)
    assert 0 < table["Pr(>Chisq)"].iloc[1] < 1
    ok, why = nesting(base, big)
    assert ok and why == ""


def test_residual_structures_that_are_not_nested():
    df = memoe.datasets.load("Orthodont")
    before = df.copy(deep=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = gls("distance ~ age", df, correlation=AR1("Subject")).fit(reml=False)
        c = gls("distance ~ age", df, correlation=CompSymm("Subject")).fit(reml=False)
        ind = gls("distance ~ age", df).fit(reml=False)
    with pytest.warns(MemoeWarning, match=r"residual correlations AR1.* and CompSymm.* are not nested"):
        t = memoe.compare(a, c)
    assert t.nested == [None, False]
    # independence is nested in AR(1): a valid test
    t2 = memoe.compare(ind, a)
    assert t2.nested == [None, True] and np.isfinite(t2["Pr(>Chisq)"].iloc[1])
    pd.testing.assert_frame_equal(df, before)


def test_invalid_inputs(sleep, base):
    with pytest.raises(ModelComparisonError, match=r"'model2' is not a fitted likelihood model \(str\)"):
        memoe.compare(base, "m1")
    with pytest.raises(ModelComparisonError, match=r"names must be distinct; \['a'\] repeated"):
        memoe.compare(base, base, names=["a", "a"])
    with pytest.raises(ModelComparisonError, match="2 names for 3 models"):
        memoe.compare(base, base, base, names=["a", "b"])
    with pytest.raises(ArgumentTypeError, match="boundary must be True or False"):
        memoe.compare(base, base, boundary="yes")
    with pytest.raises(ArgumentTypeError, match="refit must be True or False"):
        memoe.compare(base, base, refit=None)


def test_different_data_is_refused(sleep, base):
    fewer = _fit("Reaction ~ Days + (1 | Subject)", sleep.iloc[:170])
    with pytest.raises(ModelComparisonError, match="180 and 170 observations") as info:
        memoe.compare(base, fewer)
    assert isinstance(info.value, MemoeError)


def test_reml_fit_without_model_cannot_be_refitted(sleep):
    r0 = _fit("Reaction ~ Days + (1 | Subject)", sleep, reml=True)
    r1 = _fit("Reaction ~ 1 + (1 | Subject)", sleep, reml=True)
    detached = copy.copy(r0)
    try:
        detached.model = None
    except AttributeError:
        pytest.skip("the result's model is read-only")
    with pytest.warns(MemoeWarning, match="refitting"), pytest.raises(ModelComparisonError, match="cannot be refitted"):
        memoe.compare(detached, r1)

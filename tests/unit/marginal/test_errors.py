"""Bad input raises memoe errors that name the column or term at fault."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import DataError, FormulaError
from memoe.marginal import AR1, CAR1, Exp, Symm, VarIdent, gls, lme


@pytest.fixture
def bw() -> pd.DataFrame:
    return memoe.datasets.load("BodyWeight")


def test_unknown_time_column_is_named(bw):
    with pytest.raises(DataError, match="'Day'"):
        gls("weight ~ Time", bw, correlation=CAR1("Day", "Rat"))


def test_unknown_group_column_is_named(bw):
    with pytest.raises(DataError, match="'Animal'"):
        gls("weight ~ Time", bw, correlation=AR1(group="Animal"))


def test_unknown_strata_column_is_named(bw):
    with pytest.raises(DataError, match="'Sex'"):
        gls("weight ~ Time", bw, weights=VarIdent("Sex"))


def test_non_numeric_time_is_named(bw):
    df = bw.assign(when=bw["Time"].astype(str))
    with pytest.raises(DataError, match=r"'when'.*numeric"):
        gls("weight ~ Time", df, correlation=CAR1("when", "Rat"))


def test_repeated_times_within_a_group_are_named(bw):
    df = bw.copy()
    df.loc[1, "Time"] = df.loc[0, "Time"]
    with pytest.raises(DataError, match=r"'Time'.*repeated"):
        gls("weight ~ 1", df, correlation=Exp("Time", "Rat"))


def test_single_stratum_varident(bw):
    with pytest.raises(DataError, match=r"'Rat'.*single"):
        gls("weight ~ Time", bw[bw["Rat"] == "1"], weights=VarIdent("Rat"))


def test_gls_rejects_bar_terms_and_lme_needs_them(bw):
    with pytest.raises(FormulaError, match="lme"):
        gls("weight ~ Time + (1 | Rat)", bw)
    with pytest.raises(FormulaError, match="random-effects"):
        lme("weight ~ Time", bw, correlation=AR1())


def test_lme_structure_group_must_be_the_random_effects_group(bw):
    with pytest.raises(FormulaError, match=r"'Diet'.*'Rat'"):
        lme("weight ~ Time + (1 | Rat)", bw, correlation=AR1(group="Diet"))


def test_wrong_structure_type():
    df = pd.DataFrame({"y": np.arange(6.0), "g": list("aabbcc")})
    with pytest.raises(TypeError, match="correlation"):
        gls("y ~ 1", df, correlation="ar1")
    with pytest.raises(TypeError, match="weights"):
        gls("y ~ 1", df, weights="g")


def test_missing_values_in_structure_columns_drop_rows(bw):
    df = bw.astype({"Time": float}).copy()
    df.loc[3, "Time"] = np.nan
    fit = gls("weight ~ Diet", df, correlation=CAR1("Time", "Rat")).fit()
    assert fit.n_dropped == 1 and fit.nobs == len(df) - 1
    assert np.isnan(fit.fitted.iloc[3])


def test_repeated_visit_within_group_is_named():
    df = pd.DataFrame({"g": list("aabb"), "v": [1, 1, 1, 2], "y": [1.0, 2.0, 3.0, 4.5]})
    with pytest.raises(DataError, match=r"'v'.*repeated.*'a'"):
        gls("y ~ 1", df, correlation=Symm("g", visit="v"))


def test_non_integer_ar1_visit_is_named():
    df = pd.DataFrame({"g": list("aabb"), "v": [1, 1.5, 1, 2], "y": [1.0, 2.0, 3.0, 4.5]})
    with pytest.raises(DataError, match=r"'v'.*integers"):
        gls("y ~ 1", df, correlation=AR1(group="g", visit="v"))

"""Bad input gets a clear memoe error that names the fault; missing values are counted."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import DataError, FormulaError, IdentifiabilityError, MemoeError, RankDeficiencyWarning


@pytest.fixture
def df() -> pd.DataFrame:
    return memoe.datasets.load("sleepstudy")


def test_unknown_column_is_named(df):
    with pytest.raises(DataError, match="'Dayz'"):
        memoe.lmm("Reaction ~ Dayz + (1 | Subject)", data=df)
    with pytest.raises(DataError, match="'Subj'"):
        memoe.lmm("Reaction ~ Days + (1 | Subj)", data=df)
    with pytest.raises(DataError, match="'Time'"):
        memoe.lmm("Reaction ~ Days + (Time | Subject)", data=df)


def test_non_numeric_response(df):
    df = df.assign(label=np.where(df["Reaction"] > 300, "high", "low"))
    with pytest.raises(DataError, match="response 'label' must be numeric"):
        memoe.lmm("label ~ Days + (1 | Subject)", data=df)


def test_grouping_factor_with_one_level(df):
    df = df.assign(one="a")
    with pytest.raises(IdentifiabilityError, match=r"'one'.*1 level"):
        memoe.lmm("Reaction ~ Days + (1 | one)", data=df)


def test_as_many_levels_as_observations(df):
    df = df.assign(row=np.arange(len(df)))
    with pytest.raises(IdentifiabilityError, match=r"must be < number of observations.*'row'"):
        memoe.lmm("Reaction ~ Days + (1 | row)", data=df)


def test_more_random_effects_than_observations(df):
    small = df[df["Days"] < 2]  # 2 obs per subject: (Days | Subject) has 36 random effects for 36 rows
    msg = r"number of observations \(=36\) <= number of random effects \(=36\)"
    with pytest.raises(IdentifiabilityError, match=msg):
        memoe.lmm("Reaction ~ Days + (Days | Subject)", data=small)


def test_empty_after_na_removal(df):
    df = df.assign(Reaction=np.nan)
    with pytest.raises(DataError, match="no rows left after removing 180 rows"):
        memoe.lmm("Reaction ~ Days + (1 | Subject)", data=df)


@pytest.mark.parametrize(
    ("formula", "fragment"),
    [
        ("Reaction ~ Days + Days | Subject", "'Days | Subject'"),
        ("Reaction ~ Days + (Days | )", "no grouping factor"),
        ("Reaction ~ Days + (Days | Subject", "unbalanced"),
        ("~ Days + (1 | Subject)", "no response"),
        ("Reaction ~ Days", "no random-effects term"),
        ("Reaction ~ Days + ( | Subject)", "nothing before '|'"),
        ("Reaction ~ Days + (1 | Subject | Days)", "more than one '|'"),
        ("Reaction ~ Days + (1 | log(Subject))", "'log(Subject)'"),
        ("Reaction ~ Days ~ x + (1|Subject)", "exactly one '~'"),
    ],
)
def test_malformed_formula_points_at_term(df, formula, fragment):
    with pytest.raises(FormulaError) as info:
        memoe.lmm(formula, data=df)
    assert fragment in str(info.value)


def test_errors_share_a_base_class(df):
    with pytest.raises(MemoeError):
        memoe.lmm("Reaction ~ nope + (1 | Subject)", data=df)
    with pytest.raises(FormulaError):
        memoe.lmm(42, data=df)  # type: ignore[arg-type]
    with pytest.raises(MemoeError, match="data must be a table"):
        memoe.lmm("Reaction ~ Days + (1 | Subject)", data={"Reaction": [1.0]})  # type: ignore[arg-type]


def test_missing_values_are_dropped_counted_and_reported(df):
    df = df.copy()
    df.loc[[0, 5, 17], "Reaction"] = np.nan
    df.loc[[40], "Days"] = np.nan
    df.loc[[5], "Days"] = np.nan  # same row twice counts once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", data=df).fit()
    assert fit.n_dropped == 4
    assert fit.nobs == 176
    assert "4 observations deleted due to missingness" in str(fit.summary())
    # per-row outputs stay aligned with the input rows
    assert len(fit.fitted) == len(df) and fit.fitted.isna().sum() == 4
    assert np.isnan(fit.resid.iloc[5]) and not np.isnan(fit.resid.iloc[1])
    complete = df.dropna(subset=["Reaction", "Days"])
    ref = memoe.lmm("Reaction ~ Days + (Days | Subject)", data=complete).fit()
    assert abs(fit.loglik - ref.loglik) < 1e-9


def test_rank_deficient_fixed_effects_dropped_with_names(df):
    df = df.assign(Days2=2.0 * df["Days"], Hours=24.0 * df["Days"])
    with pytest.warns(RankDeficiencyWarning, match=r"dropping 2 columns.*'Days2', 'Hours'"):
        fit = memoe.lmm("Reaction ~ Days + Days2 + Hours + (1 | Subject)", data=df).fit()
    assert list(fit.fixef.index) == ["(Intercept)", "Days"]
    ref = memoe.lmm("Reaction ~ Days + (1 | Subject)", data=df).fit()
    assert abs(fit.loglik - ref.loglik) < 1e-8
    assert "rank deficient" in str(fit.summary())


def test_singular_fit_warns(df):
    d2 = memoe.datasets.load("Dyestuff2")
    with pytest.warns(memoe.errors.SingularFitWarning, match="boundary \\(singular\\) fit"):
        fit = memoe.lmm("Yield ~ 1 + (1 | Batch)", data=d2).fit()
    assert fit.singular

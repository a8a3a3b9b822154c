"""Predictions on new data never silently change meaning (issue 8) and share one signature (issue 9).

For every family: ids read back from CSV (as int, float or str) give the same predictions; a new
grouping level raises unless ``allow_new_levels=True`` (then population level); a new level of a
fixed-effect (or gating) factor raises naming column and level; an infinite predictor gives NaN and a
warning; ``predict(data)`` equals the fitted values; ``newdata`` is not modified.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.design.newdata import (
    NewLevelError,
    NonFinitePredictorWarning,
    PredictArgumentError,
    match_levels,
    parse_re_form,
)
from memoe.errors import DataError, MemoeWarning

# predict(data) and fitted compute the same sums in a different order: a few ulps of the largest term
RTOL = 1e-10


@dataclass
class Case:
    fit: object
    data: pd.DataFrame
    fitted: pd.Series
    group: str | None  # grouping column looked up in the fit (None: not used by predictions)
    factor: str  # a fixed-effect (or gating) factor column
    numeric: str  # a numeric predictor column
    population: dict  # predict() arguments for population-level predictions


def _sleepstudy():
    df = memoe.datasets.load("sleepstudy")
    df["phase"] = pd.Categorical(np.where(df["Days"] < 2, "baseline", "deprived"))
    return df


def _memoe_data():
    df = memoe.datasets.load("memoe_sim2")
    return df[df["id"] <= 60].reset_index(drop=True)


def _build(family: str) -> Case:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MemoeWarning)
        if family == "lmm":
            df = _sleepstudy()
            fit = memoe.lmm("Reaction ~ Days + phase + (Days | Subject)", data=df).fit()
            return Case(fit, df, fit.fitted, "Subject", "phase", "Days", {"re_form": None})
        if family == "glmm":
            df = memoe.datasets.load("cbpp")
            df["z"] = np.log(df["size"])
            fit = memoe.glmm("cbind(incidence, size - incidence) ~ period + z + (1 | herd)", df, "binomial").fit()
            return Case(fit, df, fit.fitted, "herd", "period", "z", {"re_form": None})
        if family == "gls":
            df = memoe.datasets.load("BodyWeight")
            fit = memoe.marginal.gls("weight ~ Time + Diet", df).fit()
            return Case(fit, df, fit.fitted, None, "Diet", "Time", {"re_form": None})
        if family == "lme":
            df = memoe.datasets.load("BodyWeight")
            fit = memoe.marginal.lme("weight ~ Time + Diet + (1 | Rat)", df).fit()
            return Case(fit, df, fit.fitted, "Rat", "Diet", "Time", {"re_form": None})
        if family == "gee":
            df = memoe.datasets.load("Orthodont")
            fit = memoe.gee("distance ~ age + Sex", df, group="Subject", corstr="exchangeable").fit()
            return Case(fit, df, fit.fitted, None, "Sex", "age", {"re_form": None})
        if family == "memoe":
            from memoe.moe.predict import fitted_memoe

            df = _memoe_data()
            fit = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + C(w2)", k=2, data=df).fit(
                n_starts=2, seed=1, progress=False
            )
            return Case(fit, df, fitted_memoe(fit), "id", "w2", "time", {"re_form": None})
    raise AssertionError(family)


FAMILIES = ["lmm", "glmm", "gls", "lme", "gee", "memoe"]
_CACHE: dict[str, Case] = {}


@pytest.fixture(params=FAMILIES)
def case(request) -> Case:
    if request.param not in _CACHE:
        _CACHE[request.param] = _build(request.param)
    return _CACHE[request.param]


def _csv(df: pd.DataFrame) -> pd.DataFrame:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    buf.seek(0)
    return pd.read_csv(buf)


def _close(a, b, rtol=RTOL):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=rtol, atol=0)


# ---------------------------------------------------------------------------------------------- contract
def test_predict_of_the_data_is_fitted(case):
    _close(case.fit.predict(case.data), case.fitted)
    _close(case.fit.predict(), case.fitted)
    assert case.fit.predict(case.data).index.equals(case.data.index)


def test_ids_read_back_from_csv_give_the_same_predictions(case):
    expected = case.fit.predict(case.data).to_numpy()
    back = _csv(case.data)
    _close(case.fit.predict(back), expected)
    for col in [c for c in (case.group, case.factor) if c is not None]:
        if pd.api.types.is_numeric_dtype(back[col]):
            variants = [back[col].astype(float), back[col].astype(str), back[col].astype(np.int32)]
        else:
            variants = [back[col].astype(str), pd.Categorical(back[col], categories=sorted(back[col].unique()))]
        for v in variants:
            _close(case.fit.predict(back.assign(**{col: v})), expected)


def test_new_group_level_raises_unless_allowed(case):
    new = _csv(case.data.head(4))
    col = case.group
    if col is None:
        # gls, GEE: the groups (clusters) do not enter the predictions, so no level is looked up
        cluster = "Rat" if "Rat" in new else "Subject"
        new[cluster] = "a new cluster"
        _close(case.fit.predict(new), case.fit.predict(case.data.head(4)))
        return
    new[col] = new[col].astype(object)
    new.loc[0, col] = "new-level"
    if "y" in new and case.fit.__class__.__name__ == "MEMoEResult":
        new = new.drop(columns="y")  # without a history a new subject is at population level
    with pytest.raises(NewLevelError, match=rf"'{col}' has 1 new level.*'new-level'"):
        case.fit.predict(new)
    allowed = case.fit.predict(new, allow_new_levels=True).to_numpy()
    population = case.fit.predict(new, **case.population).to_numpy()
    _close(allowed[0], population[0])
    _close(allowed[1:], case.fitted.to_numpy()[1:4], rtol=1e-8)


def test_new_fixed_factor_level_raises_naming_column_and_level(case):
    new = _csv(case.data.head(4))
    new[case.factor] = "99"  # all four rows: a gating covariate must stay constant within the subject
    with pytest.raises(DataError, match=rf"'{case.factor}'.*new level.*'99'"):
        case.fit.predict(new)


def test_infinite_predictor_gives_nan_and_a_warning(case):
    new = case.data.head(6).copy()
    new[case.numeric] = new[case.numeric].astype(float)
    expected = case.fit.predict(new).to_numpy()
    new.iloc[2, new.columns.get_loc(case.numeric)] = np.inf
    new.iloc[3, new.columns.get_loc(case.numeric)] = -np.inf
    new.iloc[4, new.columns.get_loc(case.numeric)] = np.nan
    with pytest.warns(NonFinitePredictorWarning, match="2 rows") as rec:
        p = case.fit.predict(new).to_numpy()
    assert rec[0].filename == __file__  # the warning points at the caller
    if case.fit.__class__.__name__ == "MEMoEResult":
        # the subject's history changes with the rows removed; only the NaN rows are fixed
        assert np.isnan(p[2:5]).all() and np.isfinite(p[[0, 1, 5]]).all()
        return
    assert np.isnan(p[2:5]).all()
    _close(p[[0, 1, 5]], expected[[0, 1, 5]])


def test_newdata_is_not_modified(case):
    new = _csv(case.data.head(8))
    new[case.numeric] = new[case.numeric].astype(float)
    new.iloc[0, new.columns.get_loc(case.numeric)] = np.inf
    before = new.copy(deep=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFinitePredictorWarning)
        case.fit.predict(new)
        case.fit.predict(new, re_form=None)
    pd.testing.assert_frame_equal(new, before)


def test_missing_column_is_named(case):
    with pytest.raises(DataError, match=rf"lacks column '{case.numeric}'"):
        case.fit.predict(case.data.drop(columns=case.numeric))


def test_unified_arguments(case):
    fit = case.fit
    pop = fit.predict(case.data, re_form=None)
    _close(fit.predict(case.data, re_form="~0"), pop)
    _close(fit.predict(case.data, re_form="0"), pop)
    _close(fit.predict(case.data, type="link" if not hasattr(fit, "family") else "response"),
           fit.predict(case.data))
    with pytest.raises(PredictArgumentError, match="type must be"):
        fit.predict(case.data, type="terms")
    with pytest.raises(PredictArgumentError, match="allow_new_levels must be True or False"):
        fit.predict(case.data, allow_new_levels="yes")
    with pytest.raises(PredictArgumentError, match="re_form"):
        fit.predict(case.data, re_form=3)


# ---------------------------------------------------------------------------------------------- family details
def test_lmm_re_form_selects_terms():
    case = _CACHE.get("lmm") or _build("lmm")
    fit, df = case.fit, case.data
    p = fit.predict(df, re_form="~ (1 | Subject)")
    b = fit.ranef["Subject"].loc[df["Subject"].astype(str), "(Intercept)"].to_numpy()
    _close(p, fit.predict(df, re_form=None).to_numpy() + b)
    with pytest.raises(PredictArgumentError, match="not in the fit"):
        fit.predict(df, re_form="~ (1 | Nope)")


def test_re_form_na_means_full_with_a_warning():
    assert parse_re_form("full") == "full" and parse_re_form(None) is None and parse_re_form("~ 0") is None
    with pytest.warns(MemoeWarning, match="lme4's re.form = NA means"):
        assert parse_re_form(np.nan) == "full"


def test_lme_level_alias():
    case = _CACHE.get("lme") or _build("lme")
    fit, df = case.fit, case.data
    _close(fit.predict(df, level=0), fit.predict(df, re_form=None))
    _close(fit.predict(df, level=1), fit.predict(df))
    with pytest.raises(PredictArgumentError, match="level must be 0"):
        fit.predict(df, level=2)


def test_glmm_link_scale():
    case = _CACHE.get("glmm") or _build("glmm")
    from scipy.special import expit

    _close(expit(case.fit.predict(case.data, type="link")), case.fit.predict(case.data))


def test_memoe_kinds_and_new_subjects():
    case = _CACHE.get("memoe") or _build("memoe")
    fit, df = case.fit, case.data
    # without the response, known subjects use the fit's posterior: still the fitted values
    _close(fit.predict(df.drop(columns="y")), case.fitted, rtol=1e-8)
    _close(fit.predict(df, kind="population"), fit.predict(df, re_form=None))
    with pytest.raises(PredictArgumentError, match="kind='subject'"):
        fit.predict(df, kind="subject", re_form=None)
    # a new subject with history is predicted from it when allowed; kind="subject" never looks it up
    new = df[df["id"] == 1].assign(id=1000)
    with pytest.raises(NewLevelError, match=r"'id' has 1 new level.*'1000'"):
        fit.predict(new)
    _close(fit.predict(new, allow_new_levels=True), fit.predict(new, kind="subject"))
    _close(fit.predict(new, allow_new_levels=True), fit.predict(df[df["id"] == 1]))


# ---------------------------------------------------------------------------------------------- match_levels
def test_match_levels_by_value_across_dtypes():
    for levels in ([308, 309, 310], ["308", "309", "310"], [308.0, 309.0, 310.0]):
        codes = match_levels(levels, pd.Series([308, 308.0, "308", np.int32(309), "310", 311, None], dtype=object))
        assert codes.tolist() == [0, 0, 0, 1, 2, -1, -2]
    assert match_levels([1, 2], np.array([2.0, np.nan, 1.5])).tolist() == [1, -2, -1]
    assert match_levels(pd.Index([10, 20], dtype="int64"), np.array([20, 30], dtype=np.int64)).tolist() == [1, -1]


def test_match_levels_strings_are_exact():
    assert match_levels(["a", "b"], ["a", "a ", "B", "b"]).tolist() == [0, -1, -1, 1]
    # "01" and "1" would be one number: compared as strings
    assert match_levels(["01", "1"], ["1", "01", 1]).tolist() == [1, 0, 1]


def test_match_levels_categorical_in_any_category_order():
    new = pd.Series(pd.Categorical(["c", "a", None, "z"], categories=["z", "c", "a"]))
    assert match_levels(["a", "b", "c"], new).tolist() == [2, 0, -2, -1]
    assert match_levels(pd.Index([], dtype=object), ["a"]).tolist() == [-1]


def test_nested_factor_levels_matched_per_component():
    df = memoe.datasets.load("Pastes")
    fit = memoe.lmm("strength ~ 1 + (1 | batch/cask)", data=df).fit()
    back = _csv(df)
    _close(fit.predict(back), fit.fitted)
    new = back.head(2).copy()
    new.loc[0, "cask"] = "zz"
    with pytest.raises(NewLevelError, match=r"'cask:batch' has 1 new level.*'zz:A'"):
        fit.predict(new)
    # the known batch keeps its effect, the new cask within it gets 0 (lme4)
    _close(fit.predict(new, allow_new_levels=True).iloc[0], fit.predict(new, re_form="~ (1 | batch)").iloc[0])

"""gls / lme refuse bad arguments and unidentifiable residual structures with a MemoeError naming the culprit."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import ArgumentError, ArgumentTypeError, DataError, MemoeError, MemoeWarning
from memoe.marginal import AR1, CAR1, CompSymm, Exp, Symm, VarIdent, gls, lme
from memoe.marginal.correlation import MAX_CORRELATION_PARAMETERS


@pytest.fixture(scope="module")
def orth() -> pd.DataFrame:
    df = memoe.datasets.load("Orthodont")
    rng = np.random.default_rng(0)
    return df.assign(z=rng.normal(size=len(df)), row=np.arange(len(df)))


def _refuses(exc, match, fn, *args, frame=None, **kw):
    before = None if frame is None else frame.copy(deep=True)
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kw)
    assert isinstance(info.value, MemoeError)
    if frame is not None:
        pd.testing.assert_frame_equal(frame, before)
    return info.value


# -- argument types -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"correlation": "AR1"}, ArgumentTypeError, r"correlation must be a memoe.marginal structure.*'AR1' \(str\)"),
        ({"correlation": VarIdent("Sex")}, ArgumentTypeError, r"correlation must be .*VarIdent"),
        ({"weights": "Sex"}, ArgumentTypeError, r"weights must be a memoe.marginal variance function.*'Sex'"),
        ({"weights": AR1("Subject")}, ArgumentTypeError, r"weights must be .*AR1"),
    ],
)
def test_structure_objects_of_the_wrong_type(orth, kw, exc, match):
    err = _refuses(exc, match, gls, "distance ~ age", orth, frame=orth, **kw)
    assert isinstance(err, TypeError)  # still a TypeError for callers catching that


def test_formula_and_data_types(orth):
    _refuses(ArgumentTypeError, r"formula must be a string", gls, 3, orth)
    _refuses(ArgumentTypeError, r"data must be a table .*, got dict", gls, "distance ~ age", orth.to_dict())
    _refuses(ArgumentTypeError, r"data must be a table .*, got NoneType", lme, "distance ~ age + (1|Subject)",
             None)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: AR1(group=3), r"AR1\(group=\.\.\.\) must be a column name \(str\) or None, got 3"),
        (lambda: AR1(visit=["a"]), r"AR1\(visit=\.\.\.\) must be a column name"),
        (lambda: Symm(group=""), r"Symm\(group=\.\.\.\) must be a non-empty column name"),
        (lambda: CAR1(None), r"CAR1\(time=\.\.\.\) needs the numeric time column"),
        (lambda: Exp(None, "g"), r"Exp\(time=\.\.\.\) needs"),
        (lambda: Exp("t", "g", nugget="yes"), r"Exp\(nugget=\.\.\.\) must be True or False"),
        (lambda: CompSymm(group=1.5), r"CompSymm\(group=\.\.\.\) must be a column name"),
        (lambda: VarIdent(None), r"VarIdent\(by=\.\.\.\) must be the stratum column name"),
        (lambda: VarIdent(""), r"VarIdent\(by=\.\.\.\) must be a non-empty"),
    ],
)
def test_structure_arguments(factory, match):
    _refuses((ArgumentError, ArgumentTypeError), match, factory)


# -- columns --------------------------------------------------------------------------------
def test_missing_group_and_time_columns(orth):
    _refuses(DataError, r"unknown column 'Patient'", gls, "distance ~ age", orth, correlation=AR1("Patient"),
             frame=orth)
    _refuses(DataError, r"unknown column 'when'", gls, "distance ~ age", orth, correlation=CAR1("when", "Subject"))
    _refuses(DataError, r"unknown column 'visit'", gls, "distance ~ age", orth, correlation=Symm("Subject", "visit"))


def test_nan_in_group_column_drops_rows_without_mutating(orth):
    df = orth.copy()
    df["Subject"] = df["Subject"].astype(object)
    df.loc[[0, 5], "Subject"] = np.nan
    before = df.copy(deep=True)
    fit = gls("distance ~ age", df, correlation=AR1("Subject")).fit()
    assert fit.nobs == len(df) - 2
    pd.testing.assert_frame_equal(df, before)


def test_infinite_time_is_named(orth):
    df = orth.assign(t=orth["age"].astype(float))
    df.loc[3, "t"] = np.inf
    _refuses(DataError, r"'t'.*infinite", gls, "distance ~ age", df, correlation=CAR1("t", "Subject"), frame=df)


def test_time_index_must_be_integer_like(orth):
    df = orth.assign(v=orth["age"] + 0.5)
    _refuses(DataError, r"'v' \(the visit of AR1\) must hold integers", gls, "distance ~ age", df,
             correlation=AR1("Subject", visit="v"), frame=df)
    _refuses(DataError, r"'v' \(the visit of Symm\) must hold integer visit numbers.*108 non-integer.*CAR1", gls,
             "distance ~ age", df, correlation=Symm("Subject", visit="v"), frame=df)
    # integer-valued floats and labels are visits
    gls("distance ~ age", orth.assign(v=orth["age"].astype(float)), correlation=Symm("Subject", visit="v"))
    gls("distance ~ age", orth.assign(v="a" + orth["age"].astype(str)), correlation=Symm("Subject", visit="v"))


# -- identifiability ------------------------------------------------------------------------
def test_varident_on_a_continuous_column(orth):
    err = _refuses(DataError, r"VarIdent\('z'\): column 'z' looks continuous \(108 distinct non-integer values in 108",
                   gls, "distance ~ age", orth, weights=VarIdent("z"), frame=orth)
    assert "pd.cut" in str(err)


def test_varident_strata_need_three_rows(orth):
    # an integer column with one value per row is not "continuous", but each stratum has a single row
    _refuses(DataError, r"VarIdent\('row'\): 108 of its 108 strata have fewer than 3 rows \(0 \(1 row\).*at most 36 "
             r"strata for 108 rows", gls, "distance ~ age", orth, weights=VarIdent("row"), frame=orth)
    df = orth.assign(s=np.where(orth["row"] < 2, "rare", "common"))
    _refuses(DataError, r"1 of its 2 strata have fewer than 3 rows \(rare \(2 rows\)\)", gls, "distance ~ age", df,
             weights=VarIdent("s"))
    gls("distance ~ age", orth, weights=VarIdent("Sex"))  # 2 strata of 44 and 64 rows: fine


def test_symm_with_too_many_visits(orth):
    err = _refuses(DataError, r"Symm over 108 visit positions has m \(m - 1\) / 2 = 108 \* 107 / 2 = 5778 correlation "
                   r"parameters, more than the limit of 1000", gls, "distance ~ age", orth,
                   correlation=Symm(visit="row"), frame=orth)
    assert "AR1" in str(err) and MAX_CORRELATION_PARAMETERS == 1000
    # the same through the row order of a single group
    _refuses(DataError, r"5778 correlation parameters", gls, "distance ~ age", orth, correlation=Symm())


def test_symm_with_more_parameters_than_pairs():
    # 3 subjects with 5 visits each: 30 within-group pairs, 10 parameters; with 2 rows per subject and
    # distinct visits 1..6 there are 15 parameters for 3 pairs
    df = pd.DataFrame({"g": np.repeat(["a", "b", "c"], 2), "v": [1, 2, 3, 4, 5, 6], "y": np.arange(6.0) ** 1.5})
    _refuses(DataError, r"Symm over 6 visit positions has 15 correlation parameters but the groups of 'g' hold only "
             r"3 within-group pairs", gls, "y ~ 1", df, correlation=Symm("g", visit="v"), frame=df)


def test_symm_visit_pairs_never_observed_together():
    rng = np.random.default_rng(1)
    # visits 1 and 4 are never in the same subject
    v = np.concatenate([np.tile([1, 2, 3], 10), np.tile([2, 3, 4], 10)])
    df = pd.DataFrame({"g": np.repeat(np.arange(20), 3), "v": v, "y": rng.normal(size=60)})
    _refuses(DataError, r"1 of the 6 pairs of visit positions are never observed in the same group "
             r"\(e\.g\. positions 1 and 4: cor\(1,4\)\)", gls, "y ~ 1", df, correlation=Symm("g", visit="v"), frame=df)


def test_correlation_with_single_row_groups(orth):
    for cs in (AR1("row"), CompSymm("row"), CAR1("age", "row")):
        _refuses(DataError, r"every one of the 108 groups of 'row' has a single row", gls, "distance ~ age", orth,
                 correlation=cs, frame=orth)


def test_many_correlation_parameters_warn():
    rng = np.random.default_rng(2)
    m = 16  # 120 parameters: allowed, but slow
    df = pd.DataFrame({"g": np.repeat(np.arange(40), m), "v": np.tile(np.arange(m), 40), "y": rng.normal(size=40 * m)})
    with pytest.warns(MemoeWarning, match=r"Symm has 120 correlation parameters: the fit may take several") as w:
        gls("y ~ 1", df, correlation=Symm("g", visit="v"))
    assert w[0].filename == __file__


# -- fit() arguments ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ar1_model(orth):
    return gls("distance ~ age", orth, correlation=AR1("Subject"))


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"method": "reml"}, ArgumentError, r"method must be 'REML' or 'ML' \(nlme's spelling\), got 'reml'"),
        ({"method": "MLE"}, ArgumentError, r"method must be 'REML' or 'ML'"),
        ({"reml": "no"}, ArgumentTypeError, r"reml must be True or False, got 'no'"),
        ({"reml": None}, ArgumentTypeError, r"reml must be True or False"),
        ({"start": [1.0, 2.0]}, ArgumentError, r"start must have 1 entries \(cor:Phi\), got shape \(2,\)"),
        ({"start": [np.nan]}, ArgumentError, r"start has non-finite values"),
        ({"start": ["a"]}, ArgumentTypeError, r"start must be an array of numbers"),
    ],
)
def test_bad_fit_arguments(ar1_model, kw, exc, match):
    _refuses(exc, match, ar1_model.fit, **kw)


def test_method_strings_select_the_criterion(ar1_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = ar1_model.fit(method="ML")
        reml = ar1_model.fit(method="REML")
        ref = ar1_model.fit(reml=False)
    assert not ml.reml and reml.reml
    assert ml.loglik == pytest.approx(ref.loglik, abs=1e-10)

"""memoe.gee refuses bad arguments and data at the public boundary with a MemoeError that names the
argument or column and what is accepted (issue 8): never a numpy / statsmodels traceback, never an
``UnboundLocalError`` (``maxiter=0``)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import (
    ArgumentError,
    ArgumentTypeError,
    ConvergenceError,
    ConvergenceWarning,
    DataError,
    FormulaError,
    MemoeError,
)
from memoe.gee import gee


@pytest.fixture(scope="module")
def orth() -> pd.DataFrame:
    return memoe.datasets.load("Orthodont")


def _model(orth, formula="distance ~ age", **kw):
    args = {"group": "Subject"} | kw
    return gee(formula, orth, **args)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"family": None}, ArgumentTypeError, r"family must be a string, one of \['gaussian', 'binomial', 'poisson'\]"),
        ({"family": "gamma"}, ArgumentError, r"family 'gamma' is not supported; use one of \['gaussian'"),
        ({"corstr": 1}, ArgumentTypeError, r"corstr must be a string, one of \['independence'"),
        ({"corstr": "toeplitz"}, ArgumentError, r"corstr 'toeplitz' is not supported; use one of \['independence'"),
        ({"group": 3}, ArgumentTypeError, "group must be the name of a column of data"),
        ({"group": ["Subject"]}, ArgumentTypeError, "group must be the name of a column of data.*list"),
        ({"group": "Subjekt"}, DataError, "unknown group column 'Subjekt'; the data have"),
        ({"time": 1.5}, ArgumentTypeError, "time must be the name of a column of data .*or None"),
        ({"time": "visit"}, DataError, "unknown time column 'visit'"),
        ({"time": "Subject"}, ArgumentError, "time and group are the same column 'Subject'"),
        ({"scale_fix": "yes"}, ArgumentTypeError, "scale_fix must be True or False, got 'yes'"),
        ({"scale_fix": None}, ArgumentTypeError, "scale_fix must be True or False"),
    ],
)
def test_bad_arguments(orth, kwargs, err, match):
    with pytest.raises(err, match=match):
        _model(orth, **kwargs)


def test_family_and_corstr_are_case_insensitive(orth):
    m = _model(orth, family="Gaussian", corstr=" AR1")
    assert (m.family, m.corstr) == ("gaussian", "ar1")


@pytest.mark.parametrize(
    ("fit_kwargs", "err", "match"),
    [
        ({"maxiter": 0}, ArgumentError, "maxiter must be at least 1"),
        ({"maxiter": -3}, ArgumentError, "maxiter must be at least 1"),
        ({"maxiter": 2.5}, ArgumentTypeError, "maxiter must be a positive integer.*float"),
        ({"maxiter": True}, ArgumentTypeError, "maxiter must be a positive integer.*bool"),
        ({"tol": 0}, ArgumentError, "tol must be a positive finite number"),
        ({"tol": -1e-4}, ArgumentError, "tol must be a positive finite number"),
        ({"tol": float("nan")}, ArgumentError, "tol must be a positive finite number"),
        ({"tol": float("inf")}, ArgumentError, "tol must be a positive finite number"),
        ({"tol": "1e-4"}, ArgumentTypeError, "tol must be a positive number.*str"),
    ],
)
def test_bad_fit_arguments(orth, fit_kwargs, err, match):
    with pytest.raises(err, match=match):
        _model(orth).fit(**fit_kwargs)


def test_maxiter_one_is_accepted(orth):
    with pytest.warns(ConvergenceWarning, match="did not converge in 1 iterations") as rec:
        fit = _model(orth, corstr="ar1").fit(maxiter=1)
    assert not fit.converged and fit.n_iter == 1
    # the warning points at the caller's line, not into memoe
    assert rec[0].filename == __file__


def test_formula_and_data_types(orth):
    with pytest.raises(ArgumentTypeError, match="formula must be a string"):
        gee(3, orth, group="Subject")
    with pytest.raises(ArgumentTypeError, match="data must be a table"):
        gee("distance ~ age", orth.to_dict(), group="Subject")
    with pytest.raises(ArgumentTypeError, match="data must be a table"):
        gee("distance ~ age", None, group="Subject")
    with pytest.raises(FormulaError, match="no fixed-effects columns"):
        gee("distance ~ 0", orth, group="Subject")
    with pytest.raises(FormulaError, match="random-effects"):
        gee("distance ~ age + (1 | Subject)", orth, group="Subject")


def test_response_checks(orth):
    with pytest.raises(DataError, match="response 'Sex' must be numeric"):
        _model(orth, "Sex ~ age")
    with pytest.raises(DataError, match="response 'c' is constant"):
        _model(orth.assign(c=3.0), "c ~ age")
    # a constant 0/1 response used to reach statsmodels' perfect-separation error
    with pytest.raises(DataError, match="response 'c' is constant"):
        _model(orth.assign(c=1.0), "c ~ age", family="binomial")
    with pytest.raises(DataError, match="response 'c' is constant"):
        _model(orth.assign(c=0.0), "c ~ age", family="poisson")
    with pytest.raises(DataError, match=r"must lie in \[0, 1\] for the binomial family.*108 values are outside"):
        _model(orth, family="binomial")
    with pytest.raises(DataError, match=r"must be non-negative for the poisson family.*1 values are negative"):
        _model(orth.assign(n=np.r_[-1.0, np.round(orth["distance"].to_numpy()[1:])]), "n ~ age", family="poisson")
    with pytest.raises(DataError, match=r"'d'.*1 infinite value"):
        _model(orth.assign(d=np.r_[np.inf, orth["distance"].to_numpy()[1:]]), "d ~ age")


def test_group_and_time_columns(orth):
    # missing ids and times drop their rows, as missing responses do (R's na.omit)
    with_na = orth.assign(g=orth["Subject"].astype(object), tt=orth["age"].astype(float))
    with_na.loc[0, "g"] = None
    with_na.loc[9, "tt"] = np.nan
    m = gee("distance ~ age", with_na, group="g", time="tt", corstr="ar1")
    assert m.nobs == len(orth) - 2 and m._frame.n_dropped == 2
    with pytest.raises(DataError, match="no rows left"):
        gee("distance ~ age", orth.assign(g=np.nan), group="g")
    with pytest.raises(DataError, match="single cluster"):
        gee("distance ~ age", orth.assign(g="one"), group="g")
    with pytest.raises(DataError, match="time column 'age' repeats a value within group"):
        gee("distance ~ Sex", orth.assign(age=8.0), group="Subject", time="age")


@pytest.mark.parametrize("corstr", ["exchangeable", "ar1", "unstructured"])
def test_clusters_of_one_row(orth, corstr):
    single = orth.iloc[[4 * i + i % 4 for i in range(27)]]  # one row per subject, ages vary
    with pytest.raises(DataError, match=f"every cluster of 'Subject' has one row, so the {corstr}"):
        gee("distance ~ age", single, group="Subject", corstr=corstr)
    # independence needs no pairs
    fit = gee("distance ~ age", single, group="Subject").fit()
    assert fit.converged


def test_some_clusters_of_one_row_are_fine(orth):
    df = orth[~(orth["Subject"].isin(["M01", "F02"]) & (orth["age"] > 8))]
    fit = gee("distance ~ age", df, group="Subject", corstr="ar1").fit()
    assert fit.converged and fit.cluster_sizes.loc["M01"] == 1


def test_degenerate_fit_is_a_memoe_error(orth):
    # an exact linear response: zero residuals, zero scale; numpy's divide-by-zero must not leak
    with pytest.raises(ConvergenceError, match="diverged"):
        gee("p ~ age", orth.assign(p=2.0 * orth["age"]), group="Subject", corstr="exchangeable").fit()


def test_every_refusal_is_a_memoe_error(orth):
    bad_calls = [
        lambda: _model(orth, family=None),
        lambda: _model(orth).fit(maxiter=0),
        lambda: _model(orth.assign(c=1.0), "c ~ age"),
        lambda: _model(orth, group="nope"),
    ]
    for call in bad_calls:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(MemoeError):
                call()

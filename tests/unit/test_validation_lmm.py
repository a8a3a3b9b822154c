"""Bad input to the LMM path is refused with a MemoeError subclass that names the culprit."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import (
    ArgumentError,
    ArgumentTypeError,
    DataError,
    FormulaError,
    IdentifiabilityError,
    MemoeError,
    MemoeWarning,
    PredictorScaleWarning,
    caller_stacklevel,
    warn,
)

F = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep():
    return memoe.datasets.load("sleepstudy")


def _refused(formula, data, exc, pattern, fit_kwargs=None):
    """Build (and fit) the model; assert the exception, its message, and that ``data`` is untouched."""
    before = data.copy(deep=True) if isinstance(data, pd.DataFrame) else None
    with pytest.raises(exc, match=pattern) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore", MemoeWarning)
        m = memoe.lmm(formula, data)
        m.fit(**(fit_kwargs or {}))
    assert isinstance(info.value, MemoeError)
    if before is not None:
        pd.testing.assert_frame_equal(data, before)
    return info.value


# ---------------------------------------------------------------- formula and data
def test_response_on_the_right_side(sleep):
    _refused("Reaction ~ Reaction + (1 | Subject)", sleep, FormulaError, "response 'Reaction'.*right-hand side")


def test_response_in_a_random_term(sleep):
    _refused("Reaction ~ Days + (Reaction | Subject)", sleep, FormulaError, r"random term '\(Reaction \| Subject\)'")


def test_unknown_column_is_a_formula_and_data_error(sleep):
    e = _refused("Reaction ~ foo + (1 | Subject)", sleep, FormulaError, "unknown column 'foo'")
    assert isinstance(e, DataError)


def test_unknown_grouping_column(sleep):
    _refused("Reaction ~ Days + (1 | Subjekt)", sleep, DataError, "'Subjekt'.*grouping factor")


@pytest.mark.parametrize("data", [{"Reaction": [1.0, 2.0]}, [[1.0, 2.0]], np.ones((3, 3))])
def test_data_not_a_frame(data):
    e = _refused(F, data, DataError, "data must be a table")
    assert isinstance(e, ArgumentTypeError) and isinstance(e, TypeError)


def test_formula_not_a_string(sleep):
    e = _refused(42, sleep, FormulaError, "formula must be a string")
    assert isinstance(e, ArgumentTypeError)


def test_duplicated_column_names(sleep):
    dup = pd.concat([sleep, sleep[["Days"]] * 2], axis=1)
    _refused(F, dup, DataError, "several columns named 'Days'")


def test_duplicated_unused_column_is_fine(sleep):
    x = sleep[["Days"]].rename(columns={"Days": "x"})
    dup = pd.concat([sleep, x, x], axis=1)
    fit = memoe.lmm(F, dup).fit()
    assert fit.fixef.index.tolist() == ["(Intercept)", "Days"]


def test_complex_response(sleep):
    _refused(F, sleep.assign(Reaction=sleep.Reaction + 1j), DataError, "'Reaction'.*complex")


def test_object_column_of_mixed_types(sleep):
    _refused("Reaction ~ x + (1 | Subject)", sleep.assign(x=[1, "a"] * 90), DataError, "'x'.*mixed types")


def test_infinite_covariate(sleep):
    x = np.where(sleep.Days == 3, np.inf, sleep.Days)
    _refused("Reaction ~ x + (1 | Subject)", sleep.assign(x=x), DataError, "'x'.*18 infinite")


def test_infinite_response(sleep):
    y = sleep.Reaction.where(sleep.Days != 0, -np.inf)
    _refused(F, sleep.assign(Reaction=y), DataError, "'Reaction'.*infinite")


def test_constant_response(sleep):
    _refused("y ~ Days + (1 | Subject)", sleep.assign(y=3.25), DataError, r"response 'y' is constant \(value 3.25")


def test_string_response(sleep):
    _refused("s ~ Days + (1 | Subject)", sleep.assign(s="a"), DataError, "response 's' must be numeric")


def test_factor_response(sleep):
    _refused("Subject ~ Days + (1 | Days)", sleep, DataError, "response 'Subject' must be numeric")


def test_more_columns_than_rows(sleep):
    _refused("Reaction ~ factor(Days) * Subject + (1 | Subject)", sleep.iloc[:30], DataError,
             "180 columns.*only 30 observations")


def test_no_rows_left(sleep):
    _refused(F, sleep.assign(Days=np.nan), DataError, "no rows left")


def test_one_level_grouping_factor(sleep):
    _refused("Reaction ~ Days + (1 | g)", sleep.assign(g="a"), IdentifiabilityError, "'g'.*1 level")


def test_boolean_predictor_is_a_treatment_column(sleep):
    fit = memoe.lmm("Reaction ~ late + (1 | Subject)", sleep.assign(late=sleep.Days > 4)).fit()
    assert fit.fixef.index.tolist() == ["(Intercept)", "lateTRUE"]
    ref = memoe.lmm("Reaction ~ late + (1 | Subject)", sleep.assign(late=(sleep.Days > 4).astype(float))).fit()
    np.testing.assert_allclose(fit.fixef.to_numpy(), ref.fixef.to_numpy(), rtol=1e-12)


def test_random_slope_with_huge_offset_is_refused_naming_the_column(sleep):
    _refused(F, sleep.assign(Days=sleep.Days + 1.7e9), DataError, r"'Days' of term '\(Days \| Subject\)'.*centre")


def test_random_slope_with_large_offset_warns(sleep):
    with pytest.warns(PredictorScaleWarning, match="'Days'") as rec:
        memoe.lmm(F, sleep.assign(Days=sleep.Days + 100))
    assert rec[0].filename == __file__


# ---------------------------------------------------------------- fit arguments
@pytest.mark.parametrize("reml", ["no", 1, None, 0.0])
def test_reml_must_be_bool(sleep, reml):
    _refused(F, sleep, ArgumentTypeError, "reml must be True or False", {"reml": reml})


def test_numpy_bool_reml_is_fine(sleep):
    fit = memoe.lmm(F, sleep).fit(reml=np.bool_(False))
    assert fit.reml is False


@pytest.mark.parametrize(
    "start, pattern",
    [
        ([1.0, 2.0], r"start must have 3 values \(Subject.\(Intercept\), Subject.Days.\(Intercept\), Subject.Days\)"),
        ([1.0, np.nan, 1.0], "not finite: Subject.Days.\\(Intercept\\)"),
        ([-1.0, 0.0, 1.0], r"lower bound 0 for Subject.\(Intercept\)=-1"),
        ("abc", "sequence of numbers"),
        ({"x": 1.0}, "unknown names"),
    ],
)
def test_start_is_validated(sleep, start, pattern):
    _refused(F, sleep, ArgumentError, pattern, {"start": start})


def test_start_by_name(sleep):
    ref = memoe.lmm(F, sleep).fit()
    fit = memoe.lmm(F, sleep).fit(start=dict(zip(ref.theta.index, [1.0, 0.0, 1.0], strict=True)))
    assert fit.loglik == pytest.approx(ref.loglik, rel=1e-9)


@pytest.mark.parametrize(
    "control, exc, pattern",
    [
        ({"foo": 1}, ArgumentError, "unknown control setting 'foo'; accepted: ftol_abs"),
        ({"maxeval": "many"}, ArgumentTypeError, r"control\['maxeval'\] must be an integer"),
        ({"maxeval": 0}, ArgumentError, "maxeval"),
        ({"calc_derivs": "yes"}, ArgumentTypeError, "calc_derivs"),
        ({"grad_tol": -1.0}, ArgumentError, "grad_tol"),
        ({"blas_threads": 0}, ArgumentError, "blas_threads"),
        ("fast", ArgumentTypeError, "control must be a FitControl or a dict"),
    ],
)
def test_control_is_validated(sleep, control, exc, pattern):
    _refused(F, sleep, exc, pattern, {"control": control})


def test_control_as_dict(sleep):
    fit = memoe.lmm(F, sleep).fit(control={"calc_derivs": False})
    assert fit.converged


# ---------------------------------------------------------------- warnings point at the caller
def test_warn_helper_points_at_the_caller():
    with pytest.warns(MemoeWarning) as rec:
        warn("hello", MemoeWarning)
    assert rec[0].filename == __file__
    assert caller_stacklevel() == 1


def test_convergence_warning_points_at_the_fit_line(sleep):
    with pytest.warns(MemoeWarning) as rec:
        memoe.lmm(F, sleep).fit(control={"maxeval": 5})
    assert rec and all(r.filename == __file__ for r in rec)


def test_rank_deficiency_warning_points_at_the_caller(sleep):
    from memoe.errors import RankDeficiencyWarning

    with pytest.warns(RankDeficiencyWarning, match="Days2") as rec:
        memoe.lmm("Reaction ~ Days + Days2 + (1 | Subject)", sleep.assign(Days2=2 * sleep.Days))
    assert rec[0].filename == __file__

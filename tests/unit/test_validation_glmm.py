"""Bad input to the GLMM path is refused naming the culprit; separation is detected and warned."""

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
    FamilyError,
    FormulaError,
    MemoeError,
    MemoeWarning,
    QuadratureError,
    SeparationWarning,
)
from memoe.glmm import glmm
from memoe.glmm.design import separating_direction


@pytest.fixture(scope="module")
def cbpp():
    return memoe.datasets.load("cbpp")


@pytest.fixture(scope="module")
def binary():
    rng = np.random.default_rng(11)
    n = 240
    df = pd.DataFrame({"x": rng.normal(size=n), "g": np.repeat(np.arange(24), 10)})
    df["y"] = (df.x + rng.normal(size=n) > 0).astype(float)
    df["k"] = rng.poisson(2.0, size=n).astype(float)
    return df


def _refused(formula, data, exc, pattern, family="binomial", fit_kwargs=None, **kwargs):
    before = data.copy(deep=True)
    with pytest.raises(exc, match=pattern) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore", MemoeWarning)
        glmm(formula, data, family, **kwargs).fit(**(fit_kwargs or {}))
    assert isinstance(info.value, MemoeError)
    pd.testing.assert_frame_equal(data, before)
    return info.value


CB = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


def test_all_zero_binomial(binary):
    _refused("y ~ x + (1 | g)", binary.assign(y=0.0), DataError, "response 'y' is constant.*failures")


def test_all_one_binomial(binary):
    _refused("y ~ x + (1 | g)", binary.assign(y=1.0), DataError, "response 'y' is constant.*successes")


def test_all_zero_cbind(cbpp):
    _refused(CB, cbpp.assign(incidence=0), DataError, "constant")


def test_all_zero_poisson(binary):
    _refused("k ~ x + (1 | g)", binary.assign(k=0.0), DataError, "Poisson response 'k' is 0 in all 240 rows",
             family="poisson")


def test_negative_poisson(binary):
    _refused("k ~ x + (1 | g)", binary.assign(k=binary.k - 3), DataError, "response 'k' has .* negative",
             family="poisson")


def test_binomial_proportion_outside_unit_interval(binary):
    _refused("y ~ x + (1 | g)", binary.assign(y=binary.y * 1.5), DataError, r"'y' must be in \[0, 1\]")


def test_negative_weights(binary):
    _refused("y ~ x + (1 | g)", binary.assign(w=-1.0), DataError, "weights \\(column 'w'\\).*240 of 240", weights="w")


def test_all_zero_weights(binary):
    _refused("y ~ x + (1 | g)", binary, DataError, "weights are all zero", weights=np.zeros(len(binary)))


def test_weights_of_wrong_length(binary):
    _refused("y ~ x + (1 | g)", binary, DataError, "weights must have one value per data row", weights=[1.0, 2.0])


def test_response_on_the_right_side(binary):
    _refused("y ~ y + (1 | g)", binary, FormulaError, "response 'y' also appears")


def test_cbind_part_on_the_right_side(cbpp):
    _refused("cbind(incidence, size - incidence) ~ incidence + (1 | herd)", cbpp, FormulaError, "'incidence'")


def test_unknown_column(binary):
    _refused("y ~ z + (1 | g)", binary, DataError, "unknown column 'z'")


def test_data_not_a_frame(binary):
    with pytest.raises(ArgumentTypeError, match="data must be a table"):
        glmm("y ~ x + (1 | g)", binary.to_dict("list"))


def test_family_of_wrong_type(binary):
    _refused("y ~ x + (1 | g)", binary, FamilyError, "family must be a name", family=3)


def test_unknown_family(binary):
    _refused("y ~ x + (1 | g)", binary, FamilyError, "unknown family 'weibull'", family="weibull")


@pytest.mark.parametrize("nAGQ, exc, pattern", [
    (1.5, ArgumentTypeError, "nAGQ must be an integer"),
    (True, ArgumentTypeError, "nAGQ must be an integer"),
    (-1, QuadratureError, "nAGQ must be an integer between"),
])
def test_nagq_is_validated(binary, nAGQ, exc, pattern):
    _refused("y ~ x + (1 | g)", binary, exc, pattern, fit_kwargs={"nAGQ": nAGQ})


def test_nagq_above_one_needs_a_scalar_term(binary):
    _refused("y ~ x + (x | g)", binary, QuadratureError, "single, scalar random-effects term", fit_kwargs={"nAGQ": 5})


def test_start_and_control_are_validated(binary):
    _refused("y ~ x + (1 | g)", binary, ArgumentError, r"start must have 1 value \(g.\(Intercept\)\)",
             fit_kwargs={"start": [1.0, 1.0]})
    _refused("y ~ x + (1 | g)", binary, ArgumentError, "unknown control setting 'tol'",
             fit_kwargs={"control": {"tol": 1e-3}})
    _refused("y ~ x + (1 | g)", binary, ArgumentTypeError, "warn must be True or False",
             fit_kwargs={"warn": "no"})


def test_n_dropped_is_reported(cbpp):
    d = cbpp.assign(period=cbpp.period.where(cbpp.index > 3))
    fit = glmm(CB, d, "binomial").fit()
    assert fit.n_dropped == 4


# ---------------------------------------------------------------- separation
def test_complete_separation_warns_naming_the_terms(binary):
    d = binary.assign(y=(binary.x > 0).astype(float))
    with pytest.warns(SeparationWarning, match=r"\['\(Intercept\)', 'x'\]|\['x'\]") as rec:
        fit = glmm("y ~ x + (1 | g)", d).fit()
    assert any(r.filename == __file__ for r in rec if issubclass(r.category, SeparationWarning))
    assert any("separation" in m for m in fit.messages)


def test_quasi_complete_separation_by_a_factor_level(binary):
    f = np.array(["a", "b", "c"])[np.arange(len(binary)) % 3]
    y = np.where(f == "c", 0.0, binary.y)
    d = binary.assign(f=f, y=y)
    with pytest.warns(SeparationWarning, match="'fc'"):
        glmm("y ~ x + f + (1 | g)", d).fit()


def test_no_separation_no_warning(binary):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeparationWarning)
        glmm("y ~ x + (1 | g)", binary).fit()


def test_separating_direction_lp():
    X = np.column_stack([np.ones(6), [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]])
    d = separating_direction(X, np.array([0, 0, 0, 1, 1, 1.0]), np.ones(6))
    assert d is not None and d[1] > 0
    # overlap: no direction
    assert separating_direction(X, np.array([0, 1, 0, 1, 0, 1.0]), np.ones(6)) is None
    # a row with both outcomes (proportion) pins x'd = 0 there, but a 0-weight row is ignored
    assert separating_direction(X, np.array([0, 0, 0.5, 1, 1, 1.0]), np.array([1, 1, 0, 1, 1, 1.0])) is not None

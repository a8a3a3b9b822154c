"""lme4 bar-term parsing and R-style column names."""

from __future__ import annotations

import pytest

from memoe.core.formula import parse_formula, r_column_name
from memoe.errors import FormulaError


def test_simple_correlated_term():
    spec = parse_formula("Reaction ~ Days + (Days | Subject)")
    assert spec.response == "Reaction"
    assert spec.fixed == "Days"
    (t,) = spec.random
    assert (t.lhs, t.group, t.uncorrelated) == ("Days", "Subject", False)


def test_double_bar_and_nesting_and_interaction():
    spec = parse_formula("y ~ x*z + (x || g) + (1 | a/b/c) + (1 | u:v) - 1")
    assert spec.fixed == "x*z - 1"
    groups = [(t.group, t.uncorrelated) for t in spec.random]
    assert groups == [("g", True), ("a", False), ("b:a", False), ("c:b:a", False), ("u:v", False)]


def test_fixed_part_defaults_to_intercept():
    assert parse_formula("y ~ (1 | g)").fixed == "1"
    assert parse_formula("y ~ (1 | g) + (1 | h)").fixed == "1"


def test_functions_in_fixed_part_survive():
    spec = parse_formula("y ~ I(x**2) + np.log(x) + (0 + x | g)")
    assert spec.fixed == "I(x**2) + np.log(x)"
    assert spec.random[0].lhs == "0 + x"


@pytest.mark.parametrize(
    "bad",
    ["y ~ x + 1|g", "y ~ (1|)", "y ~ (x|g", "~ x", "y ~ (|g)", "y ~ x - (1|g)", "y ~ (1|g/)", "y ~ (1 | g | h)"],
)
def test_malformed(bad):
    with pytest.raises(FormulaError):
        parse_formula(bad)


@pytest.mark.parametrize(
    ("formulaic", "r"),
    [
        ("Intercept", "(Intercept)"),
        ("Sex[T.Female]", "SexFemale"),
        ("age:Sex[T.Female]", "age:SexFemale"),
        ("C(g)[T.b]", "gb"),
        ("Sex[Male]:age", "SexMale:age"),
        ("np.log(x)", "np.log(x)"),
        ("I(day ** 2)", "I(day^2)"),
    ],
)
def test_r_column_names(formulaic, r):
    assert r_column_name(formulaic) == r


@pytest.mark.parametrize(
    ("formula", "fixed"),
    [
        ("y ~ day + I(day^2) + (1 | g)", "day + I(day**2)"),
        ("y ~ log(x ^ 2) + (1 | g)", "log(x ** 2)"),
        ("y ~ (a + b)^2 + (1 | g)", "(a + b)^2"),  # the formula operator outside a call stays
        ("y ~ I((t - 1)^3) + (1 | g)", "I((t - 1)**3)"),
    ],
)
def test_power_inside_a_call_is_r_power(formula, fixed):
    """R reads ``^`` inside a call as a power; formulaic (Python) would read it as XOR on integers."""
    assert parse_formula(formula).fixed == fixed


def test_power_inside_a_call_fits_as_power():
    import numpy as np
    import pandas as pd

    import memoe

    rng = np.random.default_rng(0)
    day = np.tile(np.arange(10), 12)  # integers: XOR would give day ^ 2 = 2, 3, 0, 1, 6, ...
    g = np.repeat(np.arange(12), 10)
    y = 1 + 0.5 * day - 0.1 * day**2 + rng.normal(0, 1, 12)[g] + rng.normal(0, 0.1, 120)
    df = pd.DataFrame({"y": y, "day": day, "g": g.astype(str)})
    a = memoe.lmm("y ~ day + I(day^2) + (1 | g)", df).fit()
    b = memoe.lmm("y ~ day + I(day**2) + (1 | g)", df).fit()
    assert list(a.params.index) == ["(Intercept)", "day", "I(day^2)"]
    np.testing.assert_allclose(a.params.to_numpy(), b.params.to_numpy(), rtol=1e-10)
    assert abs(a.params["I(day^2)"] + 0.1) < 0.01

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
    ],
)
def test_r_column_names(formulaic, r):
    assert r_column_name(formulaic) == r

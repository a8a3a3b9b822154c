"""Design building: term order, merged blocks, grouping-factor levels, theta names."""

from __future__ import annotations

import numpy as np
import pandas as pd

import memoe
from memoe.core.design import build_design


def test_nested_expansion_matches_lme4_names_and_levels():
    d = build_design("strength ~ 1 + (1 | batch/cask)", memoe.datasets.load("Pastes"))
    assert [t.name for t in d.terms] == ["cask:batch", "batch"]
    assert d.theta_map.names == ["cask:batch.(Intercept)", "batch.(Intercept)"]
    levels = list(d.blocks[0].factor.levels)
    assert levels[:4] == ["a:A", "a:B", "a:C", "a:D"] and len(levels) == 30


def test_uncorrelated_terms_merge_into_one_block():
    d = build_design("Reaction ~ Days + (Days || Subject)", memoe.datasets.load("sleepstudy"))
    assert [t.name for t in d.terms] == ["Subject", "Subject.1"]
    assert len(d.blocks) == 1 and d.blocks[0].columns == ("(Intercept)", "Days")
    lam = d.theta_map.lambdas(np.array([2.0, 3.0]))[0]
    assert np.array_equal(lam, np.diag([2.0, 3.0]))


def test_correlated_theta_layout():
    d = build_design("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy"))
    assert d.theta_map.names == ["Subject.(Intercept)", "Subject.Days.(Intercept)", "Subject.Days"]
    lam = d.theta_map.lambdas(np.array([1.0, 0.5, 2.0]))[0]
    assert np.array_equal(lam, np.array([[1.0, 0.0], [0.5, 2.0]]))
    assert list(d.theta_map.lower_bounds) == [0.0, -np.inf, 0.0]


def test_crossed_terms_sorted_by_levels():
    d = build_design("diameter ~ (1 | sample) + (1 | plate)", memoe.datasets.load("Penicillin"))
    assert [t.group for t in d.terms] == ["plate", "sample"]
    assert [b.nlevels for b in d.blocks] == [24, 6]


def test_treatment_contrasts_follow_category_order():
    df = memoe.datasets.load("Orthodont")
    d = build_design("distance ~ age * Sex + (1 | Subject)", df)
    assert d.fixef_names == ["(Intercept)", "age", "SexFemale", "age:SexFemale"]
    df2 = df.assign(Sex=df["Sex"].cat.reorder_categories(["Female", "Male"]))
    d2 = build_design("distance ~ age * Sex + (1 | Subject)", df2)
    assert d2.fixef_names == ["(Intercept)", "age", "SexMale", "age:SexMale"]


def test_string_groups_are_sorted_and_unused_levels_dropped():
    df = pd.DataFrame(
        {
            "y": np.arange(12.0) % 5,
            "g": pd.Categorical(list("bbbaaaccc") + list("bac"), categories=["c", "b", "a", "unused"]),
        }
    )
    d = build_design("y ~ (1 | g)", df)
    assert list(d.blocks[0].factor.levels) == ["c", "b", "a"]
    d2 = build_design("y ~ (1 | g)", df.assign(g=df["g"].astype(str)))
    assert list(d2.blocks[0].factor.levels) == ["a", "b", "c"]


def test_r_factor_call_gives_r_names_and_replays_on_new_data():
    df = memoe.datasets.load("Orthodont")
    d = build_design("distance ~ factor(age) * Sex + (1 | Subject)", df)
    assert d.fixed.names == [
        "(Intercept)", "factor(age)10", "factor(age)12", "factor(age)14", "SexFemale",
        "factor(age)10:SexFemale", "factor(age)12:SexFemale", "factor(age)14:SexFemale",
    ]
    # same columns as formulaic's C(), and the stored levels replay on a subset holding one age
    c = build_design("distance ~ C(age) * Sex + (1 | Subject)", df)
    np.testing.assert_array_equal(d.fixed.X, c.fixed.X)
    new = df[df["age"] == 12].iloc[:2]
    X = d.fixed.matrix_for(new)
    assert X.shape == (2, 8) and X[:, 2].tolist() == [1.0, 1.0] and X[:, 1].tolist() == [0.0, 0.0]

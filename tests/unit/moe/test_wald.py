"""Wald tests of linear hypotheses on a MEMoE fit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import chi2

import memoe
from memoe.errors import HypothesisError

from .conftest import FORMULA, GATING


def test_single_parameter_matches_coef_table(sim2_fit):
    for robust in ("sandwich", None):
        row = sim2_fit.coef_table(robust=robust).loc["gating[2]:w1"]
        out = sim2_fit.test("gating[2]:w1 = 0", robust=robust)
        assert out["Chisq"].iloc[0] == pytest.approx(row["statistic"] ** 2, rel=1e-10)
        assert out["Df"].iloc[0] == 1
        assert ("sandwich" in out.note) is (robust is not None)


def test_joint_difference_equals_quadratic_form(sim2_fit):
    names = sim2_fit.param_names
    V = sim2_fit.vcov(robust="sandwich").to_numpy()
    psi = sim2_fit.params.to_numpy()
    L = np.zeros((2, len(names)))
    L[0, names.index("fixed[1]:x")], L[0, names.index("fixed[2]:x")] = 1, -1
    L[1, names.index("fixed[1]:time")], L[1, names.index("fixed[2]:time")] = 1, -1
    d = L @ psi
    expected = float(d @ np.linalg.solve(L @ V @ L.T, d))
    by_string = sim2_fit.test("fixed[1]:x = fixed[2]:x, fixed[1]:time - fixed[2]:time = 0")
    by_matrix = sim2_fit.test(L)
    for out in (by_string, by_matrix):
        assert out["Chisq"].iloc[0] == pytest.approx(expected, rel=1e-10)
        assert out["Df"].iloc[0] == 2
        assert out["Pr(>Chisq)"].iloc[0] == pytest.approx(chi2.sf(expected, 2), rel=1e-10)


def test_unknown_name_lists_parameters(sim2_fit):
    with pytest.raises(HypothesisError, match=r"fixed\[3\]:x.*'fixed\[1\]:x'"):
        sim2_fit.test("fixed[3]:x = 0")


def test_constrained_parameters_are_refused_or_dropped(sim2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=sim2, sigma="common").fit(
            n_starts=2, seed=1, progress=False
        )
    with pytest.raises(HypothesisError, match="zero estimated variance"):
        fit.test("sigma[1] = sigma[2]")
    both = fit.test("sigma[1] = sigma[2], fixed[1]:x = fixed[2]:x")
    alone = fit.test("fixed[1]:x = fixed[2]:x")
    assert both["Df"].iloc[0] == 1
    assert both["Chisq"].iloc[0] == pytest.approx(alone["Chisq"].iloc[0], rel=1e-6)
    assert "redundant" in both.note

"""GLMM inputs: cbind responses, weights, offsets, missing values and clear errors for bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import DataError, FormulaError, IdentifiabilityError, MemoeError
from memoe.glmm import NonIntegerResponseWarning, glmm
from memoe.glmm.design import split_cbind, split_offsets

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    return memoe.datasets.load("cbpp")


def test_split_cbind():
    assert split_cbind("cbind(incidence, size - incidence)") == ("incidence", "size - incidence")
    assert split_cbind("cbind(a, f(b, c))") == ("a", "f(b, c)")
    assert split_cbind("y") is None
    with pytest.raises(FormulaError, match="exactly two"):
        split_cbind("cbind(a, b, c)")


def test_split_offsets():
    assert split_offsets("x + offset(np.log(E))") == ("x", ("np.log(E)",))
    assert split_offsets("offset(o) + x + offset(p)") == ("x", ("o", "p"))
    assert split_offsets("offset(o)") == ("1", ("o",))
    assert split_offsets("offset(o) - 1") == ("1 - 1", ("o",))
    assert split_offsets("x") == ("x", ())
    with pytest.raises(FormulaError, match="cannot be subtracted"):
        split_offsets("x - offset(o)")


def test_cbind_response_as_proportions_and_trials(cbpp):
    m = glmm(CBPP, cbpp)
    gd = m.gdesign
    np.testing.assert_allclose(gd.y, cbpp.incidence / cbpp["size"])
    np.testing.assert_allclose(gd.wt, cbpp["size"])
    np.testing.assert_allclose(gd.n, cbpp["size"])
    assert gd.binomial_matrix
    assert m.design.fixef_names == ["(Intercept)", "period2", "period3", "period4"]


def test_proportion_with_weights_equals_cbind(cbpp):
    """R's two ways of giving binomial counts give the same fit (and the same log-likelihood)."""
    df = cbpp.assign(prop=cbpp.incidence / cbpp["size"])
    a = glmm(CBPP, cbpp).fit()
    b = glmm("prop ~ period + (1 | herd)", df, weights="size").fit()
    assert b.loglik == pytest.approx(a.loglik, abs=1e-8)
    np.testing.assert_allclose(b.fixef, a.fixef, rtol=1e-7)
    # weights as an array, too
    c = glmm("prop ~ period + (1 | herd)", df, weights=df["size"].to_numpy()).fit()
    assert c.loglik == pytest.approx(a.loglik, abs=1e-8)


def test_missing_rows_are_dropped_and_aligned(cbpp):
    df = cbpp.copy()
    df.loc[[3, 10], "incidence"] = np.nan
    fit = glmm(CBPP, df).fit()
    assert fit.nobs == len(df) - 2 and fit.n_dropped == 2
    assert fit.fitted.isna().sum() == 2 and np.isnan(fit.fitted[3]) and np.isnan(fit.resid[10])
    ref = glmm(CBPP, df.dropna()).fit()
    assert fit.loglik == pytest.approx(ref.loglik, abs=1e-9)


def test_binary_response_outside_unit_interval():
    df = pd.DataFrame({"y": [0, 1, 2, 0, 1, 0] * 3, "g": list("abc") * 6})
    with pytest.raises(DataError, match=r"must be in \[0, 1\]"):
        glmm("y ~ 1 + (1 | g)", df, "binomial")


def test_negative_binomial_counts():
    df = pd.DataFrame({"s": [1, -1, 2, 0, 1, 0] * 3, "f": [1, 1, 1, 1, 1, 1] * 3, "g": list("abc") * 6})
    with pytest.raises(DataError, match="non-negative counts"):
        glmm("cbind(s, f) ~ 1 + (1 | g)", df, "binomial")


def test_negative_and_non_integer_poisson_counts():
    df = pd.DataFrame({"y": [1, -2, 3, 0, 1, 4] * 3, "g": list("abc") * 6})
    with pytest.raises(DataError, match="negative values not allowed"):
        glmm("y ~ 1 + (1 | g)", df, "poisson")
    df["y"] = [1.5, 2, 3, 0, 1, 4] * 3
    with pytest.warns(NonIntegerResponseWarning, match="non-integer counts"):
        glmm("y ~ 1 + (1 | g)", df, "poisson")


def test_non_integer_binomial_successes_warn(cbpp):
    df = cbpp.assign(prop=cbpp.incidence / cbpp["size"] * 0.97)
    with pytest.warns(NonIntegerResponseWarning, match="non-integer #successes"):
        glmm("prop ~ period + (1 | herd)", df, weights="size")


def test_cbind_with_poisson_is_an_error(cbpp):
    with pytest.raises(DataError, match="binomial family"):
        glmm(CBPP, cbpp, "poisson")


def test_unknown_family_and_bad_arguments(cbpp):
    with pytest.raises(MemoeError, match="unknown family"):
        glmm(CBPP, cbpp, "negbin")
    # issue 11: no random-effects term is the GLM (R's glm), not an error
    assert glmm("cbind(incidence, size - incidence) ~ period", cbpp).problem.q == 0
    with pytest.raises(DataError, match="unknown column 'nope'"):
        glmm("cbind(nope, size - incidence) ~ period + (1 | herd)", cbpp)
    with pytest.raises(DataError, match="weights column 'w'"):
        glmm(CBPP, cbpp, weights="w")
    with pytest.raises(DataError, match="one value per data row"):
        glmm(CBPP, cbpp, offset=np.zeros(3))
    with pytest.raises(DataError, match="non-negative"):
        glmm(CBPP, cbpp, weights=-np.ones(len(cbpp)))
    with pytest.raises(MemoeError, match="data must be a table"):
        glmm(CBPP, cbpp.to_dict())


def test_glmm_identifiability_rules():
    """Fixed-scale families: one level per observation is allowed (lme4), more effects than rows are not."""
    df = pd.DataFrame({"y": [0, 1] * 5, "g": [str(i) for i in range(10)], "x": np.arange(10.0)})
    m = glmm("y ~ 1 + (1 | g)", df)
    assert m.design.blocks[0].nlevels == m.design.n == 10
    df["h"] = [str(i // 2) for i in range(10)]
    df["k"] = [str(i // 1.5) for i in range(10)]
    glmm("y ~ 1 + (x | h)", df)  # 10 random effects for 10 rows
    with pytest.raises(IdentifiabilityError, match=r"number of random effects \(=14\)"):
        glmm("y ~ 1 + (x | k)", df)
    df["one"] = "a"
    with pytest.raises(IdentifiabilityError, match="> 1 sampled level"):
        glmm("y ~ 1 + (1 | one)", df)


def test_bool_response():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"y": rng.random(60) < 0.4, "g": np.repeat(list("abcdef"), 10)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = glmm("y ~ 1 + (1 | g)", df).fit()
    assert np.isfinite(fit.loglik)


def test_factor_response_is_success_unless_first_level():
    """R's binomial(): a factor response counts every level but the first as a success."""
    rng = np.random.default_rng(8)
    y = (rng.random(80) < 0.4).astype(float)
    g = np.repeat(list("abcdefgh"), 10)
    num = pd.DataFrame({"y": y, "g": g})
    fac = pd.DataFrame({"y": pd.Categorical(np.where(y > 0, "yes", "no"), categories=["no", "yes"]), "g": g})
    rev = fac.assign(y=fac.y.cat.reorder_categories(["yes", "no"]))
    strings = fac.assign(y=fac.y.astype(str))  # sorted levels: "no" < "yes", as R's factor()
    a = glmm("y ~ 1 + (1 | g)", num)
    np.testing.assert_array_equal(glmm("y ~ 1 + (1 | g)", fac).gdesign.y, a.gdesign.y)
    np.testing.assert_array_equal(glmm("y ~ 1 + (1 | g)", strings).gdesign.y, a.gdesign.y)
    np.testing.assert_array_equal(glmm("y ~ 1 + (1 | g)", rev).gdesign.y, 1 - a.gdesign.y)
    with pytest.raises(DataError, match="must be numeric"):
        glmm("y ~ 1 + (1 | g)", strings, "poisson")


def test_prior_weights_equal_replicated_rows(cbpp):
    """Prior weight 2 on every row is the likelihood of the data set stacked twice."""
    w2 = glmm(CBPP, cbpp, weights=np.full(len(cbpp), 2.0)).fit()
    twice = glmm(CBPP, pd.concat([cbpp, cbpp], ignore_index=True)).fit()
    assert w2.loglik == pytest.approx(twice.loglik, abs=1e-6)
    np.testing.assert_allclose(w2.fixef, twice.fixef, rtol=1e-4)
    np.testing.assert_allclose(w2.theta, twice.theta, rtol=1e-4)

"""Structure matrices against hand-computed ones, and the batching layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memoe.marginal import AR1, CAR1, CompSymm, Exp, Symm, VarIdent
from memoe.marginal.correlation import symm_matrix
from memoe.marginal.layout import make_layout


def _frame():
    # group a: 3 visits at t = 0, 1, 3; group b: 2 visits at t = 2, 7 (rows interleaved)
    return pd.DataFrame(
        {"g": ["a", "b", "a", "a", "b"], "t": [0.0, 2.0, 1.0, 3.0, 7.0], "s": ["x", "y", "y", "x", "z"]}
    )


def _layout(df):
    codes, levels = pd.factorize(df["g"], sort=True)
    return make_layout(codes, pd.Index(levels), "g")


def _corr_of_group(structure, u, group):
    df = _frame()
    lay = _layout(df)
    bound = structure.bind(lay, df)
    blocks = bound.blocks(np.asarray(u, dtype=float))
    for b, C in zip(lay.buckets, blocks, strict=True):
        C = np.broadcast_to(C, (b.size, b.n, b.n))
        for k, gcode in enumerate(b.groups):
            if lay.levels[gcode] == group:
                return C[k]
    raise AssertionError(group)


def test_layout_buckets_cover_rows_in_visit_order():
    lay = _layout(_frame())
    assert [b.n for b in lay.buckets] == [2, 3]
    np.testing.assert_array_equal(lay.buckets[1].rows, [[0, 2, 3]])
    np.testing.assert_array_equal(lay.buckets[0].rows, [[1, 4]])
    np.testing.assert_array_equal(lay.position, [0, 0, 1, 2, 1])
    v = np.arange(5.0)
    np.testing.assert_array_equal(lay.scatter(lay.gather(v), 5), v)


def test_ar1_uses_visit_order():
    phi = 0.5
    C = _corr_of_group(AR1(group="g"), [2 * np.arctanh(phi)], "a")
    np.testing.assert_allclose(C, [[1, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 1]], rtol=1e-14)
    assert AR1(group="g").natural(np.array([2 * np.arctanh(-0.3)]), 3)[0] == pytest.approx(-0.3)


def test_car1_uses_time_differences():
    phi = 0.8
    u = [np.log(phi / (1 - phi))]
    C = _corr_of_group(CAR1("t", "g"), u, "a")
    np.testing.assert_allclose(C, [[1, 0.8, 0.8**3], [0.8, 1, 0.8**2], [0.8**3, 0.8**2, 1]], rtol=1e-14)
    C = _corr_of_group(CAR1("t", "g"), u, "b")
    np.testing.assert_allclose(C, [[1, 0.8**5], [0.8**5, 1]], rtol=1e-14)


def test_exp_with_and_without_nugget():
    rng, nug = 2.0, 0.25
    C = _corr_of_group(Exp("t", "g"), [np.log(rng)], "a")
    np.testing.assert_allclose(C[0, 2], np.exp(-3 / 2.0), rtol=1e-14)
    C = _corr_of_group(Exp("t", "g", nugget=True), [np.log(rng), np.log(nug / (1 - nug))], "a")
    expected = (1 - nug) * np.exp(-np.array([[0, 1, 3], [1, 0, 2], [3, 2, 0]]) / rng)
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_allclose(C, expected, rtol=1e-14)


def test_symm_is_a_valid_correlation_with_nlme_parameter_order():
    u = np.array([0.3, -0.2, 0.9, 0.1, -1.2, 0.5])
    R = symm_matrix(u, 4)
    np.testing.assert_allclose(np.diag(R), 1.0, rtol=1e-14)
    assert np.all(np.linalg.eigvalsh(R) > 0)
    s = Symm("g")
    assert s.param_names(4) == ["cor(1,2)", "cor(1,3)", "cor(1,4)", "cor(2,3)", "cor(2,4)", "cor(3,4)"]
    np.testing.assert_allclose(s.natural(u, 4), [R[0, 1], R[0, 2], R[0, 3], R[1, 2], R[1, 3], R[2, 3]])
    # first row of the Cholesky factor is the partial correlation itself
    assert R[0, 1] == pytest.approx(np.tanh(0.3))
    # a group with 2 visits uses the leading 2 x 2 block (visit positions 1 and 2)
    C = _corr_of_group(Symm("g"), u[:3], "b")
    np.testing.assert_allclose(C, symm_matrix(u[:3], 3)[:2, :2])


def test_compsymm():
    C = _corr_of_group(CompSymm("g"), [0.0], "a")
    lo = -0.5  # -1 / (m - 1) with m = 3
    rho = lo + (1 - lo) * 0.5
    np.testing.assert_allclose(C, np.where(np.eye(3) == 1, 1.0, rho))


def test_varident_ratios_reference_first_level():
    df = _frame()
    v = VarIdent("s").bind(df)
    np.testing.assert_allclose(v.ratios(np.log([2.0, 3.0])), [1, 2, 2, 1, 3])
    nat = v.natural(np.log([2.0, 3.0]))
    assert list(nat.index) == ["x", "y", "z"]
    np.testing.assert_allclose(nat.to_numpy(), [1, 2, 3])
    cat = df.assign(s=pd.Categorical(df["s"], categories=["z", "y", "x"]))
    assert VarIdent("s").bind(cat).names == ["y", "x"]  # Categorical order: reference "z"


def test_symm_unconstrained_inverts_symm_matrix():
    from memoe.marginal.correlation import symm_unconstrained

    u = np.array([0.3, -0.2, 0.9, 0.1, -1.2, 0.5])
    np.testing.assert_allclose(symm_unconstrained(symm_matrix(u, 4)), u, rtol=1e-10)


def test_empirical_correlation_start_is_positive_definite():
    from memoe.marginal.correlation import empirical_correlation

    rng = np.random.default_rng(0)
    R = np.array([[1, 0.6, 0.3], [0.6, 1, 0.6], [0.3, 0.6, 1]])
    r = rng.normal(size=(4000, 3)) @ np.linalg.cholesky(R).T
    lay = make_layout(np.repeat(np.arange(4000), 3), pd.RangeIndex(4000), "g")
    est = empirical_correlation(lay, r.ravel(), 3)
    np.testing.assert_allclose(est, R, atol=0.05)
    assert np.linalg.eigvalsh(est).min() > 0


def test_varident_start_from_residual_sds():
    df = pd.DataFrame({"s": ["a", "b"] * 500})
    v = VarIdent("s").bind(df)
    resid = np.where(df["s"] == "a", 1.0, 3.0) * np.tile([1.0, 1.0, -1.0, -1.0], 250)
    np.testing.assert_allclose(v.start(resid), [np.log(3.0)])

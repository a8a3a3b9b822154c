"""Batched small-matrix kernels (structure-of-arrays and stacked) and per-group statistics against numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memoe.core.design.fixed import aliased_columns
from memoe.core.design.grouping import _codes_of
from memoe.core.linalg.batched import (
    batched_backward_solve_t,
    batched_cholesky,
    batched_forward_solve,
    batched_logdet_chol,
)
from memoe.core.linalg.soa import (
    soa_backward_solve_t,
    soa_cholesky,
    soa_congruence,
    soa_forward_solve,
    soa_lincomb,
    soa_logdet_chol,
)
from memoe.core.linalg.sufficient import GroupSums, group_crossprod, group_segments
from memoe.core.linalg.threads import _openblas_handles, blas_threads

QS = [1, 2, 3, 5, 7]


def _spd(rng, N, q):
    G = rng.standard_normal((N, q, q + 2))
    return G @ G.transpose(0, 2, 1) + 0.1 * np.eye(q)


def soa(a):
    """(N, ...) -> (..., N) contiguous."""
    return np.ascontiguousarray(np.moveaxis(a, 0, -1))


def aos(a):
    return np.moveaxis(a, -1, 0)


@pytest.mark.parametrize("q", QS)
def test_soa_kernels_match_numpy(q):
    rng = np.random.default_rng(q)
    N, m = 37, 4
    A = _spd(rng, N, q)
    lam = np.tril(rng.standard_normal((q, q)))
    S = soa_congruence(lam, soa(A), 1.0)
    want = lam.T @ A @ lam + np.eye(q)
    np.testing.assert_allclose(np.tril(aos(S)), np.tril(want), rtol=1e-12, atol=1e-12)
    L = soa_cholesky(S)
    Ln = np.linalg.cholesky(want)
    np.testing.assert_allclose(aos(L), Ln, rtol=1e-10, atol=1e-12)  # upper triangle is zero too
    B = rng.standard_normal((N, q, m))
    np.testing.assert_allclose(aos(soa_forward_solve(L, soa(B))), np.linalg.solve(Ln, B), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(
        aos(soa_backward_solve_t(L, soa(B))), np.linalg.solve(Ln.transpose(0, 2, 1), B), rtol=1e-9, atol=1e-11
    )
    np.testing.assert_allclose(soa_logdet_chol(L), np.linalg.slogdet(want)[1], rtol=1e-12)


def test_soa_cholesky_flags_indefinite_with_nan():
    S = soa(np.array([[[1.0, 2.0], [2.0, 1.0]], [[2.0, 0.0], [0.0, 3.0]]]))
    L = soa_cholesky(S)
    assert np.isnan(L[1, 1, 0])
    assert np.all(np.isfinite(L[:, :, 1]))
    assert not np.isfinite(soa_logdet_chol(L)[0])


def test_soa_lincomb_skips_zeros_and_matches_matmul():
    rng = np.random.default_rng(0)
    coef = np.array([[1.5, 0.0, -2.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    A = rng.standard_normal((3, 4, 11))
    np.testing.assert_allclose(soa_lincomb(coef, A), np.einsum("ik,kmn->imn", coef, A), rtol=1e-14)


@pytest.mark.parametrize("q", QS)
def test_stacked_kernels_match_numpy(q):
    rng = np.random.default_rng(10 + q)
    N = 23
    S = _spd(rng, N, q)
    L = batched_cholesky(S)
    Ln = np.linalg.cholesky(S)
    np.testing.assert_allclose(L, Ln, rtol=1e-10, atol=1e-12)
    B = rng.standard_normal((N, q, 3))
    np.testing.assert_allclose(batched_forward_solve(L, B), np.linalg.solve(Ln, B), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(
        batched_backward_solve_t(L, B), np.linalg.solve(Ln.transpose(0, 2, 1), B), rtol=1e-9, atol=1e-11
    )
    np.testing.assert_allclose(batched_logdet_chol(L), np.linalg.slogdet(S)[1], rtol=1e-12)
    # the (N, q, q) views of structure-of-arrays results work with the stacked kernels
    Lv = aos(soa_cholesky(soa(S)))
    np.testing.assert_allclose(batched_forward_solve(Lv, B), np.linalg.solve(Ln, B), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("sorted_rows", [True, False])
def test_group_sums_match_direct(sorted_rows):
    rng = np.random.default_rng(1)
    N = 700
    codes = np.repeat(np.arange(N), rng.integers(1, 9, N))
    if not sorted_rows:
        codes = rng.permutation(codes)
    n = len(codes)
    one, t, x, y = np.ones(n), rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)
    gs = GroupSums(codes, N)
    assert (gs.starts is not None) == sorted_rows
    left, right = [one, t], [one.copy(), t.copy(), x, y]  # equal-content copies are matched
    gs.prepare(left + right)
    got = gs.cross(left, right)
    want = np.moveaxis(group_crossprod(codes, N, left, right), 0, -1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gs.cross(right), np.moveaxis(group_crossprod(codes, N, right), 0, -1), rtol=1e-12)
    np.testing.assert_array_equal(gs.count, np.bincount(codes, minlength=N))


def test_group_sums_small_row_chunks(monkeypatch):
    import memoe.core.linalg.sufficient as suff

    monkeypatch.setattr(suff, "ROW_CHUNK", 7)  # many blocks, groups straddling block edges
    rng = np.random.default_rng(2)
    N = 50
    codes = np.repeat(np.arange(N), rng.integers(1, 12, N))
    cols = [rng.standard_normal(len(codes)) for _ in range(3)]
    gs = GroupSums(codes, N)
    gs.prepare(cols)
    np.testing.assert_allclose(gs.cross(cols), np.moveaxis(group_crossprod(codes, N, cols), 0, -1), rtol=1e-12)


def test_group_segments():
    assert group_segments(np.array([0, 0, 1, 2, 2]), 3).tolist() == [0, 2, 3]
    assert group_segments(np.array([0, 2, 1]), 3) is None  # unsorted
    assert group_segments(np.array([0, 0, 2]), 3) is None  # a level missing
    assert group_segments(np.array([0, 1]), 3) is None


@pytest.mark.parametrize(
    "values",
    [[3, 1, 2, 3], np.array([5, -2, 7, 5], dtype=np.int32), [10**12, 3], np.array([2, 0, 2], dtype=np.uint64)],
)
def test_integer_codes_match_factorize(values):
    col = pd.Series(values)
    codes, levels = _codes_of(col)
    want_codes, uniques = pd.factorize(col, sort=True)
    np.testing.assert_array_equal(codes, want_codes)
    assert levels.equals(pd.Index(list(uniques)))
    assert codes.dtype == np.int64


def test_aliased_columns_shortcut_agrees_with_qr():
    rng = np.random.default_rng(3)
    n = 200
    X = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    assert aliased_columns(X) == []
    assert aliased_columns(np.column_stack([X, X[:, 1] - 2 * X[:, 2]])) == [3]
    assert aliased_columns(np.column_stack([X, X[:, 1] + 1e-10 * rng.standard_normal(n)])) == [3]
    assert aliased_columns(np.column_stack([X, np.zeros(n)])) == [3]
    # near, but above, R's 1e-7 tolerance: kept (decided by the QR, not the Gram shortcut)
    assert aliased_columns(np.column_stack([X, X[:, 1] + 1e-5 * rng.standard_normal(n)])) == []


def test_blas_threads_caps_and_restores():
    handles = _openblas_handles()
    if not handles:
        pytest.skip("no OpenBLAS in this process")
    before = [get() for get, _ in handles]
    with blas_threads(1):
        assert all(get() == 1 for get, _ in handles)
        with blas_threads(1):
            assert all(get() == 1 for get, _ in handles)
    assert [get() for get, _ in handles] == before
    with blas_threads(None):
        assert [get() for get, _ in handles] == before

"""Two-thread Cholesky factor and inverse (memoe.core.linalg.split_inverse, issue 13).

``potrf_lower``/``potri_lower`` with ``workers=2`` split LAPACK's ``potrf``/``potri`` into blocks on two
threads: the same flops in a different summation order, so the results must equal LAPACK's to the rounding
of a Cholesky factor/inverse (backward stable: ``~ n eps cond(S) |S^-1|`` for the inverse), for every split
point (one-row blocks included), must report a failed factor at the same leading minor as ``dpotrf``, and
must leave the part of the matrix LAPACK leaves alone. The gradient of the dense crossed LMM path must not
depend on whether they ran threaded, and stays serial inside a pooled stencil.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from scipy.linalg import lapack

from memoe.core.linalg import split_inverse
from memoe.core.linalg.split_inverse import potrf_lower, potri_lower, split_available
from memoe.core.linalg.threads import pooled, pooled_active
from memoe.core.optim.checks import parallel_map
from memoe.lmm.gradient import deviance_and_gradient

from .test_lmm_gradient import _crossed, _random_theta

gradient_mod = importlib.import_module("memoe.lmm.gradient")
EPS = float(np.finfo(float).eps)

pytestmark = pytest.mark.skipif(not split_available(), reason="scipy exposes no LAPACK function pointers")


def _spd(n: int, seed: int, cond: float = 1e4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    ev = np.geomspace(1.0, cond, n)
    return np.asfortranarray((Q * ev) @ Q.T)


def _bound(S: np.ndarray, of_inverse: bool) -> float:
    """Backward-stable rounding bound: ``c n eps cond(S)`` relative to the result's largest entry."""
    n = S.shape[0]
    return 10.0 * n * EPS * (np.linalg.cond(S) if of_inverse else np.sqrt(np.linalg.cond(S)))


@pytest.mark.parametrize("n, split", [(2, 1), (3, 1), (3, 2), (40, None), (41, 1), (41, 40), (97, 13), (300, None)])
def test_potri_split_equals_dpotri(n, split):
    S = _spd(n, seed=n)
    L = lapack.dpotrf(S.copy(order="F"), lower=1, clean=1)[0]
    ref, info0 = lapack.dpotri(L.copy(order="F"), lower=1)
    inv, info = potri_lower(np.asfortranarray(L.copy()), workers=2, split=split)
    assert info == info0 == 0
    diff = np.abs(np.tril(inv) - np.tril(ref)).max() / np.abs(ref).max()
    assert diff <= _bound(S, True)
    # and it is the inverse
    full = np.tril(inv) + np.tril(inv, -1).T
    assert np.abs(full @ S - np.eye(n)).max() <= _bound(S, True)


@pytest.mark.parametrize("n, split", [(2, 1), (3, 2), (41, 1), (41, 40), (97, 13), (300, None)])
def test_potrf_split_equals_dpotrf_and_keeps_the_upper_triangle(n, split):
    S = _spd(n, seed=n + 1)
    ref = np.tril(lapack.dpotrf(S.copy(order="F"), lower=1, clean=1)[0])
    a = S.copy(order="F")
    a[np.triu_indices(n, 1)] = 7.0  # LAPACK leaves the strict upper triangle alone: so must the split
    c, info = potrf_lower(a, workers=2, split=split)
    assert info == 0 and c is a
    assert np.all(a[np.triu_indices(n, 1)] == 7.0)
    assert np.abs(np.tril(c) - ref).max() / np.abs(ref).max() <= _bound(S, False)


@pytest.mark.parametrize("split", [7, 20])
@pytest.mark.parametrize("bad", [0, 5, 19, 20, 21, 39])
def test_potrf_split_reports_the_failing_minor_as_dpotrf(bad, split):
    S = _spd(40, seed=3, cond=10.0)
    S[bad, bad] = -1.0
    _, info0 = lapack.dpotrf(S.copy(order="F"), lower=1)
    _, info = potrf_lower(S.copy(order="F"), workers=2, split=split)
    assert info == info0 > 0


def test_default_blocks_split_large_matrices_only(monkeypatch):
    # the default block order: a large matrix is split (its factor then differs from dpotrf's in the last
    # bits somewhere), a small one is LAPACK itself (bit for bit)
    calls: list[int] = []
    original = split_inverse._potrf

    def counting(f, m, i, b):
        calls.append(b)
        return original(f, m, i, b)

    monkeypatch.setattr(split_inverse, "_potrf", counting)
    for n, split_expected in ((600, True), (100, False)):
        S = _spd(n, seed=n, cond=1e3)
        ref = lapack.dpotrf(S.copy(order="F"), lower=1)[0]
        calls.clear()
        c, info = potrf_lower(S.copy(order="F"), workers=2)
        assert info == 0
        assert bool(calls) == split_expected
        if split_expected:
            assert len(calls) == round(n / split_inverse.POTRF_BLOCK)
        else:
            np.testing.assert_array_equal(np.tril(c), np.tril(ref))


def test_potri_split_reports_a_singular_factor():
    S = _spd(30, seed=4)
    L = np.asfortranarray(lapack.dpotrf(S.copy(order="F"), lower=1, clean=1)[0])
    for j in (3, 22):
        bad = L.copy(order="F")
        bad[j, j] = 0.0
        assert potri_lower(bad, workers=2)[1] == lapack.dpotri(bad.copy(order="F"), lower=1)[1] == j + 1


def test_serial_and_non_fortran_inputs_are_lapack():
    S = _spd(50, seed=6)
    L = lapack.dpotrf(S.copy(order="F"), lower=1, clean=1)[0]
    ref = lapack.dpotri(L.copy(order="F"), lower=1)[0]
    for arr, w in ((L.copy(order="F"), 1), (np.ascontiguousarray(L), 2)):
        inv, info = potri_lower(arr, workers=w)
        assert info == 0
        # both fall back to LAPACK dpotri itself (a C-ordered input is copied by the wrapper)
        np.testing.assert_array_equal(np.tril(inv), np.tril(ref))


def test_pooled_section_flag():
    assert not pooled_active()
    with pooled():
        assert pooled_active()
    assert not pooled_active()
    seen = []
    parallel_map(lambda i: seen.append(pooled_active()), range(4), workers=2)
    assert seen == [True] * 4
    seen.clear()
    parallel_map(lambda i: seen.append(pooled_active()), range(4), workers=1)
    assert seen == [False] * 4


def test_inverse_workers_follow_idle_cores_and_pooling(monkeypatch):
    monkeypatch.setattr(split_inverse, "usable_cores", lambda: 2)
    monkeypatch.setattr(split_inverse, "idle_cores", lambda: 1)
    assert split_inverse.split_workers() == 2
    monkeypatch.setattr(split_inverse, "idle_cores", lambda: 0)  # the other core busy
    assert split_inverse.split_workers() == 1
    monkeypatch.setattr(split_inverse, "idle_cores", lambda: 1)
    with pooled():
        assert split_inverse.split_workers() == 1
    seen = []
    parallel_map(lambda i: seen.append(split_inverse.split_workers()), range(3), workers=2)
    assert seen == [1, 1, 1]


@pytest.mark.parametrize("qs, nlev", [([1, 1, 1], [60, 40, 8]), ([2, 1], [40, 30]), ([1, 1], [300, 250])])
@pytest.mark.parametrize("reml", [True, False])
def test_dense_gradient_threaded_equals_serial(monkeypatch, qs, nlev, reml):
    monkeypatch.setattr(split_inverse, "SPLIT_MIN_ORDER", 0)  # split these small matrices too
    monkeypatch.setattr(split_inverse, "POTRF_BLOCK", 16)
    pb = _crossed(qs, nlev, seed=11)
    rng = np.random.default_rng(4)
    for _ in range(3):
        theta = _random_theta(qs, rng)
        monkeypatch.setattr(gradient_mod, "split_workers", lambda: 1)
        d1, g1 = deviance_and_gradient(pb, theta, reml)
        monkeypatch.setattr(gradient_mod, "split_workers", lambda: 2)
        d2, g2 = deviance_and_gradient(pb, theta, reml)
        # the same factor and inverse to rounding: the criterion to ~1e-13 relative, the gradient to
        # the rounding of a sum of |terms| of the criterion's size
        assert abs(d2 - d1) <= 1e-12 * abs(d1)
        np.testing.assert_allclose(g2, g1, rtol=0, atol=1e-10 * (abs(d1) + np.abs(g1).max()))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("n, order", [(50, 47), (50, 50), (9, 1), (120, 61)])
def test_potri_leading_block_is_the_inverse_of_the_leading_matrix(workers, n, order):
    # the factor of a bordered matrix starts with the factor of its leading block: inverting that block in
    # place must give (Omega_11)^-1 and leave the factor's other rows alone
    S = _spd(n, seed=order)
    L = np.asfortranarray(lapack.dpotrf(S.copy(order="F"), lower=1, clean=1)[0])
    c = L.copy(order="F")
    inv, info = potri_lower(c, workers=workers, order=order)
    assert info == 0 and inv is c
    ref = np.linalg.inv(S[:order, :order])
    diff = np.abs(np.tril(inv[:order, :order]) - np.tril(ref)).max() / np.abs(ref).max()
    assert diff <= _bound(S[:order, :order], True)
    np.testing.assert_array_equal(np.tril(c)[order:], np.tril(L)[order:])


def test_potri_leading_block_without_the_fast_path_and_bad_order():
    S = _spd(20, seed=2)
    L = lapack.dpotrf(S.copy(order="F"), lower=1, clean=1)[0]
    c = np.ascontiguousarray(L)  # not Fortran-ordered: LAPACK on a copy of the block, written back
    inv, info = potri_lower(c, workers=2, order=12)
    assert info == 0
    ref = np.linalg.inv(S[:12, :12])
    assert np.abs(np.tril(inv[:12, :12]) - np.tril(ref)).max() <= _bound(S, True) * np.abs(ref).max()
    from memoe.errors import MemoeError

    with pytest.raises(MemoeError, match="order"):
        potri_lower(np.asfortranarray(L), order=21)


@pytest.mark.parametrize("qs, nlev", [([1, 1, 1], [60, 40, 8]), ([2, 1], [40, 30]), ([1, 1], [2, 5])])
def test_map_products_on_two_threads_equal_the_whole_map(qs, nlev):
    from memoe.core.linalg.split_inverse import helper_pool

    rest = _crossed(qs, nlev, seed=3).rest
    P = rest.P
    rng = np.random.default_rng(0)
    w = rng.standard_normal(P.shape[1])
    z = rng.standard_normal(P.shape[0])
    cut = rest._cut()
    assert 0 < cut < P.shape[1]
    # column halves: each output entry of P' z is one half's; P w adds the two halves' sums (rounding)
    np.testing.assert_array_equal(rest.map_transpose_product(z, helper_pool()), P.T @ z)
    ref = P @ w
    np.testing.assert_allclose(rest.map_product(w, helper_pool()), ref, rtol=0,
                               atol=4 * EPS * (np.abs(P) @ np.abs(w)).max())
    np.testing.assert_array_equal(rest.map_product(w), ref)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork")
def test_helper_pool_works_in_a_forked_child():
    import multiprocessing as mp

    from memoe.core.linalg.split_inverse import helper_pool

    assert helper_pool().submit(sum, [1, 2]).result() == 3  # the parent's pool thread exists
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as p:
        res = p.apply_async(_child_inverse)
        assert res.get(timeout=60) is True


def _child_inverse() -> bool:
    S = _spd(300, seed=1, cond=10.0)
    L = np.asfortranarray(lapack.dpotrf(S.copy(order="F"), lower=1, clean=1)[0])
    inv, info = potri_lower(L, workers=2)
    return bool(info == 0 and np.allclose(np.tril(inv), np.tril(np.linalg.inv(S))))

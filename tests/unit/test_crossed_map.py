"""The scatter map of RestSchur (memoe.core.linalg.crossed) against the previous enumeration and a dense product.

The map was rebuilt for speed (issue 13, InstEval shape 90-260 ms -> 30-55 ms); the reference here is the
previous implementation (sort-free marking, pairs by repeat/gather per entry) kept verbatim, and, independent
of both, the dense ``Z_r'Z_r - Z_r'Z_1 W Z_1'Z_r`` the map must reproduce for random ``W``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from memoe.core.linalg import crossed
from memoe.core.linalg.crossed import RestSchur


def _old_level_pairs(Z1tZr, l1, q1, nb, max_nnz, extra):
    indptr, indices, data = Z1tZr.indptr, Z1tZr.indices, Z1tZr.data
    lev_start = indptr[0 : l1 * q1 + 1 : q1]
    nnz = len(indices)
    row_of = np.repeat(np.arange(l1 * q1), np.diff(indptr))
    lev, a_of = row_of // q1, row_of % q1
    sorted_rows = q1 == 1
    first = np.arange(nnz) if sorted_rows else lev_start[lev]
    cnt = lev_start[1:][lev] - first
    bound = int(cnt.sum())
    flat = np.empty(bound + extra, dtype=np.int64)
    wcol = np.empty(bound + extra, dtype=np.int64)
    vals = np.empty(bound + extra)
    e = np.arange(nnz)
    left = np.repeat(e, cnt)
    offs = np.cumsum(cnt) - cnt
    right = np.repeat(first - offs, cnt) + np.arange(len(left))
    cl, cr = indices[left], indices[right]
    if not sorted_rows:
        keep = cl <= cr
        left, right, cl, cr = left[keep], right[keep], cl[keep], cr[keep]
    total = len(left)
    flat[:total] = cl.astype(np.int64) * nb + cr
    wcol[:total] = (lev[left] * q1 + a_of[left]) * q1 + a_of[right]
    vals[:total] = data[left] * data[right]
    return flat, wcol, vals, total


def _old_map(rest: RestSchur):
    """The map as built before issue 13's rewrite (np.unique for the positions, argsort for the columns)."""
    zz = sp.triu(rest.ZrtZr, format="coo")
    nb = rest.nb
    flat, cols, vals, total = _old_level_pairs(rest.Z1tZr, rest.l1, rest.q1, nb, 10**9, zz.nnz)
    nw = rest.l1 * rest.q1 * rest.q1
    end = total + zz.nnz
    flat[total:end] = zz.row.astype(np.int64) * nb + zz.col
    cols[total:end] = nw
    vals[total:end] = zz.data
    flat, cols, vals = flat[:end], cols[:end], vals[:end]
    vals[:total] *= -1
    pos, rows = np.unique(flat, return_inverse=True)
    P = sp.coo_matrix((vals, (rows.ravel(), cols)), shape=(len(pos), nw + 1)).tocsc()
    return pos, P


def _design(rng, n, levels, q1, weights):
    """Random crossed design: first factor with q1 columns (intercept + covariates), later scalar factors."""
    codes = [rng.integers(0, lv, n) for lv in levels]
    # every level present (unbalanced: skewed draws plus one row per level)
    codes = [np.concatenate([np.arange(lv), c])[: n + lv] for lv, c in zip(levels, codes, strict=True)]
    n = len(codes[0])
    codes = [c[:n] if len(c) >= n else np.concatenate([c, rng.integers(0, lv, n - len(c))])
             for c, lv in zip(codes, levels, strict=True)]
    w = rng.uniform(0.5, 2.0, n) if weights else np.ones(n)
    X1 = np.column_stack([np.ones(n)] + [rng.normal(size=n) for _ in range(q1 - 1)])
    rows = np.arange(n)
    Z1 = sp.csr_matrix((X1.ravel(), (np.repeat(rows, q1), (codes[0][:, None] * q1 + np.arange(q1)).ravel())),
                       shape=(n, levels[0] * q1))
    Zr = sp.hstack([sp.csr_matrix((np.ones(n), (rows, c)), shape=(n, lv)) for c, lv in
                    zip(codes[1:], levels[1:], strict=True)]).tocsr()
    Wd = sp.diags(w)
    return (Z1.T @ Wd @ Zr).tocsr(), (Zr.T @ Wd @ Zr).tocsr(), Zr, Z1, w


CASES = [
    # (rows, levels of each factor, q1, prior weights)
    (400, (30, 12), 1, False),
    (500, (25, 9, 4), 1, True),  # three factors, weights
    (300, (20, 1, 7), 1, False),  # a later factor with one level
    (350, (1, 15), 1, False),  # a first factor with one level
    (600, (40, 10, 3), 2, False),  # vector-valued first factor
    (500, (30, 8), 3, True),
]


@pytest.mark.parametrize("n, levels, q1, weights", CASES)
def test_map_equals_previous_and_dense(n, levels, q1, weights):
    rng = np.random.default_rng(n + sum(levels) + q1)
    Z1tZr, ZrtZr, Zr, _, _ = _design(rng, n, levels, q1, weights)
    mz = Zr.shape[1]
    rest = RestSchur(Z1tZr, ZrtZr, np.zeros((mz, 2)), levels[0], q1, [1] * (len(levels) - 1), list(levels[1:]))
    pos_old, P_old = _old_map(rest)
    assert np.array_equal(rest.pos, pos_old)
    P = rest.P
    assert P.shape == P_old.shape
    # same entries (exact: the same products, one per (position, W entry))
    D = (P - P_old).tocoo()
    assert D.nnz == 0 or np.max(np.abs(D.data)) == 0.0
    assert P.nnz == P_old.nnz
    # independent check: the dense Z_r'Z_r - Z_r'Z_1 W Z_1'Z_r on the upper triangle, random blocks W_j
    Wb = rng.normal(size=(levels[0], q1, q1))
    Wb = Wb + Wb.transpose(0, 2, 1)
    Wfull = sp.block_diag(list(Wb), format="csr")
    H = (ZrtZr - Z1tZr.T @ Wfull @ Z1tZr).toarray()
    nb = rest.nb
    M = np.zeros((nb, nb))
    M.ravel()[rest.pos] = P @ np.append(Wb.ravel(), 1.0)
    iu = np.triu_indices(mz)
    scale = np.max(np.abs(H)) + 1.0
    np.testing.assert_allclose(M[:mz, :mz][iu], H[iu], rtol=0, atol=1e-12 * scale * max(levels))
    assert not np.any(M[:mz, :mz][np.tril_indices(mz, -1)])


def test_chunked_enumeration_equals_unchunked(monkeypatch):
    """Chunks of a few pairs (entries split across chunk boundaries) give the same map as one chunk."""
    rng = np.random.default_rng(7)
    for q1 in (1, 2):
        Z1tZr, ZrtZr, Zr, _, _ = _design(rng, 500, (30, 11, 5), q1, True)
        mz = Zr.shape[1]
        args = (Z1tZr, ZrtZr, np.zeros((mz, 2)), 30, q1, [1, 1], [11, 5])
        whole = RestSchur(*args).P
        monkeypatch.setattr(crossed, "PAIR_CHUNK", 7)
        small = RestSchur(*args)
        assert np.array_equal(small.pos, RestSchur(*args).pos)
        assert abs(small.P - whole).max() == 0.0 and small.P.nnz == whole.nnz
        monkeypatch.setattr(crossed, "PAIR_CHUNK", 1_000_000)


def test_map_refused_above_limit():
    rng = np.random.default_rng(3)
    Z1tZr, ZrtZr, Zr, _, _ = _design(rng, 400, (20, 15), 1, False)
    rest = RestSchur(Z1tZr, ZrtZr, np.zeros((Zr.shape[1], 2)), 20, 1, [1], [15], max_nnz=10)
    assert rest.P is None

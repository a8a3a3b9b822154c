"""PLSProblem against the dense marginal model: V = sigma^2 (I + Z Lambda Lambda' Z')."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import block_diag

from memoe.core.covariance import ThetaMap
from memoe.core.linalg.crossed import RestSchur
from memoe.lmm.objective import PLSProblem


def _theta_map(qs: list[int]) -> ThetaMap:
    block, row, col, names = [], [], [], []
    for b, q in enumerate(qs):
        for c in range(q):
            for r in range(c, q):
                block.append(b)
                row.append(r)
                col.append(c)
                names.append(f"b{b}.{r}.{c}")
    return ThetaMap(np.array(block), np.array(row), np.array(col), tuple(qs), names)


def _dense_Z(codes: list[np.ndarray], nlevels: list[int], Z: list[np.ndarray]) -> np.ndarray:
    """Dense Z with the columns of each block level-major (level j: q_k columns)."""
    n = len(codes[0])
    parts = []
    for c, nl, Zk in zip(codes, nlevels, Z, strict=True):
        q = Zk.shape[1]
        D = np.zeros((n, nl * q))
        for a in range(q):
            D[np.arange(n), c * q + a] = Zk[:, a]
        parts.append(D)
    return np.hstack(parts)


def _dense_Lambda(tmap: ThetaMap, theta: np.ndarray, nlevels: list[int]) -> np.ndarray:
    lams = tmap.lambdas(theta)
    return block_diag(*[np.kron(np.eye(nl), lam) for nl, lam in zip(nlevels, lams, strict=True)])


def dense_objective(y, X, Zd, Lam, reml: bool) -> float:
    """-2 log-likelihood (ML) or REML criterion with beta and sigma profiled out, from V directly."""
    n, p = X.shape
    ZL = Zd @ Lam
    Vt = np.eye(n) + ZL @ ZL.T
    Vi = np.linalg.inv(Vt)
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ y)
    r = y - X @ beta
    rss = r @ Vi @ r
    logdetV = np.linalg.slogdet(Vt)[1]
    if reml:
        s2 = rss / (n - p)
        return (n - p) * np.log(2 * np.pi * s2) + logdetV + np.linalg.slogdet(XtViX)[1] + (n - p)
    s2 = rss / n
    return n * np.log(2 * np.pi * s2) + logdetV + n


def _random_theta(rng, tmap: ThetaMap) -> np.ndarray:
    th = rng.normal(0.0, 0.6, tmap.size)
    diag = tmap.row == tmap.col
    th[diag] = rng.uniform(0.2, 1.5, diag.sum())
    return th


def _data(rng, nlevels, qs, n=150, p=3, sort_first=True):
    codes = [rng.integers(0, nl, n) for nl in nlevels]
    for c, nl in zip(codes, nlevels, strict=True):  # every level used
        c[:nl] = np.arange(nl)
    if sort_first:
        order = np.argsort(codes[0], kind="stable")
        codes = [c[order] for c in codes]
    t = rng.normal(size=n)
    X = np.column_stack([np.ones(n), t] + [rng.normal(size=n) for _ in range(p - 2)])
    Z = []
    for q in qs:
        cols = [np.ones(n), t, rng.normal(size=n), rng.normal(size=n)][:q]
        Z.append(np.column_stack(cols))
    y = rng.normal(size=n) + X @ rng.normal(size=p)
    return y, X, codes, Z


CASES = [
    ("one factor q=1", [12], [1]),
    ("one factor q=2", [15], [2]),
    ("one factor q=3", [10], [3]),
    ("crossed q=1 x q=1", [14, 6], [1, 1]),
    ("crossed q=2 x q=1", [12, 5], [2, 1]),
    ("three factors q=1", [11, 6, 4], [1, 1, 1]),
    ("second factor q=2", [12, 5], [1, 2]),
]


@pytest.mark.parametrize("name,nlevels,qs", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("reml", [True, False])
def test_objective_equals_dense_marginal(name, nlevels, qs, reml):
    rng = np.random.default_rng(abs(hash((name, reml))) % 2**32)
    y, X, codes, Z = _data(rng, nlevels, qs)
    tmap = _theta_map(qs)
    prob = PLSProblem(y, X, codes, nlevels, Z, tmap)
    Zd = _dense_Z(codes, nlevels, Z)
    for _ in range(3):
        theta = _random_theta(rng, tmap)
        Lam = _dense_Lambda(tmap, theta, nlevels)
        want = dense_objective(y, X, Zd, Lam, reml)
        assert prob.deviance(theta, reml) == pytest.approx(want, rel=1e-10, abs=1e-8)
        # factorize() (the kept-arrays path) agrees with the lean path
        f = prob.factorize(theta)
        assert f.ok
        assert f.logdet_Z == pytest.approx(np.linalg.slogdet(Lam.T @ Zd.T @ Zd @ Lam + np.eye(Lam.shape[1]))[1])


@pytest.mark.parametrize("name,nlevels,qs", CASES, ids=[c[0] for c in CASES])
def test_solution_equals_gls_and_blup(name, nlevels, qs):
    rng = np.random.default_rng(7)
    y, X, codes, Z = _data(rng, nlevels, qs)
    tmap = _theta_map(qs)
    prob = PLSProblem(y, X, codes, nlevels, Z, tmap)
    theta = _random_theta(rng, tmap)
    sol = prob.solve(theta, reml=True)
    Zd = _dense_Z(codes, nlevels, Z)
    Lam = _dense_Lambda(tmap, theta, nlevels)
    ZL = Zd @ Lam
    Vi = np.linalg.inv(np.eye(len(y)) + ZL @ ZL.T)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    np.testing.assert_allclose(sol.beta, beta, rtol=1e-9, atol=1e-10)
    b = Lam @ ZL.T @ Vi @ (y - X @ beta)
    got = np.concatenate([bk.ravel() for bk in sol.b])
    np.testing.assert_allclose(got, b, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sol.vcov_unscaled, np.linalg.inv(X.T @ Vi @ X), rtol=1e-8, atol=1e-12)
    # conditional variances: sigma^2 Lambda (Lambda'Z'Z Lambda + I)^-1 Lambda' diagonal blocks
    full = sol.sigma**2 * Lam @ np.linalg.inv(ZL.T @ ZL + np.eye(ZL.shape[1])) @ Lam.T
    cv = prob.conditional_variances(sol)
    off = 0
    for blk, q, nl in zip(cv, qs, nlevels, strict=True):
        for j in range(nl):
            sl = slice(off + j * q, off + (j + 1) * q)
            np.testing.assert_allclose(blk[j], full[sl, sl], rtol=1e-8, atol=1e-12)
        off += q * nl


@pytest.mark.parametrize("qs", [[1], [2]])
@pytest.mark.parametrize("reml", [True, False])
def test_integer_group_weights_equal_replicated_subjects(qs, reml):
    rng = np.random.default_rng(3)
    nl = 9
    y, X, codes, Z = _data(rng, [nl], qs, n=80)
    tmap = _theta_map(qs)
    w = rng.integers(0, 4, nl).astype(float)
    w[0] = 1.0
    prob = PLSProblem(y, X, codes, [nl], Z, tmap)
    prob.set_group_weights(w)
    # replicate subject j w_j times, each copy a new subject
    rows, new_codes = [], []
    nxt = 0
    for j in range(nl):
        idx = np.flatnonzero(codes[0] == j)
        for _ in range(int(w[j])):
            rows.append(idx)
            new_codes.append(np.full(len(idx), nxt))
            nxt += 1
    rows = np.concatenate(rows)
    rep = PLSProblem(y[rows], X[rows], [np.concatenate(new_codes)], [nxt], [Z[0][rows]], tmap)
    for _ in range(3):
        theta = _random_theta(rng, tmap)
        assert prob.deviance(theta, reml) == pytest.approx(rep.deviance(theta, reml), rel=1e-10)
    prob.set_group_weights(None)
    unweighted = PLSProblem(y, X, codes, [nl], Z, tmap)
    theta = _random_theta(rng, tmap)
    assert prob.deviance(theta, reml) == pytest.approx(unweighted.deviance(theta, reml), rel=1e-12)
    prob.set_group_weights(np.ones(nl))
    assert prob.deviance(theta, reml) == pytest.approx(unweighted.deviance(theta, reml), rel=1e-12)


def test_public_statistics_shapes_and_values():
    rng = np.random.default_rng(5)
    nl = 7
    y, X, codes, Z = _data(rng, [nl], [2], n=60)
    prob = PLSProblem(y, X, codes, [nl], Z, _theta_map([2]))
    XY = np.column_stack([X, y])
    assert prob.ZtZ1.shape == (nl, 2, 2)
    assert prob.ZtXY1.shape == (nl, 2, 4)
    assert prob.XYtXY_level.shape == (nl, 4, 4)
    for j in range(nl):
        m = codes[0] == j
        np.testing.assert_allclose(prob.ZtZ1[j], Z[0][m].T @ Z[0][m])
        np.testing.assert_allclose(prob.ZtXY1[j], Z[0][m].T @ XY[m])
        np.testing.assert_allclose(prob.XYtXY_level[j], XY[m].T @ XY[m])
    np.testing.assert_array_equal(prob.level_n, np.bincount(codes[0]))
    with pytest.raises(ValueError):
        prob.ZtZ1[0, 0, 0] = 1.0  # read-only views: the SoA storage cannot be changed through them


def test_row_order_and_level_permutation_do_not_matter():
    rng = np.random.default_rng(11)
    y, X, codes, Z = _data(rng, [13, 5], [2, 1], n=120)
    tmap = _theta_map([2, 1])
    theta = _random_theta(rng, tmap)
    a = PLSProblem(y, X, codes, [13, 5], Z, tmap).deviance(theta, True)
    perm = rng.permutation(len(y))
    relabel = rng.permutation(13)
    b = PLSProblem(
        y[perm], X[perm], [relabel[codes[0][perm]], codes[1][perm]], [13, 5], [z[perm] for z in Z], tmap
    ).deviance(theta, True)
    assert a == pytest.approx(b, rel=1e-11)


def test_schur_fallback_equals_fixed_pattern():
    rng = np.random.default_rng(2)
    y, X, codes, Z = _data(rng, [14, 6], [2, 1], n=130)
    tmap = _theta_map([2, 1])
    prob = PLSProblem(y, X, codes, [14, 6], Z, tmap)
    theta = _random_theta(rng, tmap)
    want = prob.deviance(theta, False)
    r = prob.rest
    prob.rest = RestSchur(r.Z1tZr, r.ZrtZr, r.ZrtXY, r.l1, r.q1, r.q_rest, r.nlevels_rest, max_nnz=0)
    assert prob.rest.P is None
    prob._buffer = None
    assert prob.deviance(theta, False) == pytest.approx(want, rel=1e-11)


@pytest.mark.parametrize("qs,nlevels", [([1], [8]), ([2], [8]), ([1, 1], [8, 3])])
def test_undefined_objective_gives_inf(qs, nlevels):
    rng = np.random.default_rng(4)
    y, X, codes, Z = _data(rng, nlevels, qs, n=40)
    prob = PLSProblem(y, X, codes, nlevels, Z, _theta_map(qs))
    theta = np.full(_theta_map(qs).size, np.nan)
    assert prob.deviance(theta, True) == np.inf
    assert not prob.factorize(theta).ok

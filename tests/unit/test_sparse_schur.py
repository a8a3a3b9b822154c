"""The sparse LDL' of the Schur complement (memoe.core.linalg.sparse_schur) against the dense path.

Both paths factor the same matrix ``M``; they differ only in rounding, so the deviance, the solution
and the conditional variances at a fixed theta agree to the rounding level of a few factorizations
(``ROUNDING``), and fitted models to the optimiser's own noise (logLik 1e-8 relative, estimates 1e-6).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import MemoeError
from memoe.lmm import objective
from memoe.lmm.objective import PLSProblem
from tests.tolerances import ROUNDING

pytest.importorskip("qdldl")


def _nested(G: int, seed: int = 2) -> tuple[pd.DataFrame, str]:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(G), 6)
    h = np.tile(np.repeat(np.arange(2), 3), G)
    n = len(g)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=G)[g] + 0.7 * rng.normal(size=2 * G)[g * 2 + h] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(str), "h": h.astype(str)}), "y ~ x + (1 | g/h)"


def _crossed(kind: str, seed: int = 3, n: int = 3000, la: int = 400, lb: int = 900) -> tuple[pd.DataFrame, str]:
    rng = np.random.default_rng(seed)
    lc = 60
    a, b, c = rng.integers(0, la, n), rng.integers(0, lb, n), rng.integers(0, lc, n)
    x = rng.normal(size=n)
    y = (
        1
        + x
        + rng.normal(size=la)[a]
        + rng.normal(size=lb)[b]
        + 0.5 * x * rng.normal(size=la)[a]
        + 0.3 * rng.normal(size=lc)[c]
        + rng.normal(size=n)
    )
    df = pd.DataFrame({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str), "c": c.astype(str)})
    formulas = {
        "scalar": "y ~ x + (1 | a) + (1 | b)",
        "vector": "y ~ x + (1 + x | a) + (1 | b)",
        "three": "y ~ x + (1 | a) + (1 | b) + (1 | c)",
    }
    return df, formulas[kind]


def _problems(df: pd.DataFrame, formula: str) -> tuple[PLSProblem, PLSProblem, np.ndarray]:
    d = memoe.lmm(formula, df).design

    def make(schur: str) -> PLSProblem:
        return PLSProblem(
            y=d.y,
            X=d.X,
            codes=[b.factor.codes for b in d.blocks],
            nlevels=[b.nlevels for b in d.blocks],
            Z=[b.Z for b in d.blocks],
            theta_map=d.theta_map,
            schur=schur,
        )

    theta = 0.6 * d.theta_map.initial() + 0.05
    return make("dense"), make("sparse"), theta


CASES = [_nested(300), _crossed("scalar"), _crossed("vector"), _crossed("three")]


@pytest.mark.parametrize("case", CASES, ids=["nested", "crossed", "vector", "three-factor"])
def test_sparse_equals_dense_at_fixed_theta(case):
    dense, sparse, theta = _problems(*case)
    assert dense.sparse is None and sparse.sparse is not None
    for reml in (True, False):
        dd, ds = dense.deviance(theta, reml), sparse.deviance(theta, reml)
        assert abs(dd - ds) <= ROUNDING * abs(dd)
    sd, ss = dense.solve(theta, True), sparse.solve(theta, True)
    scale = np.abs(sd.beta).max()
    np.testing.assert_allclose(ss.beta, sd.beta, rtol=0, atol=ROUNDING * 100 * scale)
    for ud, us in zip(sd.u, ss.u, strict=True):
        np.testing.assert_allclose(us, ud, rtol=0, atol=ROUNDING * 100 * np.abs(ud).max())
    np.testing.assert_allclose(ss.vcov_unscaled, sd.vcov_unscaled, rtol=1e-8)
    for vd, vs in zip(dense.conditional_variances(sd), sparse.conditional_variances(ss), strict=True):
        np.testing.assert_allclose(vs, vd, rtol=1e-8, atol=1e-12)


def test_sparse_factor_is_ldlt_of_mzz():
    """``M_zz[perm][:, perm] = (I + L) D (I + L)'``, with ``M_zz`` the dense path's corner."""
    dense, sparse, theta = _problems(*CASES[1])
    fd, fs = dense._factorize(theta), sparse._factorize(theta)
    mz = dense.mz
    L22 = fd.Lr[:mz, :mz]
    Mzz = L22 @ L22.T
    sf = fs.sparse
    F = sf.L.toarray() + np.eye(mz)
    np.testing.assert_allclose((F * sf.D) @ F.T, Mzz[np.ix_(sf.perm, sf.perm)], atol=1e-9 * np.abs(Mzz).max())
    np.testing.assert_allclose(fs.Lr, fd.Lr[mz:, mz:], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(CASES[0], id="nested"),
        pytest.param(_crossed("vector", n=1200, la=150, lb=300), id="vector", marks=pytest.mark.slow),
    ],
)
def test_sparse_fit_equals_dense_fit(case, monkeypatch):
    df, formula = case
    fits = {}
    for path, fill in (("dense", -1.0), ("sparse", 1.0)):
        monkeypatch.setattr(objective, "SPARSE_MIN_REST", 0)
        monkeypatch.setattr(objective, "SPARSE_MAX_FILL", fill)
        m = memoe.lmm(formula, df)
        assert (m.problem.sparse is not None) == (path == "sparse")
        fits[path] = m.fit()
    d, s = fits["dense"], fits["sparse"]
    assert abs(d.loglik - s.loglik) <= 1e-8 * abs(d.loglik)
    np.testing.assert_allclose(s.params, d.params, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(s.theta, d.theta, rtol=1e-6, atol=1e-6)
    # prediction intervals go through the factor (pls_prediction_variance's sparse branch)
    pd_ = d.predict(df.iloc[:50], interval="confidence")
    ps_ = s.predict(df.iloc[:50], interval="confidence")
    np.testing.assert_allclose(ps_.to_numpy(), pd_.to_numpy(), rtol=1e-5)


def test_auto_choice():
    """Nested: the outer factor's block stays diagonal, so auto takes the sparse path; small: dense."""
    dense, _, _ = _problems(*_nested(100))
    assert dense.sparse is None
    df, formula = _nested(2000)
    m = memoe.lmm(formula, df)
    assert m.problem.mz == 2000 and m.problem.sparse is not None


def test_nested_10000_outer_groups_fits():
    """Regression (issue 13): 10,000 g x 2 h, ~60k rows, ``(1 | g) + (1 | g:h)``.

    The old dense path formed and factored a 10,000 x 10,000 Schur complement per evaluation
    (about 9 minutes per fit, several GB in the conditional variances); the sparse path fits it
    in well under a second.
    """
    df, formula = _nested(10_000, seed=1)
    m = memoe.lmm(formula, df)
    assert m.problem.sparse is not None
    fit = m.fit()
    assert np.isfinite(fit.loglik)
    assert {len(v) for v in fit.ranef.values()} == {10_000, 20_000}
    cv = fit.ranef_condvar
    assert all(np.all(np.isfinite(v)) and np.all(v > 0) for v in cv.values())


def test_refused_before_allocation_when_neither_path_fits(monkeypatch):
    # vector random effects after the first factor: the matrix-free path does not apply either
    df, formula = _crossed("vector")
    monkeypatch.setattr(objective, "SPARSE_MIN_REST", 0)
    monkeypatch.setattr(objective, "MAX_DENSE_REST", 10)
    monkeypatch.setattr(objective, "MAX_SPARSE_NNZ", 10)
    monkeypatch.setattr(objective, "MAX_SPARSE_REST", 10)
    with pytest.raises(MemoeError, match=r"random effects in all.*limited to 10.*sparse factor to 10"):
        memoe.lmm(formula, df)


def test_bad_schur_argument():
    df, formula = _nested(20)
    d = memoe.lmm(formula, df).design
    with pytest.raises(MemoeError, match="schur must be"):
        PLSProblem(
            y=d.y,
            X=d.X,
            codes=[b.factor.codes for b in d.blocks],
            nlevels=[b.nlevels for b in d.blocks],
            Z=[b.Z for b in d.blocks],
            theta_map=d.theta_map,
            schur="banded",
        )


def test_dense_path_refuses_what_memory_cannot_hold(monkeypatch):
    """The dense Schur complement is sized against the available memory before it is allocated."""
    df, formula = _crossed("vector")
    monkeypatch.setattr(objective, "_available_bytes", lambda: 1000.0)
    with pytest.raises(MemoeError, match=r"dense Schur complement of \d+ random effects needs .* GiB"):
        memoe.lmm(formula, df)


@pytest.mark.parametrize("case", CASES, ids=["nested", "crossed", "vector", "three-factor"])
def test_fill_bound_bounds_the_factor(case):
    """The components' triangles bound the entries of the sparse factor (what auto relies on)."""
    _, sparse, theta = _problems(*case)
    f = sparse._factorize(theta).sparse
    mz = sparse.mz
    assert f.L.nnz + mz <= sparse._fill_bound() <= mz * (mz + 1) // 2


def test_auto_keeps_crossed_designs_dense():
    dense, _, _ = _problems(*_crossed("scalar", la=600, lb=900))
    assert dense.mz >= objective.SPARSE_MIN_REST
    m = memoe.lmm(*_crossed("scalar", la=600, lb=900)[::-1])
    assert m.problem.sparse is None

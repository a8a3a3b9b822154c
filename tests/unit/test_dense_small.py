"""The dense small-problem path (memoe.core.linalg.dense_small) against the blocked Schur paths.

All paths factor the same penalised least-squares system, so at a fixed theta the deviance and REML
criterion agree to the rounding level of a few factorisations (``ROUNDING``; 1e-10 relative is asked of
the path). Fitted models agree to the optimiser's own noise: the criteria to 1e-10 relative (a
difference that small is second order at the optimum), theta and beta within the slack that a
criterion difference of that size allows (:class:`tests.tolerances.OptimumSlack`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import memoe
from memoe.core.design.scaling import choose_scaling
from memoe.core.linalg import dense_small
from memoe.errors import MemoeError
from memoe.lmm.model import SINGULAR_TOL
from memoe.lmm.objective import PLSProblem
from tests.tolerances import ROUNDING, OptimumSlack

LOGLIK_REL = 1e-10


def _crossed(seed: int = 1, ns: int = 24, ni: int = 14, frac: float = 1.0) -> tuple[pd.DataFrame, str]:
    """kb07 shape, small: (1 + x + w | subj) + (1 + x | item); ``frac`` < 1 drops cells (partially crossed)."""
    rng = np.random.default_rng(seed)
    s, i = np.meshgrid(np.arange(ns), np.arange(ni), indexing="ij")
    s, i = s.ravel(), i.ravel()
    keep = rng.random(len(s)) < frac
    s, i = s[keep], i[keep]
    n = len(s)
    x = rng.choice([-0.5, 0.5], n)
    w = rng.choice([-0.5, 0.5], n)
    bs = rng.normal(size=(ns, 3)) * [1.0, 0.4, 0.3]
    bi = rng.normal(size=(ni, 2)) * [0.8, 0.3]
    y = 2 + x + 0.5 * w + bs[s, 0] + bs[s, 1] * x + bs[s, 2] * w + bi[i, 0] + bi[i, 1] * x + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "x": x, "w": w, "subj": [f"s{v}" for v in s], "item": [f"i{v}" for v in i]})
    return df, "y ~ x + w + (1 + x + w | subj) + (1 + x | item)"


def _penicillin():
    return memoe.datasets.load("Penicillin"), "diameter ~ 1 + (1 | plate) + (1 | sample)"


def _pastes():
    return memoe.datasets.load("Pastes"), "strength ~ 1 + (1 | batch/cask)"


def _three():
    df, _ = _crossed(seed=4, frac=0.7)
    df["site"] = [f"c{hash(v) % 5}" for v in df["subj"]]
    return df, "y ~ x + (1 + x | subj) + (1 | item) + (1 | site)"


CASES = {
    "crossed_vector": _crossed(),
    "partially_crossed": _crossed(seed=2, frac=0.45),
    "penicillin": _penicillin(),
    "pastes_nested": _pastes(),
    "three_factors": _three(),
}


def _problem(model, schur: str) -> PLSProblem:
    d = model.design
    return PLSProblem(
        y=d.y,
        X=d.X,
        codes=[b.factor.codes for b in d.blocks],
        nlevels=[b.nlevels for b in d.blocks],
        Z=[b.Z for b in d.blocks],
        theta_map=d.theta_map,
        scaling=choose_scaling(d.X, d.y),
        log_weights=d.log_weights,
        schur=schur,
    )


def _thetas(tmap, seed: int = 0) -> list[np.ndarray]:
    """The start, random interior points, and singular points (diagonal entries at 0)."""
    rng = np.random.default_rng(seed)
    lo = tmap.lower_bounds
    out = [tmap.initial()]
    for _ in range(3):
        out.append(np.maximum(tmap.initial() + 0.4 * rng.normal(size=len(lo)), lo))
    sing = out[1].copy()
    sing[lo == 0] = 0.0  # every relative factor singular: Lambda = 0
    out.append(sing)
    half = out[2].copy()
    half[np.flatnonzero(lo == 0)[::2]] = 0.0
    out.append(half)
    return out


def _assert_same_deviances(model, other: str) -> None:
    small, ref = _problem(model, "dense_small"), _problem(model, other)
    assert small.path == "dense_small" and ref.path == other
    for theta in _thetas(model.design.theta_map):
        for reml in (True, False):
            a, b = small.deviance(theta, reml), ref.deviance(theta, reml)
            assert np.isfinite(a) and np.isfinite(b)
            assert abs(a - b) <= LOGLIK_REL * abs(b), (theta, reml, a, b)


@pytest.mark.parametrize("name", list(CASES))
def test_deviance_equals_dense_schur_path(name):
    df, formula = CASES[name]
    _assert_same_deviances(memoe.lmm(formula, df), "dense")


@pytest.mark.parametrize("name", ["pastes_nested", "crossed_vector"])
def test_deviance_equals_sparse_schur_path(name):
    pytest.importorskip("qdldl")
    df, formula = CASES[name]
    _assert_same_deviances(memoe.lmm(formula, df), "sparse")


def test_weights_and_offsets():
    """Prior weights (the working rows sqrt(w) [Z X y] and sum(log w)) and offsets."""
    df, formula = _crossed(seed=3, frac=0.8)
    rng = np.random.default_rng(7)
    df["wt"] = rng.uniform(0.3, 3.0, len(df))
    df["off"] = rng.normal(size=len(df))
    model = memoe.lmm(formula, df, weights="wt", offset="off")
    assert model.design.log_weights != 0.0
    _assert_same_deviances(model, "dense")


def test_centred_and_scaled_columns():
    """An epoch-scale covariate and a shifted response: the problem works on centred, scaled [X y].

    (Not combined with prior weights: the working intercept column sqrt(w) is not constant, so
    nothing can be centred and both paths lose ~12 digits of the penalised RSS to cancellation.)
    """
    df, formula = _crossed(seed=3, frac=0.8)
    rng = np.random.default_rng(7)
    df["t"] = 1.6e9 + 1e5 * rng.normal(size=len(df))
    df["y"] = df["y"] + 1e6
    model = memoe.lmm(formula.replace("y ~ x", "y ~ x + t"), df)
    assert choose_scaling(model.design.X, model.design.y) is not None
    _assert_same_deviances(model, "dense")


def test_auto_chooses_dense_small_for_small_problems():
    df, formula = CASES["crossed_vector"]
    assert memoe.lmm(formula, df).problem.path == "dense_small"
    assert memoe.lmm("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).problem.path == (
        "one factor"
    )
    # kb07: 56 x 3 then 32 x 3 random effects, p = 4
    assert dense_small.prefer_dense_small(168, 96, 5, scalar_rest=False)
    # vector later factors: the blocked path's overhead loses up to ~2e7 flops of dense work
    assert dense_small.prefer_dense_small(450, 120, 3, scalar_rest=False)
    assert not dense_small.prefer_dense_small(900, 200, 3, scalar_rest=False)
    # scalar later factors: the blocked path is lean, the dense one pays up to ~4e6 flops (value + gradient:
    # 200 x 100 levels 0.62 against 1.12 ms, 500 x 100 1.18 against 1.03 ms)
    assert dense_small.prefer_dense_small(100, 30, 2, scalar_rest=True)
    assert dense_small.prefer_dense_small(200, 100, 2, scalar_rest=True)
    assert not dense_small.prefer_dense_small(500, 100, 2, scalar_rest=True)
    assert not dense_small.prefer_dense_small(1000, 100, 2, scalar_rest=True)


def test_constructor_from_z_equals_from_blocks():
    df, formula = CASES["crossed_vector"]
    model = memoe.lmm(formula, df)
    p = model.problem
    d = model.design
    Z = sp.hstack([_sparse_z(b) for b in d.blocks], format="csc")
    xy = [d.X[:, j] for j in range(d.X.shape[1])] + [d.y]
    direct = dense_small.DenseSmall(Z, xy, p.XYtXY, p.q, p.nlevels)
    lam = d.theta_map.lambdas(_thetas(d.theta_map)[2])
    a, b = direct.pieces(lam), p.dense_small.pieces(lam)
    assert a[0] and b[0]
    np.testing.assert_allclose(a[1:], b[1:], rtol=ROUNDING)


def _sparse_z(block) -> sp.csc_matrix:
    n, q = block.Z.shape
    cols = (block.factor.codes[:, None] * q + np.arange(q)[None, :]).ravel()
    return sp.csc_matrix((block.Z.ravel(), (np.repeat(np.arange(n), q), cols)), shape=(n, block.nlevels * q))


def test_auto_keeps_blocked_path_for_large_problems():
    rng = np.random.default_rng(5)
    n = 6000
    a, b = rng.integers(0, 1500, n), rng.integers(0, 300, n)
    df = pd.DataFrame({"y": rng.normal(size=n) + rng.normal(size=1500)[a], "a": a.astype(str), "b": b.astype(str)})
    p = memoe.lmm("y ~ 1 + (1 | a) + (1 | b)", df).problem
    assert p.dense_small is None and p.path == "dense"


def test_forced_paths_and_bad_value():
    df, formula = CASES["penicillin"]
    model = memoe.lmm(formula, df)
    assert _problem(model, "dense").dense_small is None
    assert _problem(model, "dense_small").path == "dense_small"
    with pytest.raises(MemoeError, match=r"schur must be .*'dense_small'"):
        _problem(model, "tiny")


def test_nonfinite_where_factorisation_fails():
    """A NaN theta gives an infinite objective on every path (the optimiser backs off), no exception."""
    df, formula = CASES["penicillin"]
    model = memoe.lmm(formula, df)
    theta = np.array([np.nan, 1.0])
    assert _problem(model, "dense_small").deviance(theta, True) == np.inf
    assert _problem(model, "dense").deviance(theta, True) == np.inf


def _fit_with(model, schur: str, reml: bool):
    model.problem = _problem(model, schur)
    return model.fit(reml=reml, warn=False)


@pytest.mark.parametrize(
    "name",
    [
        # two fits of 9 thetas, one on the (slow, sparse) blocked path, plus a finite-difference Hessian
        pytest.param("crossed_vector", marks=pytest.mark.slow),
        pytest.param("partially_crossed", marks=pytest.mark.slow),
        "pastes_nested",
        "penicillin",
    ],
)
@pytest.mark.parametrize("reml", [True, False])
def test_fits_agree(name, reml):
    df, formula = CASES[name]
    small = _fit_with(memoe.lmm(formula, df), "dense_small", reml)
    ref_model = memoe.lmm(formula, df)
    ref = _fit_with(ref_model, "dense", reml)
    assert small.model.problem.path == "dense_small"
    assert abs(small.loglik - ref.loglik) <= LOGLIK_REL * abs(ref.loglik)
    # estimates: within what a criterion difference of 2 x the log-likelihood tolerance allows
    delta = 2 * LOGLIK_REL * abs(ref.loglik)
    f = ref_model.objective(reml)
    tmap = ref_model.design.theta_map
    slack = OptimumSlack(f, ref.state.theta, delta, lower=tmap.lower_bounds)
    tol = slack.parameters() + ROUNDING * np.maximum(1.0, np.abs(ref.state.theta))
    # at (or within a finite-difference step of) a bound the curvature says nothing: there the optimiser
    # stops anywhere below lme4's singular tolerance (both fits report the same singularity below)
    tol[~slack.free] = SINGULAR_TOL
    np.testing.assert_array_less(np.abs(small.state.theta - ref.state.theta), tol)
    np.testing.assert_allclose(small.params, ref.params, rtol=1e-5, atol=1e-6 * np.abs(ref.params).max())
    assert small.singular == ref.singular


def test_singular_fit_on_dense_small_path():
    """An item effect with no variance: the fit sits on the boundary exactly as on the blocked path."""
    rng = np.random.default_rng(11)
    s, i = np.meshgrid(np.arange(20), np.arange(10), indexing="ij")
    s, i = s.ravel(), i.ravel()
    y = 1 + rng.normal(size=20)[s] + rng.normal(size=len(s))
    df = pd.DataFrame({"y": y, "s": s.astype(str), "i": i.astype(str)})
    formula = "y ~ 1 + (1 | s) + (1 | i)"
    small = _fit_with(memoe.lmm(formula, df), "dense_small", True)
    ref = _fit_with(memoe.lmm(formula, df), "dense", True)
    assert abs(small.loglik - ref.loglik) <= LOGLIK_REL * abs(ref.loglik)
    np.testing.assert_allclose(small.state.theta, ref.state.theta, atol=1e-5)
    assert small.singular == ref.singular


@pytest.mark.parametrize("name", ["crossed_vector", "partially_crossed", "pastes_nested", "three_factors"])
def test_solution_and_conditional_variances_equal_blocked_path(name):
    """The factor the dense path hands to solve/condVar/Satterthwaite equals the blocked path's."""
    df, formula = CASES[name]
    model = memoe.lmm(formula, df)
    small, ref = _problem(model, "dense_small"), _problem(model, "dense")
    thetas = _thetas(model.design.theta_map)
    for theta in [*thetas[1:3], thetas[-1]]:
        fs, fr = small.factorize(theta), ref.factorize(theta)
        for field in ("logdet_Z", "logdet_X", "pwrss"):
            assert abs(getattr(fs, field) - getattr(fr, field)) <= ROUNDING * max(1.0, abs(getattr(fr, field)))
        np.testing.assert_allclose(fs.Lr, fr.Lr, rtol=ROUNDING, atol=ROUNDING * np.abs(fr.Lr).max())
        np.testing.assert_allclose(fs.G.toarray(), fr.G.toarray(), atol=ROUNDING * max(1.0, abs(fr.G).max()))
        ss, sr = small.solve(theta, True), ref.solve(theta, True)
        np.testing.assert_allclose(ss.beta, sr.beta, rtol=ROUNDING, atol=ROUNDING * np.abs(sr.beta).max())
        for us, ur in zip(ss.b, sr.b, strict=True):
            np.testing.assert_allclose(us, ur, atol=ROUNDING * max(1.0, np.abs(ur).max()))
        np.testing.assert_allclose(ss.vcov_unscaled, sr.vcov_unscaled, rtol=1e-8)
        for vs, vr in zip(small.conditional_variances(ss), ref.conditional_variances(sr), strict=True):
            np.testing.assert_allclose(vs, vr, rtol=1e-8, atol=ROUNDING * np.abs(vr).max())

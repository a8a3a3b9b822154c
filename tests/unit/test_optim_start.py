"""MIVQUE0 starting values: exact on balanced designs, same optimum as lme4's identity start."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.optim.start import block_cross_products, minque_blocks, mivque0, variance_component_start


def test_mivque0_equals_anova_on_balanced_one_way():
    rng = np.random.default_rng(0)
    a, r = 12, 5
    g = np.repeat(np.arange(a), r)
    y = 3.0 + rng.normal(0, 2.0, a)[g] + rng.normal(0, 1.0, a * r)
    X = np.ones((a * r, 1))
    sig = mivque0(y, X, [g], [a], [np.ones(a * r)])
    means = np.bincount(g, y) / r
    msw = ((y - means[g]) ** 2).sum() / (a * (r - 1))
    msb = r * ((means - y.mean()) ** 2).sum() / (a - 1)
    np.testing.assert_allclose(sig, [msw, (msb - msw) / r], rtol=1e-10)


def test_mivque0_unbiased_for_crossed_design():
    # average over replicates approaches the true components (unbiasedness), a check that can fail
    rng = np.random.default_rng(1)
    ns, nd, n = 40, 15, 400
    s = rng.integers(0, ns, n)
    d = rng.integers(0, nd, n)
    s[:ns] = np.arange(ns)
    d[:nd] = np.arange(nd)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    est = []
    for _ in range(300):
        y = X @ [1.0, 0.5] + rng.normal(0, 0.7, ns)[s] + rng.normal(0, 1.2, nd)[d] + rng.normal(0, 1.0, n)
        est.append(mivque0(y, X, [s, d], [ns, nd], [np.ones(n), np.ones(n)]))
    np.testing.assert_allclose(np.mean(est, axis=0), [1.0, 0.49, 1.44], rtol=0.15)


def _crossed_frame(seed=2):
    rng = np.random.default_rng(seed)
    ns, nd, n = 60, 25, 700
    s = rng.integers(0, ns, n)
    d = rng.integers(0, nd, n)
    x = rng.normal(size=n)
    y = 1 + 0.3 * x + rng.normal(0, 0.5, ns)[s] + rng.normal(0, 0.9, nd)[d] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "s": s, "d": d})


@pytest.mark.parametrize("reml", [True, False])
def test_moment_start_reaches_the_identity_start_optimum(reml):
    model = memoe.lmm("y ~ x + (1 | s) + (1 | d)", _crossed_frame())
    fast = model.fit(reml=reml)
    assert variance_component_start(model.design) is not None
    assert not np.allclose(fast.opt.x0, 1.0)  # the moment start was used
    lme4_start = model.fit(reml=reml, start=np.ones(2))
    assert fast.deviance == pytest.approx(lme4_start.deviance, abs=1e-7)
    np.testing.assert_allclose(fast.theta, lme4_start.theta, rtol=1e-4, atol=1e-5)
    assert fast.opt.feval < lme4_start.opt.feval


def test_vector_block_start_for_one_factor_design_is_a_valid_theta():
    df = memoe.datasets.load("sleepstudy")
    model = memoe.lmm("Reaction ~ Days + (Days | Subject)", df)
    theta0, step = variance_component_start(model.design)
    assert theta0.shape == step.shape == (3,) and theta0[[0, 2]].min() > 0 and step.min() > 0
    assert np.isfinite(model.problem.deviance(theta0, True))


PIXEL = "pixel ~ day + I(day^2) + (day | Dog) + (1 | Side:Dog)"


def _blocks(design):
    tm = design.theta_map
    pairs = [[(int(a), int(b)) for a, b in zip(tm.row[tm.block == k], tm.col[tm.block == k], strict=True)]
             for k in range(len(design.blocks))]
    cross = block_cross_products(design.y, design.X, [b.factor.codes for b in design.blocks],
                                 [b.nlevels for b in design.blocks], [b.Z for b in design.blocks])
    return cross, [(b.q, b.nlevels) for b in design.blocks], pairs


def test_minque_blocks_without_prior_is_mivque0_for_scalar_blocks():
    df = _crossed_frame()
    d = memoe.lmm("y ~ x + (1 | s) + (1 | d)", df).design
    cross, sizes, pairs = _blocks(d)
    s2, G = minque_blocks(cross, d.n, d.p, sizes, pairs)
    ref = mivque0(d.y, d.X, [b.factor.codes for b in d.blocks], [b.nlevels for b in d.blocks],
                  [b.Z[:, 0] for b in d.blocks])
    # the same linear equations built two ways: agreement to their conditioning (~1e4) times eps
    np.testing.assert_allclose([s2, G[0][0, 0], G[1][0, 0]], ref, rtol=1e-9)


def test_minque_blocks_with_a_prior_matches_the_dense_n_by_n_equations():
    d = memoe.lmm(PIXEL, memoe.datasets.load("Pixel")).design
    cross, sizes, pairs = _blocks(d)
    prior = [np.array([[2.0]]), np.array([[9.0, -0.3], [-0.3, 0.03]])]
    s2, G = minque_blocks(cross, d.n, d.p, sizes, pairs, prior)
    # brute force: V_0, P and the MINQUE equations on the n x n matrices
    n = d.n
    E, Zk = [], []
    for b in d.blocks:
        cols = []
        for a in range(b.q):
            e = np.zeros((n, b.nlevels))
            e[np.arange(n), b.factor.codes] = b.Z[:, a]
            cols.append(e)
        E.append(cols)
        Zk.append(np.hstack(cols))
    V = np.eye(n) + sum(z @ np.kron(g, np.eye(b.nlevels)) @ z.T for z, g, b in zip(Zk, prior, d.blocks, strict=True))
    Vi = np.linalg.inv(V)
    ViX = Vi @ d.X
    P = Vi - ViX @ np.linalg.solve(d.X.T @ ViX, ViX.T)
    comps = [np.eye(n)]
    for k, pk in enumerate(pairs):
        for a, b in pk:
            comps.append(E[k][a] @ E[k][b].T + (E[k][b] @ E[k][a].T if a != b else 0))
    PV = [P @ v for v in comps]
    T = np.array([[np.vdot(pa, pb.T) for pb in PV] for pa in PV])
    rhs = np.array([d.y @ pv @ P @ d.y for pv in PV])
    ref = np.linalg.solve(T, rhs)
    got = [s2, G[0][0, 0], G[1][0, 0], G[1][1, 0], G[1][1, 1]]
    np.testing.assert_allclose(got, ref, rtol=1e-8)


def test_iterated_minque_converges_to_the_reml_optimum():
    model = memoe.lmm(PIXEL, memoe.datasets.load("Pixel"))
    d = model.design
    cross, sizes, pairs = _blocks(d)
    fit = model.fit(control={"optimizer": "bobyqa"})
    prior = None
    for _ in range(30):
        s2, G = minque_blocks(cross, d.n, d.p, sizes, pairs, prior)
        prior = [g / s2 for g in G]
    lam = [np.linalg.cholesky(g) for g in prior]
    theta = d.theta_map.theta_of(lam)
    # REML Fisher scoring's fixed point is the REML optimum; BOBYQA's stopping slack is ~1e-5 in theta
    np.testing.assert_allclose(theta, fit.theta.to_numpy(), rtol=2e-4, atol=2e-5)


def test_pixel_moment_start_same_optimum_fewer_evaluations():
    model = memoe.lmm(PIXEL, memoe.datasets.load("Pixel"))
    fast = model.fit()
    ident = model.fit(start=model.design.theta_map.initial())
    assert not np.allclose(fast.opt.x0, model.design.theta_map.initial())
    assert fast.opt.fmin <= ident.opt.fmin + 1e-10 * abs(ident.opt.fmin)
    assert fast.opt.feval < ident.opt.feval / 2


def test_vector_block_start_keeps_separate_terms_uncorrelated():
    rng = np.random.default_rng(5)
    df = _crossed_frame(3)
    df["t"] = rng.normal(size=len(df))
    df["y"] += rng.normal(0, 0.6, 60)[df["s"]] * df["t"]
    model = memoe.lmm("y ~ x + (1 | s) + (0 + t | s) + (1 | d)", df)
    theta0, _ = variance_component_start(model.design)
    assert theta0.shape == (model.design.theta_map.size,) and np.all(theta0 > 0)
    fast = model.fit()
    ident = model.fit(start=model.design.theta_map.initial())
    assert fast.opt.fmin <= ident.opt.fmin + 1e-10 * abs(ident.opt.fmin)

"""MIVQUE0 starting values: exact on balanced designs, same optimum as lme4's identity start."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.optim.start import mivque0, variance_component_start


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


def test_no_moment_start_for_vector_random_effects():
    df = memoe.datasets.load("sleepstudy")
    model = memoe.lmm("Reaction ~ Days + (Days | Subject)", df)
    assert variance_component_start(model.design) is None

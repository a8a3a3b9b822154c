"""The fit's result reuses the optimiser's factor at the optimum (issue 13, InstEval in 0.5 s).

On the dense crossed path the gradient evaluations offer their factor to the problem
(``PLSProblem.offer_factor``); the result at the accepted theta takes it instead of factoring again. Every
piece of the result (profiled beta, sigma, criterion, ``(R_X'R_X)^-1``, conditional modes, the factor itself,
conditional variances, logLik, vcov) must equal a fresh refactorisation at the same theta to rounding, with
the factor made serially or on two threads; a point that is not the kept one must never get it.
"""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.linalg import split_inverse
from memoe.lmm.gradient import deviance_and_gradient

from .test_lmm_gradient import _crossed, _random_theta

objective = importlib.import_module("memoe.lmm.objective")
gradient_mod = importlib.import_module("memoe.lmm.gradient")
# a solve and a few triangular products of factors of order ~100-400, condition ~1e3: far below this
ROUNDING = 1e-9


def _frame(seed: int, n: int = 4000) -> pd.DataFrame:
    """Crossed s x d (300 x 250 levels) plus an 8-level factor, as in InstEval's ``(1|s) + (1|d) + (1|dept)``."""
    rng = np.random.default_rng(seed)
    s, d, g = rng.integers(0, 300, n), rng.integers(0, 250, n), rng.integers(0, 8, n)
    s[:300], d[:250], g[:8] = np.arange(300), np.arange(250), np.arange(8)
    x = rng.normal(size=n)
    y = (3.0 + 0.5 * x + 0.8 * rng.normal(size=300)[s] + 0.5 * rng.normal(size=250)[d] + 0.3 * rng.normal(size=8)[g]
         + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "s": s.astype(str), "d": d.astype(str), "g": g.astype(str)})


def _close(a, b, what: str) -> None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
    assert a.shape == b.shape, what
    assert np.abs(a - b).max() <= ROUNDING * scale, f"{what}: {np.abs(a - b).max()} at scale {scale}"


def _fit_recording_hits(monkeypatch, df, reml: bool):
    hits = []
    take = objective.PLSProblem._take_factor

    def recording(self, theta):
        out = take(self, theta)
        hits.append(out is not None)
        return out

    monkeypatch.setattr(objective.PLSProblem, "_take_factor", recording)
    model = memoe.lmm("y ~ x + (1 | s) + (1 | d) + (1 | g)", df)
    fit = model.fit(reml=reml, control={"solver": "dense"})
    return model, fit, hits


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reml", [True, False])
def test_result_with_the_kept_factor_equals_a_fresh_refactorisation(monkeypatch, threads, reml):
    if threads == 2:
        if not split_inverse.split_available():
            pytest.skip("scipy exposes no LAPACK function pointers")
        # the two-thread factor and inverse on these small matrices too
        monkeypatch.setattr(split_inverse, "SPLIT_MIN_ORDER", 0)
        monkeypatch.setattr(split_inverse, "POTRF_BLOCK", 64)
    monkeypatch.setattr(gradient_mod, "split_workers", lambda: threads)
    model, fit, hits = _fit_recording_hits(monkeypatch, _frame(3), reml)
    pb = model.problem
    assert pb.solver == "dense" and fit.opt.optimizer == "projected BFGS"
    assert hits == [True], "the result did not reuse the optimiser's factor"
    assert pb._kept is None and pb._kept_spare is None  # released after the fit
    theta = np.asarray(fit.state.theta)
    kept = fit.state.solution
    # fresh: the whole factorisation again at the same theta (serial LAPACK)
    monkeypatch.setattr(objective, "split_workers", lambda: 1)
    fresh = pb.solve(theta, reml)
    for name in ("beta", "sigma", "deviance", "RX_inv_t"):
        _close(getattr(kept, name), getattr(fresh, name), name)
    for k, (a, b) in enumerate(zip(kept.u, fresh.u, strict=True)):
        _close(a, b, f"u[{k}]")
    for k, (a, b) in enumerate(zip(kept.b, fresh.b, strict=True)):
        _close(a, b, f"b[{k}]")
    fk, ff = kept.factor, fresh.factor
    _close(fk.Lr, ff.Lr, "Lr")
    assert np.all(np.triu(fk.Lr, 1) == 0.0)  # a lower-triangular factor, as np.tril gives it
    _close(fk.G.toarray(), ff.G.toarray(), "G")
    _close(fk.L1, ff.L1, "L1")
    _close(fk.C, ff.C, "C")
    for name in ("logdet_Z", "logdet_X", "pwrss"):
        _close(getattr(fk, name), getattr(ff, name), name)
    for k, (a, b) in enumerate(zip(pb.conditional_variances(kept), pb.conditional_variances(fresh), strict=True)):
        _close(a, b, f"condVar[{k}]")
    # what the result reports from them
    _close(fit.loglik, -0.5 * fresh.deviance, "logLik")
    _close(fit.vcov().to_numpy(), fresh.sigma**2 * fresh.vcov_unscaled, "vcov")
    # and the criterion is the optimiser's at that theta
    _close(kept.deviance, fit.opt.fmin, "criterion")


def test_offer_keeps_the_lowest_and_hands_it_over_once(monkeypatch):
    pb = _crossed([1, 1, 1], [60, 40, 8], seed=5)
    rng = np.random.default_rng(2)
    thetas = [_random_theta([1, 1, 1], rng) for _ in range(3)]
    devs = [deviance_and_gradient(pb, t, True)[0] for t in thetas]
    pb.forget_factor()
    order = np.argsort(devs)
    best, worst = thetas[order[0]], thetas[order[-1]]
    deviance_and_gradient(pb, best, True, keep="best")
    deviance_and_gradient(pb, worst, True, keep="best")  # higher criterion: not kept
    assert pb._take_factor(worst) is None
    kept = pb._take_factor(best)
    assert kept is not None
    assert pb._take_factor(best) is None  # handed over: the next solve factors afresh
    # "always" keeps a higher point; keep=None never offers
    deviance_and_gradient(pb, best, True, keep="best")
    deviance_and_gradient(pb, worst, True, keep="always")
    deviance_and_gradient(pb, thetas[order[1]], True)
    assert pb._take_factor(best) is None and pb._take_factor(thetas[order[1]]) is None
    assert pb._take_factor(worst) is not None
    # the kept copy is the factor at that theta, not the buffer the next evaluation overwrites
    deviance_and_gradient(pb, best, True, keep="always")
    deviance_and_gradient(pb, worst, True)
    sol_kept = pb.solve(best, True)
    pb.forget_factor()
    sol_fresh = pb.solve(best, True)
    _close(sol_kept.factor.Lr, sol_fresh.factor.Lr, "Lr")
    _close(sol_kept.beta, sol_fresh.beta, "beta")


def test_changing_the_problem_drops_the_kept_factor():
    pb = _crossed([1, 1], [60, 40], seed=8)
    theta = np.array([0.8, 0.5])
    deviance_and_gradient(pb, theta, True, keep="always")
    pb.set_solver("sparse" if objective.have_sparse_cholesky() else "matrix-free")
    assert pb._take_factor(theta) is None
    pb.set_solver("dense")
    deviance_and_gradient(pb, theta, True, keep="always")
    pb.forget_factor()
    assert pb._take_factor(theta) is None


# ------------------------------------------------------------------ value-difference start Hessian
def test_dense_value_equals_the_deviance_and_is_thread_safe(monkeypatch):
    from memoe.core.optim.checks import parallel_map
    from memoe.lmm.gradient import dense_value

    # serial LAPACK on the main thread too (a pooled evaluation always is): bit-for-bit comparison
    monkeypatch.setattr(gradient_mod, "split_workers", lambda: 1)

    pb = _crossed([1, 1, 1], [60, 40, 8], seed=9)
    rng = np.random.default_rng(5)
    thetas = [_random_theta([1, 1, 1], rng) for _ in range(6)]
    for reml in (True, False):
        ref = [pb.deviance(t, reml) for t in thetas]
        serial = [dense_value(pb, t, reml) for t in thetas]
        pooled = [None] * len(thetas)

        def run(i, reml=reml, pooled=pooled):
            pooled[i] = dense_value(pb, thetas[i], reml)

        parallel_map(run, range(len(thetas)), workers=2)
        _close(serial, ref, "dense_value")
        assert pooled == serial  # each evaluation is computed exactly as serially, on its thread's own buffer
    with pytest.raises(memoe.errors.MemoeError, match="dense path"):
        dense_value(memoe.lmm("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).problem,
                    [1.0, 0.0, 1.0], True)


def test_value_difference_hessian_matches_gradient_differences():
    from memoe.core.optim.checks import gradient_difference_hessian, value_difference_hessian

    pb = _crossed([1, 1, 1], [60, 40, 8], seed=12)
    x = np.array([0.7, 0.5, 0.3])
    f0, g0 = deviance_and_gradient(pb, x, True)
    Hv = value_difference_hessian(lambda z: pb.deviance(z, True), x, f0, g0, 1e-4)
    Hg = gradient_difference_hessian(lambda z: deviance_and_gradient(pb, z, True)[1], x, g0, delta=1e-4)
    # both carry an O(h) truncation of the third derivative (different stencils): ~1e-3 of the curvature at h = 1e-4
    assert np.abs(Hv - Hg).max() <= 2e-3 * np.abs(Hg).max()
    assert np.allclose(Hv, Hv.T)


def test_fit_starts_from_values_on_the_dense_path(monkeypatch):
    model_mod = importlib.import_module("memoe.lmm.model")
    calls = {"grad": 0, "value": 0}
    dg, dv = model_mod.deviance_and_gradient, model_mod.dense_value

    def count_grad(*a, **k):
        calls["grad"] += 1
        return dg(*a, **k)

    def count_value(*a, **k):
        calls["value"] += 1
        return dv(*a, **k)

    monkeypatch.setattr(model_mod, "deviance_and_gradient", count_grad)
    monkeypatch.setattr(model_mod, "dense_value", count_value)
    df = _frame(4)
    fit = memoe.lmm("y ~ x + (1 | s) + (1 | d) + (1 | g)", df).fit(control={"solver": "dense"})
    # k = 3 for the diagonal start Hessian of three variances (instead of 3 gradients), 3 or 6 more for the check's
    assert calls["value"] in (6, 9)
    assert fit.opt.feval >= 6 and fit.converged
    # the same optimum as BOBYQA's (lme4's optimiser)
    ref = memoe.lmm("y ~ x + (1 | s) + (1 | d) + (1 | g)", df).fit(control={"solver": "dense", "optimizer": "bobyqa"})
    assert fit.opt.fmin <= ref.opt.fmin + 1e-8 * abs(ref.opt.fmin)


def _fill_bound_bmat(pb) -> int:
    """The fill bound as first written: components of the symmetric bipartite graph built by sp.bmat."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    rest = pb.rest
    graph = sp.bmat([[None, rest.Z1tZr], [rest.Z1tZr.T, rest.ZrtZr]], format="csr")
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels[rest.Z1tZr.shape[0]:]).astype(np.int64)
    return int((sizes * (sizes + 1) // 2).sum())


@pytest.mark.parametrize("nested", [False, True])
def test_fill_bound_from_stacked_csr_equals_the_symmetric_graph(nested):
    rng = np.random.default_rng(21)
    n = 3000
    if nested:
        # (1 | cask) + (1 | batch) with casks nested in batches: many small components
        cask = rng.integers(0, 600, n)
        batch = cask // 6
        codes = {"a": cask, "b": batch, "c": (cask * 7) % 11 + 100 * (batch // 20)}
    else:
        codes = {"a": rng.integers(0, 400, n), "b": rng.integers(0, 300, n), "c": rng.integers(0, 9, n)}
    df = pd.DataFrame({k: v.astype(str) for k, v in codes.items()})
    df["y"] = rng.normal(size=n)
    pb = memoe.lmm("y ~ 1 + (1 | a) + (1 | b) + (1 | c)", df).problem
    pb.set_solver("dense")
    assert pb._fill_bound() == _fill_bound_bmat(pb)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_value_difference_hessian_with_a_secant_recovers_a_quadratic(k):
    from memoe.core.optim.checks import value_difference_hessian

    rng = np.random.default_rng(k)
    A = rng.normal(size=(k, k))
    A = A @ A.T + k * np.eye(k)
    b = rng.normal(size=k)

    def f(x):
        return 1e3 + float(b @ x + 0.5 * x @ A @ x)

    x = rng.uniform(0.5, 1.5, size=k)
    g = b + A @ x
    s = np.full(k, 1e-6)
    s[k - 1] = 1.5e-4  # mostly along the last coordinate, as the optimiser's last step
    y = A @ s  # exact for a quadratic
    calls = []

    def counted(z):
        calls.append(z)
        return f(z)

    H = value_difference_hessian(counted, x, f(x), g, 1e-4, secant=(s, y), workers=2)
    assert len(calls) == (k - 1) * k // 2  # the secant's direction needs no value
    # second value differences of ~1e3 at h = 1e-4: rounding ~eps 1e3 / h^2 ~ 2e-5 per entry
    np.testing.assert_allclose(H, A, rtol=0, atol=1e-3 * np.abs(A).max())
    assert np.array_equal(H, H.T)
    # without the secant: all k (k + 1) / 2 points
    calls.clear()
    H2 = value_difference_hessian(counted, x, f(x), g, 1e-4)
    assert len(calls) == k * (k + 1) // 2
    np.testing.assert_allclose(H2, A, rtol=0, atol=1e-3 * np.abs(A).max())


def test_check_hessian_from_values_matches_gradient_differences():
    from memoe.core.optim.checks import gradient_difference_hessian

    df = _frame(6)
    for reml in (True, False):
        model = memoe.lmm("y ~ x + (1 | s) + (1 | d) + (1 | g)", df)
        fit = model.fit(reml=reml, control={"solver": "dense"})
        pb, theta = model.problem, np.asarray(fit.state.theta)
        g = deviance_and_gradient(pb, theta, reml)[1]
        full = gradient_difference_hessian(lambda x, pb=pb, reml=reml: deviance_and_gradient(pb, x, reml)[1], theta, g,
                                           delta=1e-4)
        # both forward differences of step 1e-4 (O(h) truncation of different stencils)
        np.testing.assert_allclose(fit.convergence.hessian, full, rtol=0, atol=5e-3 * np.abs(full).max())
        assert fit.converged and fit.convergence.messages == []


def test_value_difference_hessian_diagonal_only():
    from memoe.core.optim.checks import value_difference_hessian

    A = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])
    calls = []

    def f(x):
        calls.append(x)
        return float(0.5 * x @ A @ x)

    x = np.array([1.0, 0.5, 0.2])
    H = value_difference_hessian(f, x, f(x), A @ x, 1e-4, diagonal=True, secant=(np.full(3, 1e-4), np.ones(3)))
    assert len(calls) == 1 + 3  # f(x) and one value per coordinate; the secant is ignored
    np.testing.assert_allclose(H, np.diag(np.diag(A)), rtol=0, atol=1e-6)


def test_scalar_map_equals_the_general_enumeration(monkeypatch):
    """q1 = 1: the one-pass map (int32 positions marked by chunk) equals the general path bit for bit."""
    from memoe.core.linalg import crossed

    from .test_crossed_map import _design

    rng = np.random.default_rng(31)
    for levels, weights in (((60, 25, 7), True), ((40, 30), False), ((1, 15), False)):
        Z1tZr, ZrtZr, Zr, _, _ = _design(rng, 700, levels, 1, weights)
        mz = Zr.shape[1]
        args = (Z1tZr, ZrtZr, np.zeros((mz, 2)), levels[0], 1, [1] * (len(levels) - 1), list(levels[1:]))
        monkeypatch.setattr(crossed, "PAIR_CHUNK", 13)  # entries split across steps
        new = crossed.RestSchur(*args)
        assert new.P is not None
        monkeypatch.setattr(crossed, "MARK_MAX", 0)  # the general path (_level_pairs, np.unique)
        old = crossed.RestSchur(*args)
        monkeypatch.setattr(crossed, "MARK_MAX", 16_000_000)
        assert np.array_equal(new.pos, old.pos)
        assert np.array_equal(new.P.indptr, old.P.indptr) and np.array_equal(new.P.indices, old.P.indices)
        assert np.array_equal(new.P.data, old.P.data)
        assert crossed.RestSchur(*args, max_nnz=5).P is None


def test_first_block_cache_gives_the_uncached_values(monkeypatch):
    """Points sharing lambda_1 reuse the first block's pieces and H: the same criterion and gradient bit for bit
    as a problem without the cache, in any order, and the cached pieces are not modified by their users."""
    from memoe.lmm.gradient import dense_value

    # serial LAPACK and map products throughout (bit-for-bit comparison; the threaded ones differ in rounding)
    monkeypatch.setattr(gradient_mod, "split_workers", lambda: 1)

    pb = _crossed([1, 1, 1], [60, 40, 8], seed=14)
    fresh = _crossed([1, 1, 1], [60, 40, 8], seed=14)
    x = np.array([0.8, 0.6, 0.4])
    pts = [x + np.array(e) for e in ([0, 0, 0], [0, 1e-4, 0], [1e-4, 0, 0], [0, 0, 1e-4], [0, 0, 0], [0, 1e-4, 1e-4])]
    for reml in (True, False):
        for p in pts:
            d1, g1 = deviance_and_gradient(pb, p, reml)
            v1 = dense_value(pb, p, reml)
            fresh.forget_factor()
            d2, g2 = deviance_and_gradient(fresh, p, reml)
            fresh.forget_factor()
            v2 = dense_value(fresh, p, reml)
            assert d1 == d2 and np.array_equal(g1, g2) and v1 == v2 == d1
    assert len(pb._first_cache) <= 2
    pb.forget_factor()
    assert "_first_cache" not in pb.__dict__

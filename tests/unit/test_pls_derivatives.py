"""PLSProblem's ML derivatives (issue 12): gradient, expected Hessian, profiled beta/sigma, per-level log-likelihood."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from memoe.core.design.scaling import choose_scaling
from memoe.errors import MemoeError
from memoe.lmm.objective import PLSProblem

from .test_pls import _theta_map

# closed-form pipelines on well-conditioned 2 x 2 and 4 x 4 systems: round-off of a few hundred ulps
ROUND = 1e-10


def _problem(q: int, scaled: bool, seed: int = 0, nlev: int = 60):
    rng = np.random.default_rng(seed)
    n_i = rng.integers(2, 8, size=nlev)
    codes = np.repeat(np.arange(nlev), n_i)
    n = len(codes)
    t = rng.uniform(0, 3, size=n)
    X = np.column_stack([np.ones(n), t, rng.normal(size=n)])
    Z = np.column_stack([np.ones(n), t, t**2][:q])
    b = rng.normal(size=(nlev, q)) * np.array([1.0, 0.4, 0.1][:q])
    y = X @ np.array([5.0, 1.0, -0.5]) + (Z * b[codes]).sum(axis=1) + 0.7 * rng.normal(size=n)
    if scaled:
        y = 1e3 + 50.0 * y
    scaling = choose_scaling(X, y, force=True) if scaled else None
    pls = PLSProblem(y, X, [codes], [nlev], [Z], _theta_map([q]), scaling=scaling)
    return pls, (y, X, Z, codes, nlev)


def _theta(q: int, rng) -> np.ndarray:
    lam = np.tril(rng.normal(size=(q, q)) * 0.5)
    lam[np.diag_indices(q)] = np.abs(lam[np.diag_indices(q)]) + 0.2
    return np.array([lam[r, c] for c in range(q) for r in range(c, q)])


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("q", [1, 2, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_matches_finite_differences(q, scaled, weighted):
    pls, _ = _problem(q, scaled, seed=q)
    rng = np.random.default_rng(10 + q)
    if weighted:
        pls.set_group_weights(rng.uniform(0.05, 1.0, size=pls.nlevels[0]))
    theta = _theta(q, rng)
    dev, grad = pls.deviance_and_gradient(theta)
    assert dev == pytest.approx(pls.deviance(theta, False), rel=ROUND)
    # central differences: truncation O(h^2 f''') and round-off O(eps |f| / h), about 1e-6 relative here
    h = 1e-5
    fd = np.array([(pls.deviance(theta + h * e, False) - pls.deviance(theta - h * e, False)) / (2 * h)
                   for e in np.eye(len(theta))])
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-5 * max(1.0, np.abs(fd).max()))


@pytest.mark.parametrize("q", [1, 2])
def test_expected_hessian_close_to_observed_at_the_optimum_and_profiled_estimates(q):
    pls, _ = _problem(q, scaled=True, seed=3, nlev=400)
    pls.set_group_weights(np.random.default_rng(4).uniform(0.2, 1.0, size=400))
    from scipy.optimize import minimize

    res = minimize(pls.deviance_and_gradient, _theta(q, np.random.default_rng(1)), jac=True, method="BFGS",
                   options={"gtol": 1e-8})
    f = pls.ml_factor(res.x)
    d = pls.ml_derivatives(f)
    h = 1e-5
    Hfd = np.column_stack([(pls.deviance_and_gradient(res.x + h * e)[1] - pls.deviance_and_gradient(res.x - h * e)[1])
                           / (2 * h) for e in np.eye(len(res.x))])
    # expected and observed information differ by O(1/sqrt(levels)) relative at the optimum
    np.testing.assert_allclose(d.hessian, Hfd, rtol=0, atol=0.15 * np.abs(Hfd).max())
    assert np.all(np.linalg.eigvalsh(d.hessian) > 0)
    sol = pls.solve(res.x, reml=False)
    np.testing.assert_allclose(d.beta, sol.beta, rtol=ROUND, atol=ROUND * np.abs(sol.beta).max())
    assert d.sigma == pytest.approx(sol.sigma, rel=ROUND)


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("q", [1, 2, 3])
def test_level_loglik_matches_dense_normal(q, scaled):
    pls, (y, X, Z, codes, nlev) = _problem(q, scaled, seed=7 + q, nlev=25)
    rng = np.random.default_rng(q)
    lam = np.tril(rng.normal(size=(q, q)) * 0.5) + 0.3 * np.eye(q)
    beta, sigma = np.array([4.0, 0.5, -1.0]) * (50.0 if scaled else 1.0), 0.8 * (50.0 if scaled else 1.0)
    got = pls.level_loglik(lam, beta, sigma)
    G = sigma**2 * lam @ lam.T
    want = np.array([
        multivariate_normal(X[codes == j] @ beta, Z[codes == j] @ G @ Z[codes == j].T
                            + sigma**2 * np.eye(int((codes == j).sum()))).logpdf(y[codes == j])
        for j in range(nlev)
    ])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)


def test_derivatives_refuse_several_grouping_factors():
    rng = np.random.default_rng(0)
    n = 40
    codes = [rng.integers(0, 8, size=n), rng.integers(0, 5, size=n)]
    X = np.ones((n, 1))
    pls = PLSProblem(rng.normal(size=n), X, codes, [8, 5], [np.ones((n, 1)), np.ones((n, 1))], _theta_map([1, 1]))
    with pytest.raises(MemoeError, match="single grouping factor"):
        pls.ml_factor(np.array([1.0, 1.0]))
    with pytest.raises(MemoeError, match="single grouping factor"):
        pls.level_loglik(np.eye(1), np.zeros(1), 1.0)

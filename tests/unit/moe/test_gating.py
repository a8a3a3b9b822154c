"""The gate: weighted multinomial logit by Newton, and recovery of gating coefficients by MEMoE."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import softmax

import memoe
from memoe.errors import DataError
from memoe.moe.gating import gate_log_probs, gate_newton, gate_objective

from .conftest import FORMULA, GATING


def _multinomial(N, gamma, rng):
    W = np.column_stack([np.ones(N), rng.normal(size=N), rng.binomial(1, 0.5, N)])
    P = softmax(W @ gamma.T, axis=1)
    z = (rng.uniform(size=N)[:, None] > np.cumsum(P, axis=1)).sum(axis=1)
    return W, np.eye(gamma.shape[0])[np.minimum(z, gamma.shape[0] - 1)]


def test_newton_recovers_coefficients_on_a_large_sample():
    gamma = np.array([[0.0, 0.0, 0.0], [-0.5, 1.0, 0.7], [0.3, -0.8, 0.5]])
    W, Y = _multinomial(40_000, gamma, np.random.default_rng(1))
    est = gate_newton(W, Y, np.zeros_like(gamma))
    np.testing.assert_allclose(est, gamma, atol=0.06)
    # first-order conditions: W'(y_k - pi_k) = 0 for the free experts
    pi = np.exp(gate_log_probs(W, est))
    assert np.abs(W.T @ (Y - pi)[:, 1:]).max() < 1e-6 * len(W)


def test_soft_targets_match_a_generic_optimiser():
    rng = np.random.default_rng(2)
    W = np.column_stack([np.ones(50), rng.normal(size=50)])
    tau = rng.dirichlet(np.ones(3), size=50)
    est = gate_newton(W, tau, np.zeros((3, 2)))

    def negq(x):
        return -gate_objective(W, tau, np.vstack([np.zeros(2), x.reshape(2, 2)]))

    ref = minimize(negq, np.zeros(4), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(est[1:].ravel(), ref, atol=1e-5)
    # move only the non-reference rows: shifting every row alike leaves the softmax unchanged, and the
    # comparison was then decided by rounding (failed with OPENBLAS_CORETYPE=Haswell)
    bump = np.zeros_like(est)
    bump[1:] = 0.01
    assert gate_objective(W, tau, est) > gate_objective(W, tau, est + bump)


def test_newton_never_decreases_the_objective_under_separation():
    W = np.column_stack([np.ones(40), np.r_[-np.ones(20), np.ones(20)]])
    Y = np.column_stack([W[:, 1] < 0, W[:, 1] > 0]).astype(float)
    g0 = np.zeros((2, 2))
    est = gate_newton(W, Y, g0)
    assert np.all(np.isfinite(est))
    assert gate_objective(W, Y, est) > gate_objective(W, Y, g0)


def test_memoe_recovers_gating_on_a_large_sample():
    data, truth = memoe.simulate.memoe_data(2500, k=2, visits=(5, 8), seed=12)
    fit = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=data).fit(n_starts=2, seed=1, progress=False)
    tab = fit.coef_table(robust="sandwich").loc[["gating[2]:(Intercept)", "gating[2]:w1", "gating[2]:w2"]]
    true = np.array(truth["gamma"][1])
    est = tab["estimate"].to_numpy()
    se = tab["std_error"].to_numpy()
    assert np.all(np.abs(est - true) < 4 * se), (est, true, se)
    assert np.all(se < 0.15)


def test_gating_covariate_varying_within_subject_is_rejected(sim2):
    bad = sim2.copy()
    bad.loc[bad.index[3], "w1"] = 99.0
    subject = bad.loc[bad.index[3], "id"]
    with pytest.raises(DataError, match=rf"'w1'.*subject {subject}"):
        memoe.MEMoE(FORMULA, gating=GATING, k=2, data=bad)


def test_constant_proportions_without_gating(sim2):
    fit = memoe.MEMoE(FORMULA, gating=None, k=2, data=sim2).fit(n_starts=2, seed=1, progress=False)
    prior = fit.prior.to_numpy()
    assert np.allclose(prior, prior[0])
    # the ML class proportions are the mean posterior probabilities
    np.testing.assert_allclose(prior[0], fit.posterior.mean().to_numpy(), atol=1e-5)
    assert fit.npar == 15

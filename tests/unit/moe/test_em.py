"""EM: monotone log-likelihood, analytic scores against finite differences, sandwich, empty experts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import memoe
from memoe.errors import EmptyExpertWarning
from memoe.moe.em import EMControl, run_em
from memoe.moe.inference import _jacobian
from memoe.moe.init import random_tau
from memoe.moe.multistart import MultiStartControl

from .conftest import FORMULA, GATING

STRUCTURES = [
    {},
    {"random_cov": "common", "sigma": "common", "mixture": "~ time"},
    {"random_cov": "proportional"},
]


@pytest.mark.parametrize("options", STRUCTURES)
def test_em_loglik_never_decreases(options, small3):
    data, _ = small3
    model = memoe.MEMoE(FORMULA, gating=GATING, k=3, data=data, **options)
    prob = model.problem
    for seed in (1, 2) if not options else (1,):
        tau = random_tau(prob.N, 3, np.random.default_rng(seed))
        run = run_em(prob, prob.initial_params(tau), EMControl(max_iter=40))
        trace = np.array(run.trace)
        assert len(trace) > 5
        assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:])), np.diff(trace).min()


@pytest.mark.parametrize("options", [*STRUCTURES, {"gating": None}])
def test_subject_scores_match_finite_differences(options, small3):
    data, _ = small3
    opts = dict(options)
    gating = opts.pop("gating", GATING)
    model = memoe.MEMoE(FORMULA, gating=gating, k=3, data=data, **opts)
    prob, st = model.problem, model.structure
    tau = random_tau(prob.N, 3, np.random.default_rng(3))
    run = run_em(prob, prob.initial_params(tau), EMControl(max_iter=5))
    psi = st.pack(run.params)
    S = prob.subject_scores(run.params)
    S_fd = _jacobian(lambda x: prob.e_step(st.unpack(x)).subject_loglik, psi, 1e-6)
    assert S.shape == (prob.N, st.size)
    np.testing.assert_allclose(S, S_fd, atol=1e-5 * max(1.0, np.abs(S).max()))


def test_sandwich_matches_finite_difference_scores(sim2_fit):
    fit = sim2_fit
    prob, st = fit.model.problem, fit.model.structure
    inf = fit.inference
    psi = inf.psi
    S_fd = _jacobian(lambda x: prob.e_step(st.unpack(x)).subject_loglik, psi, 1e-6)
    B_fd = S_fd.T @ S_fd
    np.testing.assert_allclose(inf.meat, B_fd, rtol=1e-5, atol=1e-6 * np.abs(B_fd).max())
    Ainv = inf.vcov_model
    np.testing.assert_allclose(inf.vcov_robust, Ainv @ B_fd @ Ainv, rtol=1e-4, atol=1e-10)
    # the observed information is the negative Hessian of the log-likelihood: check it against
    # second differences of the log-likelihood itself
    H_fd = _jacobian(lambda x: _jacobian(lambda z: np.atleast_1d(prob.loglik_psi(z)), x, 1e-4)[0], psi, 1e-4)
    np.testing.assert_allclose(inf.information, -(H_fd + H_fd.T) / 2, rtol=2e-3, atol=1e-2)
    assert np.all(np.linalg.eigvalsh(inf.information) > 0)
    assert inf.score_norm < 1e-2


def test_empty_expert_is_reported(sim2):
    model = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=sim2)
    prob = model.problem
    tau = np.column_stack([np.ones(prob.N), np.zeros(prob.N)])
    tau[:1] = [0.0, 1.0]
    run = run_em(prob, prob.initial_params(np.clip(tau, 1e-9, None)), EMControl(max_iter=20))
    assert run.empty == [1]
    ctl = MultiStartControl(em=EMControl(min_mass=10_000))
    with pytest.warns(EmptyExpertWarning, match="lost an expert"):
        fit = model.fit(n_starts=2, seed=1, control=ctl, progress=False, se=False)
    assert fit.empty_experts
    assert fit.n_empty_starts == 2


def test_fit_is_deterministic_given_seed(sim2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=sim2).fit(n_starts=3, seed=7, progress=False, se=False)
        b = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=sim2).fit(n_starts=3, seed=7, progress=False, se=False)
    assert a.loglik == b.loglik
    np.testing.assert_array_equal(a.estimates.beta, b.estimates.beta)
    assert a.starts["strategy"].tolist() == ["kmeans", "random", "random"]

"""Issue 12 (speed): entry-wise small-matrix kernels and pruning of dominated exploratory starts."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest

import memoe
from memoe.moe.em import EMControl, run_em
from memoe.moe.init import kmeans_tau, two_stage_features
from memoe.moe.kernels import colmv, congruence, right_const
from memoe.moe.multistart import PRUNE_MIN_ITER, MultiStartControl, _dominated

from .conftest import FORMULA, GATING

# entries are O(1) sums of a few O(1) products: round-off of a few ulps
TOL = 1e-12


@pytest.mark.parametrize("q", [1, 2, 3, 4, 6])
def test_congruence_matches_einsum_with_triangular_zeros(q):
    rng = np.random.default_rng(q)
    A = rng.normal(size=(40, q, q))
    lam = np.tril(rng.normal(size=(q, q)))
    lam[-1, 0] = 0.0  # a structural zero the loops skip
    np.testing.assert_allclose(congruence(A, lam), np.einsum("ai,nab,bj->nij", lam, A, lam), rtol=0, atol=TOL)


@pytest.mark.parametrize(("a", "k", "b"), [(3, 2, 2), (1, 3, 1), (2, 5, 3), (3, 0, 2)])
def test_right_const_and_colmv_match_matmul(a, k, b):
    rng = np.random.default_rng(a + k + b)
    A, M, v = rng.normal(size=(30, a, k)), rng.normal(size=(k, b)), rng.normal(size=k)
    np.testing.assert_allclose(right_const(A, M), A @ M, rtol=0, atol=TOL)
    np.testing.assert_allclose(colmv(A[:, 0, :], v), A[:, 0, :] @ v, rtol=0, atol=TOL)


def _runs(*lls):
    return [types.SimpleNamespace(loglik=ll, empty=[]) for ll in lls]


def test_dominated_rule():
    done = _runs(-100.0, -105.0, -110.0)
    slow = [-200.0, -190.0, -185.0, -184.0]  # last increases 5 and 1: projected -184 + 4 * 5 * 6 = -64
    assert not _dominated(3, slow, done, 3, 10)
    flat = [-200.0, -199.0, -198.5, -198.4]  # projected -198.4 + 4 * 0.5 * 6 = -186.4 < -110
    assert _dominated(3, flat, done, 3, 10)
    assert not _dominated(PRUNE_MIN_ITER - 1, flat, done, 3, 10)  # too early to judge
    assert not _dominated(3, flat, done[:2], 3, 10)  # fewer finished runs than are continued
    assert not _dominated(3, flat, _runs(-100.0, -105.0, -300.0), 3, 10)  # beats the 3rd best


def test_run_em_stop_callback(small3):
    data, _ = small3
    prob = memoe.MEMoE(FORMULA, gating=GATING, k=3, data=data).problem
    tau = kmeans_tau(two_stage_features(prob.expert.stats), 3, np.random.default_rng(1))
    run = run_em(prob, prob.initial_params(tau), EMControl(max_iter=50, tol=0.0, tol_par=0.0),
                 stop=lambda it, trace: it == 2)
    assert run.stopped and run.n_iter == 2 and len(run.trace) == 3
    assert run.loglik == pytest.approx(run.trace[-1])


def test_pruning_keeps_the_optimum(small3):
    data, _ = small3
    model = memoe.MEMoE(FORMULA, gating=GATING, k=3, data=data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on = model.fit(n_starts=10, seed=3, progress=False, se=False, control=MultiStartControl(prune=True))
        off = model.fit(n_starts=10, seed=3, progress=False, se=False, control=MultiStartControl(prune=False))
    assert not off.starts["pruned"].any()
    # the continued runs reach the same maximum (both polished to a score of order 1e-5 per subject)
    assert on.loglik == pytest.approx(off.loglik, abs=1e-4)
    assert on.starts["n_iter"].sum() <= off.starts["n_iter"].sum()


def test_prune_flag_validated():
    with pytest.raises(memoe.errors.MemoeError, match="prune"):
        MultiStartControl(prune="yes")


# ---------------------------------------------------------------- Fisher-scoring M-step
def _mstep_case(small3, k=0):
    data, _ = small3
    prob = memoe.MEMoE(FORMULA, gating=GATING, k=3, data=data).problem
    tau = kmeans_tau(two_stage_features(prob.expert.stats), 3, np.random.default_rng(1))
    params = prob.initial_params(tau)
    return prob, tau[:, k], prob.expert_params(params, k)


def _weighted_q(prob, w, th):
    return float(w @ prob.expert.subject_loglik(th))


def test_fisher_mstep_reaches_the_bobyqa_optimum(small3):
    from memoe.moe.experts import MStepControl

    prob, w, start = _mstep_case(small3)
    tight = dict(maxeval=100_000, ftol_abs=1e-12, xtol_abs=1e-10)
    a = prob.expert.m_step(w, start, None, MStepControl(optimizer="fisher", **tight))
    b = prob.expert.m_step(w, start, None, MStepControl(optimizer="bobyqa", **tight))
    qa, qb = _weighted_q(prob, w, a), _weighted_q(prob, w, b)
    # both at the maximum of sum_i w_i l_i: equal to far below the optimisers' tolerance on -2 Q
    assert qa == pytest.approx(qb, rel=1e-10, abs=1e-8)
    assert qa >= qb - 1e-8
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.L, b.L, rtol=1e-4, atol=1e-5)
    assert a.sigma == pytest.approx(b.sigma, rel=1e-5)
    assert np.all(np.diag(a.L) >= 0)


def test_single_fisher_step_never_decreases_q(small3):
    from memoe.moe.experts import MStepControl

    for k in range(3):
        prob, w, start = _mstep_case(small3, k)
        # a poor start (far from the weighted optimum) and a negative diagonal entry of L
        bad = type(start)(beta=start.beta, L=np.array([[-2.0, 0.0], [0.5, 0.05]]), sigma=start.sigma * 2.0)
        q0 = _weighted_q(prob, w, bad)
        new = prob.expert.m_step(w, bad, None, MStepControl(maxeval=2))
        assert _weighted_q(prob, w, new) >= q0
        assert np.all(np.diag(new.L) >= 0)


def test_mstep_optimizer_validated():
    from memoe.moe.experts import MStepControl

    with pytest.raises(memoe.errors.MemoeError, match=r"MStepControl.optimizer must be one of .*'nelder'"):
        MStepControl(optimizer="nelder")


def test_fisher_and_bobyqa_fits_reach_the_same_maximum(small3):
    from memoe.moe.experts import MStepControl

    data, _ = small3
    fits = {}
    for opt in ("fisher", "bobyqa"):
        model = memoe.MEMoE(FORMULA, gating=GATING, k=3, data=data, mstep=MStepControl(optimizer=opt))
        ctl = MultiStartControl(short_mstep=MStepControl(optimizer=opt, maxeval=2 if opt == "fisher" else 20,
                                                         ftol_abs=1e-6, xtol_abs=1e-4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[opt] = model.fit(n_starts=6, seed=2, progress=False, se=False, control=ctl)
    # both polished to a score of order 1e-5 per subject
    assert fits["fisher"].loglik == pytest.approx(fits["bobyqa"].loglik, abs=1e-4)

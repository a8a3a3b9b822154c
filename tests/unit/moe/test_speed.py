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

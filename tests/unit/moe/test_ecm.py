"""Closed-form ECM (memoe.moe.ecm): monotone, converges to the in-memory EM's maximum."""

from __future__ import annotations

import numpy as np
import pytest

import memoe
from memoe.errors import ArgumentError
from memoe.moe.ecm import EcmLayout, ecm_step, ecm_sums, newton_finish


@pytest.fixture(scope="module")
def model_and_fit():
    df, _ = memoe.simulate.memoe_data(150, k=2, seed=5)
    m = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=df)
    return m, m.fit(n_starts=4, seed=1, progress=False)


@pytest.mark.parametrize("random_cov,sigma", [("class", "class"), ("common", "common")])
def test_one_ecm_step_never_lowers_loglik(random_cov, sigma):
    df, _ = memoe.simulate.memoe_data(120, k=2, seed=7)
    m = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=df, random_cov=random_cov,
                    sigma=sigma, mixture="~ time")
    st = m.structure
    rng = np.random.default_rng(0)
    base = m.problem.initial_params(rng.dirichlet(np.ones(2), size=m.n_subjects))
    for _ in range(6):  # starts away from the maximum, including bad gates and variances
        psi = st.pack(base) + rng.normal(0, 0.5, st.size)
        p = st.unpack(psi)
        ll_prev = None
        for _it in range(8):
            p, ll = ecm_step(m.problem, p)
            if ll_prev is not None:
                # round-off of a sum of ~1e3 log-likelihood terms
                assert ll >= ll_prev - 1e-9 * (1 + abs(ll)), (ll, ll_prev)
            ll_prev = ll


def test_ecm_reaches_the_em_maximum(model_and_fit):
    m, fit = model_and_fit
    st = m.structure
    p = st.unpack(st.pack(fit.estimates) + 0.05)
    for _ in range(300):
        p, ll = ecm_step(m.problem, p)
    p, ll, _ = newton_finish(m.problem, p)
    ref, ll_ref, _ = newton_finish(m.problem, fit.estimates)
    assert abs(ll - ll_ref) < 1e-8 * abs(ll_ref)
    scale = np.abs(st.pack(ref)) + 1e-2
    assert np.max(np.abs(st.pack(p) - st.pack(ref)) / scale) < 1e-6
    # Newton from the EM solution only increases the log-likelihood
    assert ll_ref >= fit.loglik - 1e-9 * abs(fit.loglik)


def test_sums_are_additive_over_subject_subsets(model_and_fit):
    """The reduction's premise: sums over two halves of the subjects add up to the sums over all."""
    m, fit = model_and_fit
    pr = m.problem
    p = fit.estimates
    e = pr.e_step(p)
    full = ecm_sums(pr.expert, pr.W, p, e.tau, e.log_gate, e.subject_loglik)
    from memoe.moe.data import SubjectStats
    from memoe.moe.experts import GaussianExpert

    st = pr.expert.stats
    halves = []
    for idx in (np.arange(0, st.N, 2), np.arange(1, st.N, 2)):
        sub = SubjectStats(*(getattr(st, f)[idx] for f in ("n", "XX", "ZX", "ZZ", "Xy", "Zy", "yy")))
        ex = GaussianExpert(sub, None, None)
        halves.append(ecm_sums(ex, pr.W[idx], p, e.tau[idx], e.log_gate[idx], e.subject_loglik[idx]))
    lay = EcmLayout(2, st.p, st.q, pr.W.shape[1])
    assert full.shape == (lay.size,)
    np.testing.assert_allclose(halves[0] + halves[1], full, rtol=1e-12, atol=1e-9)


def test_proportional_covariance_refused():
    df, _ = memoe.simulate.memoe_data(60, k=2, seed=2)
    m = memoe.MEMoE("y ~ time + (time | id)", gating="~ w1", k=2, data=df, random_cov="proportional")
    tau = np.random.default_rng(1).dirichlet(np.ones(2), size=m.n_subjects)
    with pytest.raises(ArgumentError, match="proportional"):
        ecm_step(m.problem, m.problem.initial_params(tau))

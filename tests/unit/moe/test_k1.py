"""K = 1 MEMoE is the single LMM fitted by maximum likelihood."""

from __future__ import annotations

import numpy as np
import pytest

import memoe
from memoe.lmm.result import LmmResult
from tests.tolerances import OptimumSlack

from .conftest import FORMULA


@pytest.mark.parametrize(
    ("formula", "dataset"),
    [
        (FORMULA, "sim2"),
        ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
        ("Reaction ~ Days + (1 | Subject)", "sleepstudy"),
    ],
)
def test_k1_equals_ml_lmm(formula, dataset, sim2):
    data = sim2 if dataset == "sim2" else memoe.datasets.load("sleepstudy")
    lmm = memoe.lmm(formula, data).fit(reml=False, warn=False)
    fit = memoe.MEMoE(formula, gating=None, k=1, data=data).fit(progress=False)
    assert abs(fit.loglik - lmm.loglik) < 1e-8
    np.testing.assert_allclose(fit.estimates.beta[0], lmm.fixef.to_numpy(), atol=1e-6)
    assert abs(fit.estimates.sigma[0] - lmm.sigma) < 1e-6 * max(1.0, lmm.sigma)
    G = fit.estimates.G[0]
    G_lmm = lmm.term_covariances()[0]
    # the likelihood is flat along the covariance: with both logliks within 1e-8 of the optimum (asserted
    # above), G can move by sqrt(2 delta g' H^-1 g) (tests/tolerances.py); a fixed 1e-6 failed on another
    # BLAS kernel (OPENBLAS_CORETYPE=Sandybridge: 1.1e-6)
    slack = OptimumSlack(lmm.model.objective(reml=False), lmm.state.theta, 2 * 2e-8, lmm.design.theta_map.lower_bounds)

    def cov_at(theta):
        return LmmResult(lmm.model, False, theta, lmm.opt, lmm.convergence, lmm.singular, []).term_covariances()[0]

    allowed = slack.of(cov_at) + 1e-9 * np.abs(G_lmm).max()
    assert np.all(np.abs(G - G_lmm) <= allowed), (G - G_lmm, allowed)
    assert fit.npar == lmm.df_model
    # a gate has nothing to route with one expert: gating covariates change nothing
    if dataset == "sim2":
        fit_g = memoe.MEMoE(formula, gating="~ w1 + w2", k=1, data=data).fit(progress=False)
        assert abs(fit_g.loglik - lmm.loglik) < 1e-8

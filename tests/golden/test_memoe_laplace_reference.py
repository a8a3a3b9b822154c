"""Golden tests: a K = 1 MEMoE with Poisson experts is lme4's ``glmer`` with one grouping factor.

``tools/reference/cases/memoe_laplace.R``: ``glmer(TICKS ~ YEAR + HEIGHT_scaled + (1 | BROOD),
grouseticks, poisson)`` by Laplace and by adaptive Gauss-Hermite with 9 nodes. The Laplace-EM path
(batched per-subject PIRLS and Laplace integrals, L-BFGS M-step) must reach R's optimum: logLik within
1e-4 absolute, fixed effects 1e-4 relative, theta 1e-3, conditional modes 1e-3 (the GLMM golden
targets, ``tests/golden/test_glmm_reference.py``), and at R's estimates reproduce R's logLik to rounding.

glmer's AGQ log-likelihood is made of unit deviances, without the family's normalising constants
(``memoe.glmm.agq``); MEMoE's includes them, so the comparison adds the saturated Poisson
log-likelihood ``sum(y log y - y - log y!)`` to R's value.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import special

import memoe
from memoe.moe.params import MoEParams
from tests.conftest import reference, reference_data

FORMULA = "TICKS ~ YEAR + HEIGHT_scaled + (1 | BROOD)"
CASES = {"grouseticks_poisson_brood_laplace": 1, "grouseticks_poisson_brood_agq9": 9}


@pytest.mark.parametrize("case", list(CASES))
def test_k1_poisson_memoe_matches_glmer(case):
    nagq = CASES[case]
    ref = reference(case)["results"]
    df = reference_data(case)
    y = df["TICKS"].to_numpy(dtype=float)
    shift = 0.0 if nagq == 1 else float(np.sum(special.xlogy(y, y) - y - special.gammaln(y + 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = memoe.MEMoE(FORMULA, k=1, data=df, family="poisson").fit(nAGQ=nagq, progress=False)
    names = list(fit.model.mdesign.fixef_names)
    beta_r = np.array([ref["fixef"][n] for n in names])
    theta_r = float(ref["theta"]["BROOD.(Intercept)"])
    # at R's estimates: the same log-likelihood (R's PIRLS stops at 1e-7 relative change; 1e-5 absolute)
    at_r = MoEParams(gamma=np.zeros((1, 1)), beta=beta_r[None], L=np.array([[[theta_r]]]), sigma=np.ones(1))
    assert abs(fit.model.problem.e_step(at_r).loglik - (ref["loglik"] + shift)) < 1e-5
    # our optimum: at least as good as R's point, and the same point
    assert fit.loglik + 1e-6 >= ref["loglik"] + shift
    assert abs(fit.loglik - (ref["loglik"] + shift)) < 1e-4
    np.testing.assert_allclose(fit.estimates.beta[0], beta_r, rtol=1e-4, atol=1e-5)
    assert abs(fit.estimates.L[0, 0, 0] - theta_r) < 1e-3 * theta_r
    modes = fit.ranef[1]["BROOD"]["(Intercept)"]
    rows = ref["ranef"]["BROOD"]
    ref_modes = np.array([r["(Intercept)"] for r in rows])
    ours = modes.reindex([str(r["group"]) for r in rows]).to_numpy(dtype=float)
    np.testing.assert_allclose(ours, ref_modes, atol=1e-3)

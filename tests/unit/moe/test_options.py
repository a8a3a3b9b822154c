"""Parameter sharing across experts (lcmm's options) and the baselines (MoE, latent-class LMM)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import statsmodels.api as sm

import memoe
from memoe.errors import FormulaError

from .conftest import FORMULA, GATING


@pytest.fixture(scope="module")
def option_fits(small3):
    data, _ = small3
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, kw in {
            "class": {},
            "proportional": {"random_cov": "proportional"},
            "common": {"random_cov": "common"},
            "common_all": {"random_cov": "common", "sigma": "common", "mixture": "~ time"},
        }.items():
            fits[name] = memoe.MEMoE(FORMULA, gating=GATING, k=3, data=data, **kw).fit(
                n_starts=3, seed=1, progress=False, se=False
            )
    return fits


@pytest.mark.slow  # its module fixture fits every option combination: 12-20 s
def test_parameter_counts(option_fits):
    # gating 2 x 3; fixed 3 x 3 (or 1 shared + 3 x 2); covariance 3 x 3 / 3 + 2 / 3; sigma 3 / 1
    assert option_fits["class"].npar == 6 + 9 + 9 + 3
    assert option_fits["proportional"].npar == 6 + 9 + 5 + 3
    assert option_fits["common"].npar == 6 + 9 + 3 + 3
    assert option_fits["common_all"].npar == 6 + 7 + 3 + 1


def test_sharing_is_imposed(option_fits):
    G = option_fits["common"].estimates.G
    np.testing.assert_allclose(G[1], G[0])
    np.testing.assert_allclose(G[2], G[0])
    Gp = option_fits["proportional"].estimates.G
    ratio = Gp[1] / Gp[0]
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-10)
    f = option_fits["common_all"]
    assert np.ptp(f.estimates.sigma) == 0.0
    assert np.ptp(f.estimates.beta[:, 2]) == 0.0  # x is shared
    assert np.ptp(f.estimates.beta[:, 1]) > 0.1  # time is class-specific


def test_nested_options_order_the_likelihood(option_fits):
    ll = {k: f.loglik for k, f in option_fits.items()}
    assert ll["class"] >= ll["proportional"] - 1e-3 >= ll["common"] - 2e-3
    assert ll["common"] >= ll["common_all"] - 1e-3


def test_coupled_fit_has_consistent_inference(option_fits):
    f = option_fits["common_all"]
    inf = f.inference
    assert inf.score_norm < 0.05
    tab = f.coef_table(robust="sandwich")
    # a shared coefficient has the same estimate and SE under every expert
    x = tab.loc[[f"fixed[{k}]:x" for k in range(1, f.k + 1)]]
    assert np.ptp(x["estimate"]) == 0 and np.ptp(x["std_error"]) < 1e-8


def test_moe_baseline_with_one_expert_is_ols(sim2):
    fit = memoe.MoE("y ~ time + x", gating=None, k=1, data=sim2, group="id").fit(progress=False)
    ols = sm.OLS(sim2["y"], sm.add_constant(sim2[["time", "x"]])).fit()
    assert abs(fit.loglik - ols.llf) < 1e-8
    np.testing.assert_allclose(fit.estimates.beta[0], ols.params.to_numpy(), atol=1e-8)


def test_moe_baseline_mixture(sim2):
    fit = memoe.MoE("y ~ time + x", gating=GATING, k=2, data=sim2, group="id").fit(n_starts=3, seed=1, progress=False)
    assert fit.npar == 3 + 2 * 3 + 2
    assert fit.model.structure.q == 0
    assert np.isfinite(fit.coef_table(robust="sandwich")["std_error"]).all()
    with pytest.raises(FormulaError, match="without"):
        memoe.MoE(FORMULA, gating=GATING, k=2, data=sim2, group="id")


def test_single_grouping_factor_required(sim2):
    d = sim2.assign(site=sim2["id"] % 5)
    with pytest.raises(FormulaError, match="single grouping factor"):
        memoe.MEMoE("y ~ time + (1 | id) + (1 | site)", gating=GATING, k=2, data=d)
    with pytest.raises(FormulaError, match="group="):
        memoe.MEMoE("y ~ time", gating=GATING, k=2, data=d)
    with pytest.raises(FormulaError, match="mixture"):
        memoe.MEMoE(FORMULA, gating=GATING, k=2, data=d, mixture="~ w1")

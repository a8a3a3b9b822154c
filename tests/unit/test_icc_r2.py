"""ICC and Nakagawa R² (memoe.inference.variance_decomposition)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import memoe
from memoe.errors import ArgumentTypeError, FamilyError, MemoeError
from memoe.glmm.families import get_family

# the decomposition is closed-form in the estimates: only rounding separates two evaluations
EXACT = 1e-12


@pytest.fixture(scope="module")
def sleep():
    return memoe.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def slope_fit(sleep):
    return memoe.LMM("Reaction ~ Days + (Days | Subject)", sleep).fit()


def test_random_intercept_icc_is_between_over_total(sleep):
    fit = memoe.LMM("Reaction ~ Days + (1 | Subject)", sleep).fit()
    vb = float(fit.varcorr.loc[0, "vcov"])
    vw = fit.sigma**2
    out = fit.icc()
    assert out["adjusted"] == pytest.approx(vb / (vb + vw), rel=EXACT)
    vf = np.var(fit.design.X @ fit.fixef.to_numpy(), ddof=1)
    assert out["conditional"] == pytest.approx(vb / (vf + vb + vw), rel=EXACT)
    assert "var_random / (var_random + var_residual)" in out.attrs["formula"]


def test_random_slope_uses_johnson_mean_variance(slope_fit, sleep):
    G = slope_fit.term_covariances()[0]
    days = slope_fit.design.X[:, 1]
    vr = np.mean(G[0, 0] + 2 * G[0, 1] * days + G[1, 1] * days**2)
    vf = np.var(slope_fit.design.X @ slope_fit.fixef.to_numpy(), ddof=1)
    ve = slope_fit.sigma**2
    icc, r2 = slope_fit.icc(), slope_fit.r2()
    assert icc["adjusted"] == pytest.approx(vr / (vr + ve), rel=EXACT)
    assert r2["marginal"] == pytest.approx(vf / (vf + vr + ve), rel=EXACT)
    assert r2["conditional"] == pytest.approx((vf + vr) / (vf + vr + ve), rel=EXACT)
    # R's performance::icc / r2_nakagawa on this model print 0.722, 0.521, 0.279, 0.799 (3 decimals)
    np.testing.assert_allclose([icc["adjusted"], icc["conditional"], r2["marginal"], r2["conditional"]],
                               [0.722, 0.521, 0.279, 0.799], atol=5e-4)


def test_by_group_rows_add_up():
    pen = memoe.datasets.load("Penicillin")
    fit = memoe.LMM("diameter ~ 1 + (1 | plate) + (1 | sample)", pen).fit()
    by = fit.icc(by_group=True)
    assert set(by.index) == {"plate", "sample"}
    assert by["adjusted"].sum() == pytest.approx(fit.icc()["adjusted"], rel=EXACT)
    vc = fit.varcorr.set_index("grp")["vcov"]
    assert by.loc["plate", "adjusted"] == pytest.approx(
        vc["plate"] / (vc["plate"] + vc["sample"] + vc["Residual"]), rel=EXACT)
    # no fixed covariates: var_fixed = 0, so conditional = adjusted and marginal R² = 0
    assert fit.r2()["marginal"] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(by["conditional"], by["adjusted"], rtol=EXACT)


def test_lme_matches_lmm(slope_fit, sleep):
    fit = memoe.lme("Reaction ~ Days + (Days | Subject)", sleep).fit()
    # two optimisers: the variance estimates agree to ~1e-6 relative
    np.testing.assert_allclose(fit.icc(), slope_fit.icc(), rtol=1e-5)
    np.testing.assert_allclose(fit.r2(), slope_fit.r2(), rtol=1e-5)


def test_gls_has_r2_but_no_icc(sleep):
    fit = memoe.gls("Reaction ~ Days", sleep).fit()
    r2 = fit.r2()
    assert r2["marginal"] == pytest.approx(r2["conditional"], rel=EXACT)
    with pytest.raises(MemoeError, match="no random effects"):
        fit.icc()


@pytest.mark.parametrize("link, dist", [("logit", math.pi**2 / 3), ("probit", 1.0), ("cloglog", math.pi**2 / 6)])
def test_binomial_glmm_latent_scale(link, dist):
    cbpp = memoe.datasets.load("cbpp")
    fam = get_family("binomial", link)
    fit = memoe.GLMM("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family=fam).fit()
    v = fit.theta.iloc[0] ** 2
    vf = np.var(fit.design.X @ fit.fixef.to_numpy(), ddof=1)
    icc = fit.icc()
    assert icc["adjusted"] == pytest.approx(v / (v + dist), rel=EXACT)
    assert icc["conditional"] == pytest.approx(v / (vf + v + dist), rel=EXACT)
    assert fit.r2()["marginal"] == pytest.approx(vf / (vf + v + dist), rel=EXACT)
    assert link in icc.attrs["var_residual"]


def test_poisson_glmm_lognormal_approximation():
    gt = memoe.datasets.load("grouseticks")
    fit = memoe.GLMM("TICKS ~ 1 + (1 | BROOD)", gt, family="poisson").fit()
    v = fit.theta.iloc[0] ** 2
    dist = math.log1p(math.exp(-fit.fixef["(Intercept)"]))
    assert fit.icc()["adjusted"] == pytest.approx(v / (v + dist), rel=EXACT)
    assert "lognormal" in fit.icc().attrs["var_residual"]


def test_unsupported_link_and_bad_argument(slope_fit):
    gt = memoe.datasets.load("grouseticks")
    fit = memoe.GLMM("TICKS ~ 1 + (1 | BROOD)", gt, family="poisson").fit()
    # the refusal only reads the family: swap in an identity link rather than fit one (it may not converge)
    fit.response_family = get_family("poisson", "identity")
    with pytest.raises(FamilyError, match="identity"):
        fit.icc()
    with pytest.raises(ArgumentTypeError, match="by_group"):
        slope_fit.icc(by_group="yes")


def test_memoe_per_expert():
    sim2 = memoe.datasets.load("memoe_sim2")
    fit = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=sim2).fit(
        n_starts=2, seed=1, progress=False
    )
    icc, r2 = fit.icc(), fit.r2()
    assert list(icc.index) == [1, 2] and list(r2.index) == [1, 2]
    # expert 1 by hand: rows weighted by the posterior of their subject
    md, est = fit.model.mdesign, fit.estimates
    w = np.asarray(fit.posterior)[md.codes, 0]
    eta = md.design.X @ est.beta[0]
    vr = np.sum(w * np.einsum("ij,jk,ik->i", md.Z, est.G[0], md.Z)) / w.sum()
    ve = est.sigma[0] ** 2
    assert icc.loc[1, "adjusted"] == pytest.approx(vr / (vr + ve), rel=1e-10)
    m = np.sum(w * eta) / w.sum()
    vf = np.sum(w * (eta - m) ** 2) / (w.sum() - np.sum(w**2) / w.sum())
    assert r2.loc[1, "marginal"] == pytest.approx(vf / (vf + vr + ve), rel=1e-10)

"""PIRLS, the Laplace and quadrature deviances against independent oracles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import integrate, stats

import memoe
from memoe.errors import MemoeError
from memoe.glmm import glmm
from memoe.glmm.agq import QuadratureError, agq_deviance, check_agq, gh_rule
from memoe.glmm.laplace import laplace_deviance
from memoe.glmm.pirls import PirlsProblem

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
TICKS = "TICKS ~ YEAR + HEIGHT_scaled + (1 | BROOD) + (1 | LOCATION)"


@pytest.fixture(scope="module")
def cbpp_model():
    return glmm(CBPP, memoe.datasets.load("cbpp"))


@pytest.fixture(scope="module")
def ticks_model():
    return glmm(TICKS, memoe.datasets.load("grouseticks"), "poisson")


def _marginal_loglik_oracle(model, theta: float, beta: np.ndarray) -> float:
    """sum_j log int prod_i Binom(k_ij | n_ij, mu_ij(u)) phi(u) du by adaptive quadrature (scipy)."""
    P = model.problem
    k = np.round(P.y * P.ntrials)
    fe = P.X @ beta
    codes = P.codes[0]
    total = 0.0
    for j in range(P.nlevels[0]):
        rows = codes == j

        def integrand(u, rows=rows):
            mu = P.family.linkinv(fe[rows] + theta * u)
            return np.exp(stats.binom.logpmf(k[rows], P.ntrials[rows], mu).sum()) * stats.norm.pdf(u)

        val, _ = integrate.quad(integrand, -12, 12, epsabs=0, epsrel=1e-12, limit=200)
        total += np.log(val)
    return total


def test_gh_rule_integrates_normal_moments():
    z, w = gh_rule(9)
    assert w.sum() == pytest.approx(1.0, abs=1e-14)
    assert (w * z**2).sum() == pytest.approx(1.0, abs=1e-12)
    assert (w * z**4).sum() == pytest.approx(3.0, abs=1e-10)


def test_agq_matches_adaptive_quadrature_oracle(cbpp_model):
    theta, beta = np.array([0.65]), np.array([-1.4, -1.0, -1.1, -1.6])
    P = cbpp_model.problem
    st = P.solve(theta, beta)
    oracle = -2 * _marginal_loglik_oracle(cbpp_model, theta[0], beta)
    # lme4's AGQ deviance omits the saturated log-likelihood (the normalising constants)
    sat = -2 * P.family.loglik(P.y, P.y, P.wt, P.ntrials)
    assert agq_deviance(P, st, theta, 25) + sat == pytest.approx(oracle, abs=1e-8)
    # the Laplace deviance is an approximation of the same quantity, close but not equal
    lap = laplace_deviance(P, st)
    assert 1e-4 < abs(lap - oracle) < 0.5


def test_laplace_equals_agq_with_one_node_up_to_the_constant(cbpp_model):
    """nAGQ = 1 is the Laplace approximation; the difference is the (parameter-free) constant."""
    P = cbpp_model.problem
    sat = -2 * P.family.loglik(P.y, P.y, P.wt, P.ntrials)
    for theta, beta in [(0.3, [-1.0, -0.5, -1.0, -2.0]), (1.2, [-1.6, -1.2, -0.9, -1.1])]:
        st = P.solve(np.array([theta]), np.array(beta))
        assert laplace_deviance(P, st) == pytest.approx(agq_deviance(P, st, np.array([theta]), 1) + sat, abs=1e-9)


def test_agq_converges_with_nodes(cbpp_model):
    P = cbpp_model.problem
    theta, beta = np.array([0.65]), np.array([-1.4, -1.0, -1.1, -1.6])
    st = P.solve(theta, beta)
    devs = [agq_deviance(P, st, theta, n) for n in (5, 15, 25, 40)]
    assert abs(devs[2] - devs[3]) < 1e-9 < abs(devs[0] - devs[3])


def test_agq_needs_one_scalar_term(ticks_model):
    with pytest.raises(QuadratureError, match="single, scalar random-effects term"):
        check_agq(ticks_model.problem, 5)
    with pytest.raises(QuadratureError, match="nAGQ must be an integer"):
        check_agq(ticks_model.problem, 1.5)
    with pytest.raises(MemoeError, match="nAGQ must be an integer"):
        ticks_model.fit(nAGQ=-1)


def test_mode_is_stationary(ticks_model):
    P = ticks_model.problem
    theta, beta = np.array([0.77, 0.57]), np.array([0.47, 1.17, -0.98, -0.85])
    st = P.solve(theta, beta)
    assert st.converged

    def pdev(u):
        eta = P.offset + P.X @ beta + P.re_predictor(theta, u)
        return P.family.dev_resids(P.y, P.family.linkinv(eta), P.wt).sum() + u @ u

    rng = np.random.default_rng(1)
    for _ in range(3):
        v = rng.standard_normal(P.q)
        h = 1e-5
        assert abs(pdev(st.u + h * v) - pdev(st.u - h * v)) / (2 * h) < 1e-5
        assert pdev(st.u + 1e-2 * v) > pdev(st.u)


def test_log_determinant_against_dense_matrix(ticks_model):
    """ldL2 = log det(Lambda' Z' W Z Lambda + I) formed densely from the design."""
    P = ticks_model.problem
    theta, beta = np.array([0.77, 0.57]), np.array([0.47, 1.17, -0.98, -0.85])
    st = P.solve(theta, beta)
    cols = []
    for Z, codes, lk, lam in zip(P.Zraw, P.codes, P.nlevels, P.theta_map.lambdas(theta), strict=True):
        D = np.zeros((P.n, lk))
        D[np.arange(P.n), codes] = Z[:, 0] * lam[0, 0]
        cols.append(D)
    ZL = np.hstack(cols)
    A = ZL.T @ (st.w[:, None] * ZL) + np.eye(ZL.shape[1])
    assert st.ldL2 == pytest.approx(np.linalg.slogdet(A)[1], abs=1e-9)


@pytest.mark.parametrize(
    "formula",
    [
        TICKS,
        "TICKS ~ YEAR + (HEIGHT_scaled | BROOD) + (1 | LOCATION)",
        "TICKS ~ YEAR + (1 | LOCATION/BROOD) + (0 + HEIGHT_scaled | YEAR)",
    ],
)
def test_dense_and_blocked_pls_paths_agree(formula):
    m = glmm(formula, memoe.datasets.load("grouseticks"), "poisson")
    k = m.design.theta_map.size
    theta = np.where(m.design.theta_map.is_diagonal, 0.6, 0.1)
    beta = np.r_[0.4, 1.1, -0.9, -0.8][: m.design.p]
    a = PirlsProblem(m.gdesign, m.family, dense=True)
    b = PirlsProblem(m.gdesign, m.family, dense=False)
    assert a.dense is not None and b.dense is None and k == theta.size
    for joint in (False, True):
        sa = a.solve(theta, None if joint else beta)
        sb = b.solve(theta, None if joint else beta)
        np.testing.assert_allclose(sa.u, sb.u, atol=1e-9)
        np.testing.assert_allclose(sa.beta, sb.beta, atol=1e-9)
        assert sa.ldL2 == pytest.approx(sb.ldL2, abs=1e-9)


def test_joint_pirls_at_zero_theta_is_the_glm(cbpp_model):
    """With no random-effects variance, joint PIRLS is IRLS for the GLM (statsmodels as oracle)."""
    P = cbpp_model.problem
    st = P.solve(np.array([0.0]), beta=None)
    endog = np.column_stack([P.y * P.ntrials, P.ntrials * (1 - P.y)])
    glm = sm.GLM(endog, P.X, family=sm.families.Binomial()).fit(tol=1e-12)
    np.testing.assert_allclose(st.beta, glm.params, rtol=1e-8)
    assert -0.5 * P.loglik_terms(st.mu) == pytest.approx(glm.llf, abs=1e-8)


def test_poisson_agq_matches_quadrature_oracle():
    rng = np.random.default_rng(6)
    g = np.repeat(np.arange(12), 8)
    x = rng.standard_normal(len(g))
    y = rng.poisson(np.exp(0.5 + 0.4 * x + rng.normal(0, 0.6, 12)[g]))
    m = glmm("y ~ x + (1 | g)", pd.DataFrame({"y": y, "x": x, "g": g}), "poisson")
    P = m.problem
    theta, beta = np.array([0.6]), np.array([0.5, 0.4])
    st = P.solve(theta, beta)
    total = 0.0
    for j in range(12):
        rows = g == j

        def integrand(u, rows=rows):
            mu = np.exp(beta[0] + beta[1] * x[rows] + theta[0] * u)
            return np.exp(stats.poisson.logpmf(y[rows], mu).sum()) * stats.norm.pdf(u)

        total += np.log(integrate.quad(integrand, -12, 12, epsabs=0, epsrel=1e-12, limit=200)[0])
    sat = -2 * P.family.loglik(P.y, P.y, P.wt, P.ntrials)
    assert agq_deviance(P, st, theta, 30) + sat == pytest.approx(-2 * total, abs=1e-7)
    assert laplace_deviance(P, st) == pytest.approx(-2 * total, abs=0.2)

"""Laplace-EM for non-Gaussian MEMoE experts (issue 12): the batched Laplace / AGQ E-step, its exact
gradients, the Gaussian check against the exact path, K = 1 against memoe.glmm, recovery of a known truth,
per-expert random effects, predictions, persistence and argument checks."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import ArgumentError, DataError, FamilyError, MemoeError, QuadratureError
from memoe.glmm import glmm
from memoe.glmm.families import get_family
from memoe.moe.data import subject_stats
from memoe.moe.experts import ExpertParams, GaussianExpert
from memoe.moe.laplace import LaplaceExpert
from memoe.moe.params import MoEParams

FORMULA = "y ~ time + x + (time | id)"
GATING = "~ w1 + w2"


def simulate(n, family="binomial", visits=8, beta=None, gamma=None, sds=None, seed=1, q=2):
    """A MEMoE of GLMM experts (vectorised); returns the data and the true classes (0-based)."""
    rng = np.random.default_rng(seed)
    beta = np.asarray(beta, dtype=float)
    K = len(beta)
    gamma = np.zeros((K, 3)) if gamma is None else np.asarray(gamma, dtype=float)
    sds = np.asarray(sds, dtype=float)
    w1, w2 = rng.normal(size=n), rng.binomial(1, 0.5, n).astype(float)
    eta = np.column_stack([np.ones(n), w1, w2]) @ gamma.T
    pi = np.exp(eta - eta.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    z = (rng.uniform(size=n)[:, None] > np.cumsum(pi, axis=1)).sum(axis=1)
    b = rng.normal(size=(n, 2)) * sds[z]
    if q == 1:
        b[:, 1] = 0.0
    sid = np.repeat(np.arange(n), visits)
    t = np.tile(np.linspace(0.0, 3.0, visits), n)
    x = rng.normal(size=n * visits)
    lin = beta[z[sid], 0] + beta[z[sid], 1] * t + beta[z[sid], 2] * x + b[sid, 0] + b[sid, 1] * t
    if family == "binomial":
        y = (rng.uniform(size=n * visits) < 1.0 / (1.0 + np.exp(-lin))).astype(float)
    else:
        y = rng.poisson(np.exp(lin)).astype(float)
    df = pd.DataFrame({"id": sid, "time": t, "x": x, "w1": w1[sid], "w2": w2[sid], "y": y})
    return df, z


def _design(family, seed=2, N=40, visits=6):
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(N), visits)
    rng.shuffle(codes)  # rows in any order: the expert sorts them by subject
    n = len(codes)
    t, x = rng.uniform(0, 3, n), rng.normal(size=n)
    X = np.column_stack([np.ones(n), t, x])
    Z = np.column_stack([np.ones(n), t])
    eta = X @ [-0.5, 0.4, 0.8] + np.einsum("nq,nq->n", Z, (rng.normal(size=(N, 2)) * [1.0, 0.5])[codes])
    if family is None:
        y = eta + rng.normal(size=n)
    elif family.name == "poisson":
        y = rng.poisson(np.exp(0.5 * eta)).astype(float)
    else:
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    return y, X, Z, codes, N


BETA = np.array([[-0.3, 0.3, 0.6], [0.1, 0.2, 0.5]])
LCHOL = np.array([[[0.9, 0.0], [0.2, 0.4]], [[0.5, 0.0], [-0.1, 0.3]]])
SIG = np.array([1.1, 0.8])


@pytest.mark.parametrize(
    "family", [None, get_family("binomial"), get_family("poisson"), get_family("binomial", "probit")],
    ids=["gaussian", "binomial", "poisson", "probit"],
)
def test_laplace_gradients_match_central_differences(family):
    """The exact gradients (envelope theorem + implicit mode derivative) against central differences.

    Tolerance: central differences with h = 1e-6 carry O(h^2) truncation (~1e-12 times third derivatives
    of order 1) and eps |l_i| / h ~ 1e-8 rounding (|l_i| ~ 20); 1e-6 absolute leaves a wide margin while a
    missing term (e.g. the log-determinant's dependence on the mode, of order 0.1) fails it.
    """
    y, X, Z, codes, N = _design(family)
    ex = LaplaceExpert(y, X, Z, codes, N, family, subject_stats(y, X, Z, codes, N))
    ev = ex.evaluate(BETA, LCHOL, SIG, gradient=True)
    h = 1e-6
    for m in range(2):
        for j in range(3):
            bp, bm = BETA.copy(), BETA.copy()
            bp[m, j] += h
            bm[m, j] -= h
            fd = (ex.evaluate(bp, LCHOL, SIG).loglik[m] - ex.evaluate(bm, LCHOL, SIG).loglik[m]) / (2 * h)
            np.testing.assert_allclose(ev.beta[m][:, j], fd, atol=1e-6)
        for c, d in [(0, 0), (1, 0), (1, 1)]:
            Lp, Lm = LCHOL.copy(), LCHOL.copy()
            Lp[m, c, d] += h
            Lm[m, c, d] -= h
            fd = (ex.evaluate(BETA, Lp, SIG).loglik[m] - ex.evaluate(BETA, Lm, SIG).loglik[m]) / (2 * h)
            np.testing.assert_allclose(ev.dL[m][:, c, d], fd, atol=1e-6)
        if family is None:
            sp, sm = SIG.copy(), SIG.copy()
            sp[m], sm[m] = np.sqrt(SIG[m] ** 2 + h), np.sqrt(SIG[m] ** 2 - h)
            fd = (ex.evaluate(BETA, LCHOL, sp).loglik[m] - ex.evaluate(BETA, LCHOL, sm).loglik[m]) / (2 * h)
            np.testing.assert_allclose(ev.s2[m], fd, atol=1e-6)


@pytest.mark.parametrize(
    "family", [None, get_family("binomial"), get_family("poisson"), get_family("binomial", "probit")],
    ids=["gaussian", "binomial", "poisson", "probit"],
)
def test_agq_gradients_are_exact_with_few_nodes(family):
    """Adaptive Gauss-Hermite with 3 nodes: the gradient includes the moves of the adaptive nodes (mode and
    scale), so it is the exact derivative of the 3-node approximation, not only Fisher's identity at
    held nodes (which differs by the quadrature error, ~1e-3 with 3 nodes). Tolerance as above."""
    rng = np.random.default_rng(1)
    N = 30
    codes = np.repeat(np.arange(N), 5)
    rng.shuffle(codes)
    n = len(codes)
    X = np.column_stack([np.ones(n), rng.uniform(0, 3, n)])
    Z = np.ones((n, 1))
    eta = X @ [-0.3, 0.4] + 1.5 * rng.normal(size=N)[codes]
    if family is None:
        y = eta + rng.normal(size=n)
    elif family.name == "poisson":
        y = rng.poisson(np.exp(0.5 * eta)).astype(float)
    else:
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    ex = LaplaceExpert(y, X, Z, codes, N, family, subject_stats(y, X, Z, codes, N), nAGQ=3)
    beta, L, sig = np.array([[-0.2, 0.3]]), np.array([[[1.3]]]), np.array([0.9])
    ev = ex.evaluate(beta, L, sig, gradient=True)
    h = 1e-6
    for j in range(2):
        bp, bm = beta.copy(), beta.copy()
        bp[0, j] += h
        bm[0, j] -= h
        fd = (ex.evaluate(bp, L, sig).loglik[0] - ex.evaluate(bm, L, sig).loglik[0]) / (2 * h)
        np.testing.assert_allclose(ev.beta[0][:, j], fd, atol=1e-6)
    fd = (ex.evaluate(beta, L + h, sig).loglik[0] - ex.evaluate(beta, L - h, sig).loglik[0]) / (2 * h)
    np.testing.assert_allclose(ev.dL[0][:, 0, 0], fd, atol=1e-6)
    if family is None:
        sp, sm = np.sqrt(sig**2 + h), np.sqrt(sig**2 - h)
        fd = (ex.evaluate(beta, L, sp).loglik[0] - ex.evaluate(beta, L, sm).loglik[0]) / (2 * h)
        np.testing.assert_allclose(ev.s2[0], fd, atol=1e-6)


def test_gaussian_laplace_is_exact_per_subject():
    """For a Gaussian response the Laplace approximation is exact: log-likelihoods and gradients equal the
    exact expert's to rounding (closed-form pipelines, relative 1e-9 of the scale)."""
    y, X, Z, codes, N = _design(None)
    st = subject_stats(y, X, Z, codes, N)
    ev = LaplaceExpert(y, X, Z, codes, N, None, st).evaluate(BETA, LCHOL, SIG, gradient=True)
    exact = GaussianExpert(st, None, None)
    for m in range(2):
        g = exact.subject_gradients(ExpertParams(BETA[m], LCHOL[m], SIG[m]))
        np.testing.assert_allclose(ev.loglik[m], g.loglik, rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(ev.beta[m], g.beta, atol=1e-9)
        np.testing.assert_allclose(ev.dL[m], 2 * g.G @ LCHOL[m], atol=1e-9)
        np.testing.assert_allclose(ev.s2[m], g.s2, atol=1e-9)
        np.testing.assert_allclose(ev.b[m], exact.blup(ExpertParams(BETA[m], LCHOL[m], SIG[m])), atol=1e-9)


def test_gaussian_memoe_through_laplace_path_equals_exact_path(sim2):
    """A Gaussian MEMoE run through the Laplace machinery: the same log-likelihood at the exact fit's
    estimates (1e-8), scores at the optimum about zero, and its own fit reaching that optimum."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=sim2).fit(n_starts=2, seed=1, progress=False)
        lap_model = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=sim2, laplace=True)
    e = lap_model.problem.e_step(exact.estimates)
    assert abs(e.loglik - exact.loglik) < 1e-8
    np.testing.assert_allclose(e.tau, exact.posterior.to_numpy(), atol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lap = lap_model.fit(n_starts=2, seed=1, progress=False)
    assert lap.estimation == "Laplace-EM (nAGQ = 1)"
    # both are maxima of the same function: they agree to the optimisers' stopping slack (a fraction of
    # a unit of the information-scaled step: |dl| <= g' A^-1 g / 2 at gradients ~1e-3)
    assert abs(lap.loglik - exact.loglik) < 1e-4
    np.testing.assert_allclose(lap.estimates.beta, exact.estimates.beta, atol=5e-3)


def test_k1_binomial_memoe_equals_glmm_laplace():
    """K = 1 binomial MEMoE is glmer's Laplace fit: memoe.glmm reaches the same log-likelihood (1e-6)
    and, at glmm's estimates, the E-step reproduces its log-likelihood and conditional modes to rounding."""
    df, _ = simulate(150, "binomial", beta=[[-1.0, 0.8, 0.5]], sds=[[0.8, 0.3]], seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = glmm(FORMULA, df, "binomial").fit()
        f = memoe.MEMoE(FORMULA, k=1, data=df, family="binomial").fit(progress=False)
    assert abs(f.loglik - g.loglik) < 1e-6
    th = np.asarray(g.theta, dtype=float)
    L = np.array([[[th[0], 0.0], [th[1], th[2]]]])
    p = MoEParams(gamma=np.zeros((1, 1)), beta=np.asarray(g.fixef, dtype=float)[None], L=L, sigma=np.ones(1))
    assert abs(f.model.problem.e_step(p).loglik - g.loglik) < 1e-8 * abs(g.loglik)
    modes = f.model.problem.expert.modes(p)[0]
    np.testing.assert_allclose(modes, g.ranef["id"].to_numpy(), atol=1e-8)
    # K = 1: the response-scale prediction is the inverse link of the link-scale one
    np.testing.assert_allclose(f.predict(type="response"), 1 / (1 + np.exp(-f.predict(type="link"))), rtol=1e-12)


def test_k1_agq_equals_glmm_agq():
    """nAGQ > 1 (one scalar random effect): K = 1 equals glmer's adaptive Gauss-Hermite fit. For 0/1
    binomial responses the normalising constants are zero, so the log-likelihoods are on one scale."""
    df, _ = simulate(120, "binomial", beta=[[-0.5, 0.5, 0.7]], sds=[[1.2, 0.0]], seed=4, q=1)
    f1 = "y ~ time + x + (1 | id)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = glmm(f1, df, "binomial").fit(nAGQ=9)
        f = memoe.MEMoE(f1, k=1, data=df, family="binomial").fit(nAGQ=9, progress=False)
    assert f.nAGQ == 9 and "nAGQ = 9" in f.estimation
    assert abs(f.loglik - g.loglik) < 1e-6


def test_laplace_estep_against_many_node_quadrature():
    """The Laplace E-step against adaptive Gauss-Hermite with many nodes (random intercept): the quadrature
    has converged (25 vs 50 nodes agree to 1e-9), the Laplace error is small and shrinks with the number
    of visits (it is O(1 / n_i)), and the quadrature gradient matches central differences of the
    quadrature log-likelihood."""
    fam = get_family("binomial")
    errs = []
    for visits in (10, 80):
        df, _ = simulate(60, "binomial", visits=visits, beta=[[-0.3, 0.4, 0.6]], sds=[[2.0, 0.0]], seed=5, q=1)
        X = np.column_stack([np.ones(len(df)), df.time, df.x])
        Z = np.ones((len(df), 1))
        codes = df.id.to_numpy()
        y = df.y.to_numpy()
        st = subject_stats(y, X, Z, codes, 60)
        beta, L = np.array([[-0.3, 0.4, 0.6]]), np.array([[[2.0]]])
        lap = LaplaceExpert(y, X, Z, codes, 60, fam, st).evaluate(beta, L)
        q25 = LaplaceExpert(y, X, Z, codes, 60, fam, st, nAGQ=25).evaluate(beta, L, gradient=True)
        q50 = LaplaceExpert(y, X, Z, codes, 60, fam, st, nAGQ=50).evaluate(beta, L)
        np.testing.assert_allclose(q25.loglik, q50.loglik, atol=1e-9)
        errs.append(float(np.mean(np.abs(lap.loglik - q50.loglik))))
        ex25 = LaplaceExpert(y, X, Z, codes, 60, fam, st, nAGQ=25)
        h = 1e-6
        for j in range(3):
            bp, bm = beta.copy(), beta.copy()
            bp[0, j] += h
            bm[0, j] -= h
            fd = (ex25.evaluate(bp, L).loglik[0] - ex25.evaluate(bm, L).loglik[0]) / (2 * h)
            np.testing.assert_allclose(q25.beta[0][:, j], fd, atol=1e-6)
    # random-intercept SD 2: the data dominate the prior, where the Laplace error is O(1 / n_i)
    assert errs[0] < 0.05
    assert errs[1] < 0.6 * errs[0]


def _accuracy(pred: np.ndarray, true: np.ndarray, K: int) -> float:
    return max(float(np.mean(np.asarray(p)[pred] == true)) for p in itertools.permutations(range(K)))


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, beta, sds",
    [
        ("binomial", [[-1.5, 0.8, 0.6], [1.2, -0.8, -0.6]], [[0.8, 0.3], [0.6, 0.3]]),
        ("poisson", [[0.2, 0.3, 0.2], [1.2, -0.3, -0.3]], [[0.4, 0.15], [0.3, 0.1]]),
    ],
)
def test_recovers_known_truth(family, beta, sds):
    """Simulation with known truth: MAP accuracy within 0.02 of the accuracy under the true parameters
    (the Laplace posterior at the truth), every gating and fixed effect within 4 sandwich SEs."""
    gamma = [[0.0, 0.0, 0.0], [0.3, 1.0, -0.8]]
    df, z = simulate(600, family, visits=10, beta=beta, gamma=gamma, sds=sds, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=df, family=family).fit(n_starts=4, seed=1,
                                                                                    progress=False)
    sd = np.asarray(sds)
    Lt = np.zeros((2, 2, 2))
    Lt[:, 0, 0], Lt[:, 1, 1] = sd[:, 0], sd[:, 1]
    truth = MoEParams(gamma=np.asarray(gamma), beta=np.asarray(beta), L=Lt, sigma=np.ones(2))
    acc_true = _accuracy(fit.model.problem.e_step(truth).tau.argmax(axis=1), z, 2)
    acc_fit = _accuracy(fit.classify().to_numpy() - 1, z, 2)
    assert acc_fit >= acc_true - 0.02
    table = fit.coef_table(robust="sandwich")
    # canonical order: increasing intercept, as the truth is listed
    want = {f"fixed[{k + 1}]:{t}": beta[k][j] for k in range(2) for j, t in enumerate(["(Intercept)", "time", "x"])}
    want.update({f"gating[2]:{t}": gamma[1][j] for j, t in enumerate(["(Intercept)", "w1", "w2"])})
    for name, value in want.items():
        est, se = table.loc[name, "estimate"], table.loc[name, "std_error"]
        assert abs(est - value) < 4 * se, (name, est, value, se)
    assert fit.max_decrease <= 1e-8 * (1 + abs(fit.loglik))  # EM monotone in the Laplace log-likelihood
    assert np.isfinite(fit.bse).all()


@pytest.fixture(scope="module")
def binom_fit():
    df, _ = simulate(150, "binomial", beta=[[-1.2, 0.8, 0.6], [1.0, -0.8, -0.6]],
                     gamma=[[0, 0, 0], [0.2, 1.0, -0.5]], sds=[[0.8, 0.3], [0.6, 0.2]], seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=df, family="binomial").fit(n_starts=1, seed=1,
                                                                                        progress=False)
    return df, fit


def test_ranef_per_expert_and_posterior_weighted(binom_fit):
    _, fit = binom_fit
    re = fit.ranef
    assert set(re) == {1, 2} and list(re[1]) == ["id"]
    assert re[1]["id"].shape == (150, 2) and list(re[1]["id"].columns) == ["(Intercept)", "time"]
    tau = fit.posterior.to_numpy()
    weighted = tau[:, [0]] * re[1]["id"].to_numpy() + tau[:, [1]] * re[2]["id"].to_numpy()
    np.testing.assert_allclose(fit.ranef_posterior["id"].to_numpy(), weighted, rtol=1e-12)
    sd = fit.ranef_condsd[1]["id"].to_numpy()
    assert np.all(sd > 0) and np.all(np.isfinite(sd))
    # the modes do not depend on the warm start: a new expert from zero modes finds the same ones
    cold = LaplaceExpert(*_rows(fit), fit.model.response_family, None).modes(fit.estimates)
    np.testing.assert_allclose(cold[0], re[1]["id"].to_numpy(), atol=1e-8)


def _rows(fit):
    md = fit.model.mdesign
    return md.design.y, md.design.X, md.Z, md.codes, md.N


def test_predictions_response_and_link(binom_fit):
    df, fit = binom_fit
    mu = fit.predict()
    assert np.all((mu > 0) & (mu < 1))
    np.testing.assert_allclose(mu.to_numpy(), fit.fitted.to_numpy())
    eta_cls = fit.predict(df, kind="class", type="link")
    p_cls = fit.predict(df, kind="class")
    np.testing.assert_allclose(p_cls.to_numpy(), 1 / (1 + np.exp(-eta_cls.to_numpy())), rtol=1e-12)
    # history in newdata reproduces the fit's posterior predictions for the fitted subjects
    np.testing.assert_allclose(fit.predict(df, kind="subject").to_numpy(), mu.to_numpy(), atol=1e-9)
    pop = fit.predict(df, kind="population")
    gate = fit.prior.to_numpy()[df.id.to_numpy()]
    np.testing.assert_allclose(pop.to_numpy(), (gate * p_cls.to_numpy()).sum(axis=1), rtol=1e-12)
    resid = fit.resid
    np.testing.assert_allclose(resid.to_numpy(), df.y.to_numpy() - mu.to_numpy())


def test_summary_and_glance_state_the_family(binom_fit):
    _, fit = binom_fit
    text = str(fit.summary())
    assert "Laplace-EM (nAGQ = 1)" in text and "Family: binomial ( logit )" in text
    assert "sigma" not in " ".join(fit.params.index)
    assert fit.sigma == 1.0
    assert fit.glance()["k"].iloc[0] == 2
    with pytest.raises(MemoeError, match="binomial experts"):
        fit.icc()


def test_save_load_roundtrip(binom_fit, tmp_path):
    _, fit = binom_fit
    fit.save(tmp_path / "b.memoe")
    back = memoe.load(tmp_path / "b.memoe")
    assert back.family_name == "binomial" and back.nAGQ == 1
    assert abs(back.loglik - fit.loglik) < 1e-9 * abs(fit.loglik)
    np.testing.assert_allclose(back.ranef[2]["id"].to_numpy(), fit.ranef[2]["id"].to_numpy(), atol=1e-9)


def test_save_load_keeps_nagq(tmp_path):
    df, _ = simulate(60, "poisson", beta=[[0.3, 0.2, 0.2]], sds=[[0.4, 0.0]], seed=8, q=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = memoe.MEMoE("y ~ time + x + (1 | id)", k=1, data=df, family="poisson").fit(nAGQ=7, progress=False)
    fit.save(tmp_path / "p.memoe")
    back = memoe.load(tmp_path / "p.memoe")
    assert back.nAGQ == 7 and back.family_name == "poisson"
    assert abs(back.loglik - fit.loglik) < 1e-9 * abs(fit.loglik)


def test_bad_arguments_are_refused():
    df, _ = simulate(40, "binomial", beta=[[0.0, 0.3, 0.3]], sds=[[0.5, 0.2]], seed=9)
    with pytest.raises(FamilyError, match="gamma"):
        memoe.MEMoE(FORMULA, k=1, data=df, family="gamma")
    m = memoe.MEMoE(FORMULA, k=1, data=df, family="binomial")
    with pytest.raises(QuadratureError, match="scalar random effect"):
        m.fit(nAGQ=5, progress=False)
    with pytest.raises(ArgumentError, match="nAGQ"):
        m.fit(nAGQ=0, progress=False)
    bad = df.assign(y=df.y * 2)
    with pytest.raises(DataError, match="'y'"):
        memoe.MEMoE(FORMULA, k=1, data=bad, family="binomial")
    with pytest.raises(DataError, match="negative"):
        memoe.MEMoE(FORMULA, k=1, data=df.assign(y=df.y - 1), family="poisson")


def test_loglik_decrease_is_flagged():
    """A log-likelihood decrease beyond round-off in the EM trace is reported (here forced by an M-step
    that moves away from the optimum)."""
    from memoe.errors import ConvergenceWarning

    df, _ = simulate(40, "binomial", beta=[[0.0, 0.3, 0.3]], sds=[[0.5, 0.2]], seed=9)
    m = memoe.MEMoE(FORMULA, k=1, data=df, family="binomial")
    good = m.problem.m_step
    m.problem.m_step = lambda tau, params, previous=None, control=None: (
        good(tau, params, previous, control).replace(beta=params.beta + 0.5)
    )
    with pytest.warns(ConvergenceWarning, match="decreased"):
        fit = m.fit(maxiter=3, progress=False, se=False)
    assert fit.max_decrease > 0.1


def test_family_object_with_another_link():
    """A Family with a non-canonical link (probit): observed and Fisher weights differ; the fit's score at
    the optimum is about zero (the exact gradient uses the observed weights for the mode's derivative)."""
    df, _ = simulate(80, "binomial", beta=[[-0.5, 0.5, 0.5]], sds=[[0.6, 0.2]], seed=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = memoe.MEMoE(FORMULA, k=1, data=df, family=get_family("binomial", "probit")).fit(progress=False)
    assert "( probit )" in str(fit.summary())
    # relative to the scores' own spread (sqrt of the BHHH diagonal): converged to a tiny fraction of a SE
    assert fit.inference.score_norm < 1e-3 * np.sqrt(np.max(np.diag(fit.inference.meat)))


def test_cli_fits_binomial_memoe(tmp_path):
    from memoe.cli import main

    df, _ = simulate(60, "binomial", beta=[[-1.0, 0.8, 0.5], [1.0, -0.8, -0.5]], gamma=[[0, 0, 0], [0.2, 1, -0.5]],
                     sds=[[0.8, 0.0], [0.6, 0.0]], seed=3, q=1)
    df.to_csv(tmp_path / "b.csv", index=False)
    rc = main(["memoe", "y ~ time + x + (1 | id)", "--gating", "~ w1 + w2", "--k", "2", "--family", "binomial",
               "--nagq", "3", "--data", str(tmp_path / "b.csv"), "--starts", "1", "--seed", "1", "--quiet",
               "--save", str(tmp_path / "b.memoe"), "-o", str(tmp_path / "g.json")])
    assert rc == 0
    back = memoe.load(tmp_path / "b.memoe")
    assert back.family_name == "binomial" and back.nAGQ == 3


@pytest.mark.parametrize("name", ["poisson", "binomial"])
def test_extreme_parameters_terminate(name):
    """Overflowing linear predictors (an optimiser's wild trial point): PIRLS gives up on those subjects
    (step halving below its floor) instead of looping; the M-step and finish treat the non-finite value
    as infeasible."""
    family = get_family(name)
    y, X, Z, codes, N = _design(family)
    ex = LaplaceExpert(y, X, Z, codes, N, family, subject_stats(y, X, Z, codes, N))
    ev = ex.evaluate(np.array([[800.0, 5.0, 5.0]]), np.array([[[300.0, 0.0], [5.0, 900.0]]]), gradient=True)
    assert ev.loglik.shape == (1, N)
    # infinite linear predictors (0 * inf = NaN in the log-likelihood of some rows)
    ev = ex.evaluate(np.array([[1e308, 1e308, 0.0]]), np.array([[[1.0, 0.0], [0.0, 1.0]]]))
    assert ev.loglik.shape == (1, N)

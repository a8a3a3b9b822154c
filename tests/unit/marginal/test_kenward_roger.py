"""Kenward-Roger on the marginal path against a dense oracle (N x N, every second derivative by finite
differences, pbkrtest's formulas written out), on an unbalanced lme with random intercept and slope,
AR(1) residuals and a VarIdent variance function: groups of several sizes (several size buckets), all
three kinds of variance parameter (G entries, psi, sigma^2) and the directional second-derivative sum."""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.inference.kenward_roger import kr_adjust, kr_df_1d, kr_ftest
from memoe.marginal import AR1, VarIdent
from memoe.marginal.kenward_roger import kenward_roger_marginal, kr_pieces


def _data(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(40):
        n = int(rng.integers(2, 7))
        b0, b1 = rng.normal(0, 1.5), rng.normal(0, 0.4)
        e = 0.0
        arm = i % 2
        for t in range(n):
            e = 0.5 * e + rng.normal(0, 1.0)
            s = ("a", "b", "c")[t % 3]
            sd = {"a": 1.0, "b": 1.5, "c": 0.8}[s]
            y = 1 + 0.4 * t + 0.5 * arm * t + b0 + b1 * t + sd * e
            rows.append((f"s{i:02d}", t, str(arm), s, y))
    return pd.DataFrame(rows, columns=["id", "t", "arm", "s", "y"])


@cache
def _fit():
    return memoe.lme("y ~ t * arm + (t | id)", _data(), correlation=AR1(), weights=VarIdent("s")).fit()


def _dense_oracle(fit):
    """Phi, P, Q, R, W and both adjusted covariances from the dense marginal covariance."""
    pc = kr_pieces(fit)
    problem, layout = fit.model.problem, fit.model.layout
    N = problem.X.shape[0]
    tmap = problem.theta_map
    nth = problem.n_theta
    q = problem.Z.shape[1]

    def V(phi):
        g, psi, s2 = phi[:nth], phi[nth:-1], phi[-1]
        Gm = np.zeros((q, q))
        Gm[tmap.row, tmap.col] = g
        Gm[tmap.col, tmap.row] = g
        out = np.zeros((N, N))
        for b, R in zip(layout.buckets, problem.covariances(np.concatenate([np.zeros(nth), psi])), strict=True):
            for gi, rows in enumerate(b.rows):
                Zi = problem.Z[rows]
                out[np.ix_(rows, rows)] = s2 * R[gi] + Zi @ Gm @ Zi.T
        return out

    phi = pc.phi
    K = phi.size
    sc = np.maximum(np.abs(phi), 1.0)
    eye = np.eye(K)

    def d1(i):
        def D(h):
            return (V(phi + h * eye[i]) - V(phi - h * eye[i])) / (2 * h)

        h = 1e-3 * sc[i]
        return (4 * D(h / 2) - D(h)) / 3

    def d2(i, j):
        def D(hi, hj):
            if i == j:
                return (V(phi + hi * eye[i]) - 2 * V(phi) + V(phi - hi * eye[i])) / hi**2
            a, b = hi * eye[i], hj * eye[j]
            return (V(phi + a + b) - V(phi + a - b) - V(phi - a + b) + V(phi - a - b)) / (4 * hi * hj)

        hi, hj = 5e-3 * sc[i], 5e-3 * sc[j]
        return (4 * D(hi / 2, hj / 2) - D(hi, hj)) / 3

    X = problem.X
    Vi = np.linalg.inv(V(phi))
    Phi = np.linalg.inv(X.T @ Vi @ X)
    VX = Vi @ X
    dV = [d1(i) for i in range(K)]
    P = np.array([-VX.T @ Vr @ VX for Vr in dV])
    Pm = Vi - VX @ Phi @ VX.T
    IE2 = np.array([[np.sum((Pm @ a) * (Pm @ b).T) for b in dV] for a in dV])
    W = 2 * np.linalg.inv(IE2)
    Q = np.array([[VX.T @ a @ Vi @ b @ VX for b in dV] for a in dV])
    R = np.array([[VX.T @ d2(i, j) @ VX for j in range(K)] for i in range(K)])
    return pc, Phi, P, Q, R, W


@pytest.mark.slow
def test_batched_pieces_equal_the_dense_oracle():
    fit = _fit()
    assert len(fit.model.layout.buckets) >= 4  # groups of several sizes
    pc, Phi, P, Q, R, W = _dense_oracle(fit)
    scale = np.abs(Phi).max()
    np.testing.assert_allclose(pc.Phi, Phi, rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(pc.P, P, rtol=1e-6, atol=1e-8 * np.abs(P).max())
    np.testing.assert_allclose(pc.Q, Q, rtol=1e-6, atol=1e-8 * np.abs(Q).max())
    np.testing.assert_allclose(pc.W, W, rtol=1e-5, atol=1e-7 * np.abs(W).max())
    WR = np.einsum("rs,rsab->ab", W, R)
    np.testing.assert_allclose(pc.WR, WR, rtol=1e-5, atol=1e-6 * np.abs(WR).max())
    for variant, with_r in (("kenward-roger", True), ("kenward-roger-linear", False)):
        ours = kenward_roger_marginal(pc, variant)
        dense = kr_adjust(Phi, P, Q, W, R=R if with_r else None)
        np.testing.assert_allclose(ours.PhiA, dense.PhiA, rtol=1e-7, atol=1e-9 * scale)
        L = np.eye(Phi.shape[0])
        np.testing.assert_allclose(kr_df_1d(ours, L), kr_df_1d(dense, L), rtol=1e-6)
        beta = fit.fixef.to_numpy()
        a, b = kr_ftest(ours, L[1:], beta, np.zeros(3)), kr_ftest(dense, L[1:], beta, np.zeros(3))
        f_ours, f_dense = a.F, b.F
        assert f_ours == pytest.approx(f_dense, rel=1e-6)
        assert a.ddf == pytest.approx(b.ddf, rel=1e-6)
    # the second-derivative term matters here (AR(1) and VarIdent are nonlinear in psi)
    full, lin = (kenward_roger_marginal(pc, v).PhiA for v in ("kenward-roger", "kenward-roger-linear"))
    assert np.abs(np.diag(full) / np.diag(lin) - 1).max() > 1e-4


@pytest.mark.slow
def test_observed_information_is_the_hessian_of_the_reml_criterion():
    """information="observed": W = 2 H^-1 with H the Hessian of -2 l_R in phi, here by central
    differences of the dense REML criterion (beta profiled by GLS)."""
    fit = _fit()
    pc = kr_pieces(fit, information="observed")
    problem, layout = fit.model.problem, fit.model.layout
    X, y = problem.X, problem.y
    N = X.shape[0]
    tmap, nth, q = problem.theta_map, problem.n_theta, problem.Z.shape[1]

    def crit(phi):
        g, psi, s2 = phi[:nth], phi[nth:-1], phi[-1]
        Gm = np.zeros((q, q))
        Gm[tmap.row, tmap.col] = g
        Gm[tmap.col, tmap.row] = g
        V = np.zeros((N, N))
        for b, R in zip(layout.buckets, problem.covariances(np.concatenate([np.zeros(nth), psi])), strict=True):
            Zb = problem.Z[b.rows]
            V[b.rows[:, :, None], b.rows[:, None, :]] = s2 * R + Zb @ Gm @ np.swapaxes(Zb, 1, 2)
        Vi = np.linalg.inv(V)
        A = X.T @ Vi @ X
        beta = np.linalg.solve(A, X.T @ Vi @ y)
        e = y - X @ beta
        return np.linalg.slogdet(V)[1] + np.linalg.slogdet(A)[1] + e @ Vi @ e

    phi = pc.phi
    K = phi.size
    h = 1e-3 * np.maximum(np.abs(phi), 1.0)
    E = np.diag(h)

    def hess(E):
        H = np.empty((K, K))
        for i in range(K):
            for j in range(i + 1):
                H[i, j] = H[j, i] = (crit(phi + E[i] + E[j]) - crit(phi + E[i] - E[j]) - crit(phi - E[i] + E[j])
                                     + crit(phi - E[i] - E[j])) / (4 * E[i, i] * E[j, j])
        return H

    H = (4 * hess(E / 2) - hess(E)) / 3
    np.testing.assert_allclose(pc.W, 2 * np.linalg.inv(H), rtol=2e-4, atol=1e-6 * np.abs(pc.W).max())
    expected = kr_pieces(fit)
    assert np.abs(pc.W / expected.W - 1).max() > 1e-3  # observed and expected information differ here
    np.testing.assert_allclose(pc.P, expected.P, rtol=1e-12)


def test_kr_adjust_R_and_WR_agree():
    rng = np.random.default_rng(0)
    K, p = 3, 2
    A = rng.normal(size=(p, p))
    Phi = A @ A.T + np.eye(p)
    P = rng.normal(size=(K, p, p))
    P = P + P.transpose(0, 2, 1)
    Q = rng.normal(size=(K, K, p, p))
    R = rng.normal(size=(K, K, p, p))
    B = rng.normal(size=(K, K))
    W = B @ B.T
    a = kr_adjust(Phi, P, Q, W, R=R)
    b = kr_adjust(Phi, P, Q, W, WR=np.einsum("rs,rsab->ab", W, R))
    c = kr_adjust(Phi, P, Q, W)
    np.testing.assert_allclose(a.PhiA, b.PhiA, rtol=1e-12)
    # the R term enters as -Phi (sum W R) Phi / 2
    WR = np.einsum("rs,rsab->ab", W, R)
    expected = c.PhiA - 0.5 * Phi @ (0.5 * (WR + WR.T)) @ Phi
    np.testing.assert_allclose(a.PhiA, expected, rtol=1e-12, atol=1e-12)


def test_kr_pieces_names_and_values():
    fit = _fit()
    pc = kr_pieces(fit)
    assert pc.names[:3] == ["var((Intercept))", "cov(t, (Intercept))", "var(t)"]
    assert pc.names[-1] == "residual"
    assert pc.phi[-1] == pytest.approx(fit.sigma**2)
    np.testing.assert_allclose(pc.phi[[0, 2]], np.diag(fit.ranef_cov.to_numpy()), rtol=1e-12)
    assert len(pc.names) == pc.P.shape[0] == pc.W.shape[0]

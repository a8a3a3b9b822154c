"""Conditional AIC of a linear mixed model (Greven & Kneib 2010; Vaida & Blanchard 2005).

The conditional AIC scores the fit of the conditional means ``mu = X beta + Z b`` (the BLUP-level
predictions, "which subjects' curves are predicted well"), not the marginal likelihood:

    cAIC = -2 log f(y | beta_hat, b_hat, sigma_hat) + 2 (rho + 1)

``rho`` is the effective number of degrees of freedom of ``mu_hat`` as a function of ``y``, the
trace of ``d mu_hat / d y``; the ``+ 1`` counts the residual variance (cAIC4's ``sigma.penalty = 1``).

* ``method="greven-kneib"`` (default; R's ``cAIC4::cAIC`` for Gaussian ``lmer`` fits): ``mu_hat =
  H(theta_hat(y)) y`` with the covariance parameters estimated from ``y``, so (Greven & Kneib 2010,
  Theorem 3 and Section 4)

      rho = tr(H) + sum_j (d theta_hat_j / d y)' (dH / d theta_j) y,
      d theta_hat / d y' = -[d s / d theta']^-1 d s / d y'   (implicit function theorem on the
                                                              (RE)ML score s(theta, y) = 0)

  Parameters on the boundary (a variance at zero) are locally constant in ``y`` and do not enter the
  correction, as cAIC4 drops zero variance components.
* ``method="vaida-blanchard"``: ``rho = tr(H)`` (the covariance parameters treated as known: Vaida &
  Blanchard's asymptotic conditional AIC with the hat-matrix trace), which understates ``rho``.

With ``V0 = I + Z Lambda Lambda' Z'`` (residual variance ``sigma^2 / w`` on the working rows),
``P0 = V0^-1 - V0^-1 X (X' V0^-1 X)^-1 X' V0^-1``, ``H = I - P0``, ``e = P0 y = y - mu_hat``,
``q = y' P0 y``, ``N = n - p`` (REML) or ``n`` (ML), the profiled (RE)ML score is
``s_j = -tr(K V0_j) / 2 + N e' V0_j e / (2 q)`` with ``K = P0`` (REML) or ``V0^-1`` (ML) and
``V0_j = dV0 / d theta_j``; its derivatives are written out in :func:`_score_derivatives`.

The computation is dense in the number of observations (``n x n`` matrices), as in cAIC4; fits
with more than :data:`MAX_DENSE_N` observations are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.errors import ArgumentError, MemoeError

__all__ = ["MAX_DENSE_N", "ConditionalAIC", "caic"]

MAX_DENSE_N = 4000
METHODS = ("greven-kneib", "vaida-blanchard")
# a diagonal theta below this is on the boundary (lme4's isSingular tolerance)
BOUNDARY_TOL = 1e-4


@dataclass(frozen=True)
class ConditionalAIC:
    """A conditional AIC and its pieces.

    Attributes
    ----------
    caic : float
        ``-2 * loglik_conditional + 2 * df``.
    loglik_conditional : float
        ``sum_i log N(y_i; mu_hat_i, sigma_hat^2 / w_i)``.
    df : float
        The bias correction ``rho + 1`` (effective df of the conditional means plus the residual variance).
    rho : float
        Effective degrees of freedom of ``mu_hat`` (``trace_H + correction``).
    trace_H : float
        ``tr(H)`` at the estimates (covariance parameters fixed).
    correction : float
        The Greven-Kneib term for the estimated covariance parameters (0 for Vaida-Blanchard).
    method : str
    """

    caic: float
    loglik_conditional: float
    df: float
    rho: float
    trace_H: float
    correction: float
    method: str

    def as_series(self) -> pd.Series:
        return pd.Series(
            {"caic": self.caic, "loglik_conditional": self.loglik_conditional, "df": self.df, "rho": self.rho,
             "trace_H": self.trace_H, "correction": self.correction},
            name=self.method,
        )

    def __repr__(self) -> str:
        label = {
            "greven-kneib": "conditional AIC (Greven & Kneib 2010, with the correction for estimated covariance "
                            "parameters)",
            "vaida-blanchard": "conditional AIC (Vaida & Blanchard 2005, hat-matrix trace; covariance parameters "
                               "treated as known)",
        }[self.method]
        return (f"{label}: cAIC = {self.caic:.4f}, conditional logLik = {self.loglik_conditional:.4f}, "
                f"df = {self.df:.4f} (rho = {self.rho:.4f} = tr(H) {self.trace_H:.4f} + correction "
                f"{self.correction:.4f}, + 1 for sigma)")


def _dense_parts(fit):
    """Working ``X``, ``y``, dense ``Z``, ``Lambda`` and ``d Lambda / d theta_j`` of an LMM fit."""
    d = fit.design
    n = d.n
    cols, offsets = [], [0]
    for blk in d.blocks:
        q, lk = blk.q, blk.nlevels
        Zk = np.zeros((n, lk * q))
        rows = np.arange(n)
        for a in range(q):
            Zk[rows, blk.factor.codes * q + a] = blk.Z[:, a]
        cols.append(Zk)
        offsets.append(offsets[-1] + lk * q)
    Z = np.hstack(cols)
    lambdas = fit.relative_factors()
    Q = Z.shape[1]
    Lam = np.zeros((Q, Q))
    for k, blk in enumerate(d.blocks):
        Lam[offsets[k]:offsets[k + 1], offsets[k]:offsets[k + 1]] = np.kron(np.eye(blk.nlevels), lambdas[k])
    tmap = d.theta_map
    dLam = []
    for b, i, j in zip(tmap.block, tmap.row, tmap.col, strict=True):
        E = np.zeros((d.blocks[b].q, d.blocks[b].q))
        E[i, j] = 1.0
        D = np.zeros((Q, Q))
        D[offsets[b]:offsets[b + 1], offsets[b]:offsets[b + 1]] = np.kron(np.eye(d.blocks[b].nlevels), E)
        dLam.append(D)
    return d.X, d.y, Z, Lam, dLam


def _score_derivatives(X, y, Z, Lam, dLam, free, reml: bool):
    """``tr(H)``, the score's derivative in theta (Hs), in y (Sy) and ``G = [P0 V0_j e]`` for free theta."""
    n, p = X.shape
    ZL = Z @ Lam
    V0 = np.eye(n) + ZL @ ZL.T
    cV = np.linalg.cholesky(V0)
    V0inv = np.linalg.solve(cV.T, np.linalg.solve(cV, np.eye(n)))
    VX = V0inv @ X
    P0 = V0inv - VX @ np.linalg.solve(X.T @ VX, VX.T) if p else V0inv
    e = P0 @ y
    q = float(y @ e)
    N = n - p if reml else n
    K = P0 if reml else V0inv
    idx = np.flatnonzero(free)
    Vd = [Z @ (dLam[j] @ Lam.T + Lam @ dLam[j].T) @ Z.T for j in idx]
    KV = [K @ V for V in Vd]
    PV = [P0 @ V for V in Vd]
    a = np.array([e @ V @ e for V in Vd])
    G = np.column_stack([PVj @ e for PVj in PV]) if len(idx) else np.zeros((n, 0))
    Ze = Z.T @ e
    ZKZ = Z.T @ K @ Z
    m = len(idx)
    Hs = np.zeros((m, m))
    for r in range(m):
        for c in range(r, m):
            jr, jc = idx[r], idx[c]
            Vdd = dLam[jr] @ dLam[jc].T + dLam[jc] @ dLam[jr].T  # Z' (d2 V0 / d theta_r d theta_c) Z
            tr1 = float(np.sum(KV[c] * KV[r].T))
            tr2 = float(np.sum(ZKZ * Vdd))
            quad = -2.0 * float(e @ Vd[c] @ G[:, r]) + float(Ze @ Vdd @ Ze)
            Hs[r, c] = Hs[c, r] = 0.5 * tr1 - 0.5 * tr2 + 0.5 * N * (quad / q + a[r] * a[c] / q**2)
    Sy = (N * (G / q - np.outer(e, a) / q**2)).T if m else np.zeros((0, n))
    score = np.array([-0.5 * np.trace(KV[r]) + 0.5 * N * a[r] / q for r in range(m)])
    return float(n - np.trace(P0)), Hs, Sy, G, e, score


def caic(fit, method: str = "greven-kneib") -> ConditionalAIC:
    """Conditional AIC of a fitted LMM (see the module notes for the definitions).

    Parameters
    ----------
    fit : LmmResult
    method : {"greven-kneib", "vaida-blanchard"}
        ``"greven-kneib"``: conditional AIC of Greven & Kneib (2010) with the correction for the
        estimated covariance parameters (R's ``cAIC4::cAIC``); ``"vaida-blanchard"``: the hat-matrix
        trace with the covariance parameters treated as known (Vaida & Blanchard 2005).

    Returns
    -------
    ConditionalAIC

    Raises
    ------
    ArgumentError
        An unknown method.
    MemoeError
        More than :data:`MAX_DENSE_N` observations.

    Examples
    --------
    >>> import memoe
    >>> fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).fit()
    >>> c = fit.caic()
    >>> c.rho > c.trace_H
    True
    """
    key = method.strip().lower().replace("_", "-").replace(" ", "-") if isinstance(method, str) else method
    if key not in METHODS:
        raise ArgumentError(f"method={method!r} is not a conditional AIC memoe computes; choose one of {list(METHODS)}")
    n = fit.design.n
    if n > MAX_DENSE_N:
        raise MemoeError(
            f"the conditional AIC is computed with dense {n} x {n} matrices (as cAIC4); this fit has {n} observations, "
            f"more than the {MAX_DENSE_N} memoe accepts"
        )
    X, y, Z, Lam, dLam = _dense_parts(fit)
    tmap = fit.design.theta_map
    theta = np.asarray(fit.state.theta, dtype=float)
    # boundary parameters (a zero variance) stay at the boundary for small changes of y
    free = ~(tmap.is_diagonal & (theta < BOUNDARY_TOL))
    if key == "vaida-blanchard":
        free = np.zeros_like(free)
    trH, Hs, Sy, G, e, _ = _score_derivatives(X, y, Z, Lam, dLam, free, fit.reml)
    correction = 0.0
    if Hs.size:
        # d theta_hat / d y' = -Hs^-1 Sy;  correction = sum_j (d theta_j / d y)' (dH/d theta_j) y, with
        # (dH / d theta_j) y = P0 V0_j P0 y = G[:, j]
        D = -np.linalg.solve(Hs, Sy)
        correction = float(np.sum(D * G.T))
    rho = trH + correction
    s2 = fit.sigma**2
    lw = fit.design.log_weights
    # e is the working conditional residual sqrt(w) (y - mu)
    cll = -0.5 * n * math.log(2.0 * math.pi * s2) + 0.5 * lw - 0.5 * float(e @ e) / s2
    df = rho + 1.0
    return ConditionalAIC(
        caic=-2.0 * cll + 2.0 * df, loglik_conditional=cll, df=df, rho=rho, trace_H=trH, correction=correction,
        method=key,
    )

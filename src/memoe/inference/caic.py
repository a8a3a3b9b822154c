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

No ``n x n`` matrix is formed (cAIC4 forms them): ``V0^-1`` is applied by Woodbury's identity and
every trace lives in the random-effects space. Dense ``(Q, Q)`` and ``(n, Q)`` arrays remain (``Q``
random effects in all): fits beyond :data:`MAX_DENSE_Q` or :data:`MAX_DENSE_NQ` entries are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp

from memoe.errors import ArgumentError, MemoeError

__all__ = ["MAX_DENSE_NQ", "MAX_DENSE_Q", "ConditionalAIC", "caic"]

# dense (Q, Q) and (n, Q) arrays: Q random effects in all, n observations
MAX_DENSE_Q = 5000
MAX_DENSE_NQ = 5e7
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


def _parts(fit):
    """Working ``X``, ``y``, sparse ``Z``, ``Lambda`` and ``d Lambda / d theta_j`` of an LMM fit."""
    d = fit.design
    n = d.n
    cols, offsets = [], [0]
    rows = np.arange(n)
    for blk in d.blocks:
        q, lk = blk.q, blk.nlevels
        r = np.repeat(rows, q)
        c = (blk.factor.codes[:, None] * q + np.arange(q)[None, :]).ravel()
        cols.append(sp.csr_matrix((np.asarray(blk.Z, dtype=float).ravel(), (r, c)), shape=(n, lk * q)))
        offsets.append(offsets[-1] + lk * q)
    Z = sp.hstack(cols, format="csr")
    lambdas = fit.relative_factors()
    Lam = sp.block_diag([sp.kron(sp.identity(blk.nlevels), lambdas[k]) for k, blk in enumerate(d.blocks)],
                        format="csr")
    tmap = d.theta_map
    dLam = []
    for b, i, j in zip(tmap.block, tmap.row, tmap.col, strict=True):
        E = np.zeros((d.blocks[b].q, d.blocks[b].q))
        E[i, j] = 1.0
        parts = [sp.csr_matrix((blk.nlevels * blk.q, blk.nlevels * blk.q)) for blk in d.blocks]
        parts[b] = sp.kron(sp.identity(d.blocks[b].nlevels), E, format="csr")
        dLam.append(sp.block_diag(parts, format="csr"))
    return d.X, d.y, Z, Lam, dLam


def _score_derivatives(X, y, Z, Lam, dLam, free, reml: bool):
    """``tr(H)``, the score's derivative in theta (Hs), in y (Sy) and ``G = [P0 V0_j e]`` for free theta.

    Nothing of size n x n is formed: ``V0^-1 B = B - A M^-1 A' B`` with ``A = Z Lambda`` and
    ``M = I + A'A`` (Woodbury), and every trace and quadratic form of ``V0_j = Z D_j Z'``
    (``D_j = E_j Lambda' + Lambda E_j'``) is taken in the random-effects space through ``Z' K Z``.
    """
    n, p = X.shape
    A = (Z @ Lam).toarray()
    AtA = A.T @ A
    Mc = sla.cho_factor(np.eye(AtA.shape[0]) + AtA, lower=True)

    def m_solve(B):
        return sla.cho_solve(Mc, B)

    def v_inv(B):
        return B - A @ m_solve(A.T @ B)

    VX = v_inv(X) if p else np.zeros((n, 0))
    XVX = X.T @ VX

    def p0(B):
        out = v_inv(B)
        if p:
            out = out - VX @ np.linalg.solve(XVX, VX.T @ B)
        return out

    Zd = Z.toarray()
    PZ = p0(Zd)
    ZPZ = Zd.T @ PZ
    ZKZ = ZPZ if reml else Zd.T @ v_inv(Zd)
    e = p0(y[:, None])[:, 0]
    q = float(y @ e)
    N = n - p if reml else n
    # tr(P0) = tr(V0^-1) - tr((X'V0^-1 X)^-1 X'V0^-2 X),  tr(V0^-1) = n - tr(M^-1 A'A)
    tr_vinv = n - float(np.trace(m_solve(AtA)))
    tr_p0 = tr_vinv - (float(np.trace(np.linalg.solve(XVX, VX.T @ VX))) if p else 0.0)
    idx = np.flatnonzero(free)
    Lt = Lam.T
    D = [(dLam[j] @ Lt + Lam @ dLam[j].T).toarray() for j in idx]
    Ze = Zd.T @ e
    DZe = [Dj @ Ze for Dj in D]
    a = np.array([Ze @ v for v in DZe])
    G = np.column_stack([PZ @ v for v in DZe]) if len(idx) else np.zeros((n, 0))
    KD = [ZKZ @ Dj for Dj in D]
    m = len(idx)
    Hs = np.zeros((m, m))
    for r in range(m):
        for c in range(r, m):
            jr, jc = idx[r], idx[c]
            Vdd = (dLam[jr] @ dLam[jc].T + dLam[jc] @ dLam[jr].T).toarray()  # Z' (d2 V0 / d theta_r d theta_c) Z
            tr1 = float(np.sum(KD[c] * KD[r].T))
            tr2 = float(np.sum(ZKZ * Vdd))
            quad = -2.0 * float(DZe[c] @ ZPZ @ DZe[r]) + float(Ze @ Vdd @ Ze)
            Hs[r, c] = Hs[c, r] = 0.5 * tr1 - 0.5 * tr2 + 0.5 * N * (quad / q + a[r] * a[c] / q**2)
    Sy = (N * (G / q - np.outer(e, a) / q**2)).T if m else np.zeros((0, n))
    score = np.array([-0.5 * np.trace(KD[r]) + 0.5 * N * a[r] / q for r in range(m)])
    return float(n - tr_p0), Hs, Sy, G, e, score


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
        More random effects or entries than :data:`MAX_DENSE_Q` / :data:`MAX_DENSE_NQ`.

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
    nre = sum(b.nlevels * b.q for b in fit.design.blocks)
    if nre > MAX_DENSE_Q or n * nre > MAX_DENSE_NQ:
        raise MemoeError(
            f"the conditional AIC works with dense matrices of the random effects ({nre} x {nre}) and of "
            f"observations x random effects ({n} x {nre}); memoe accepts at most {MAX_DENSE_Q} random effects "
            f"and {MAX_DENSE_NQ:.0e} entries"
        )
    X, y, Z, Lam, dLam = _parts(fit)
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

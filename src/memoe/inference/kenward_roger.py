"""Kenward-Roger adjusted covariance and F test, as pbkrtest computes them (Halekoh & Hojsgaard 2014).

The variance parameters are the natural-scale ``phi`` of :mod:`memoe.inference.marginal`
(``V = sum_r phi_r G_r``; each ``G_r`` is linear, so the second-derivative term ``R_rs`` vanishes).
With ``Phi = (X' V^-1 X)^-1``, ``P_r = -X' V^-1 G_r V^-1 X``, ``Q_rs = X' V^-1 G_r V^-1 G_s V^-1 X``::

    IE2[r, s] = tr(V^-1 G_r V^-1 G_s) - 2 tr(Phi Q_rs) + tr(Phi P_r Phi P_s)    (= tr(P G_r P G_s))
    W         = 2 IE2^-1                                                     (generalised inverse if singular)
    U         = sum_rs W_rs (Q_rs - P_r Phi P_s)
    Phi_A     = Phi + 2 Phi U Phi                                            (pbkrtest::vcovAdj)

For ``H0: L beta = beta0`` with ``q = rank(L)``, ``Theta = L' (L Phi L')^-1 L``, ``U_r = Theta Phi P_r Phi``::

    A1 = sum_rs W_rs tr(U_r) tr(U_s),   A2 = sum_rs W_rs tr(U_r U_s),   B = (A1 + 6 A2) / (2q)
    g  = ((q+1) A1 - (q+4) A2) / ((q+2) A2),   c1, c2, c3 = g, q - g, q + 2 - g  over  3q + 2(1 - g)
    rho = ((1 - A2/q) / (1 - c2 B))^2 (1 + c1 B) / (q (1 - c3 B)),   ddf = 4 + (q + 2) / (q rho - 1)
    F   = scale * W / q,  W = (L b - beta0)' (L Phi_A L')^-1 (L b - beta0),  scale = ddf (1 - A2/q) / (ddf - 2)

(``scale = 1`` when ``|ddf - 2| < 1e-2``). lmerTest reports ``Mean Sq = F_unscaled sigma^2`` and the
scaled F with its p-value. A one-row contrast in lmerTest's coefficient table uses
``t = l'b / sqrt(l' Phi_A l)`` with the same ddf for ``q = 1`` (``pbkrtest::Lb_ddf``), unscaled.

pbkrtest inverts the n x n marginal covariance; here every term comes from
:func:`memoe.inference.marginal.marginal_moments` (batched per subject for one grouping factor).

The algebra is shared with the ``gls`` / ``lme`` path (:mod:`memoe.marginal.kenward_roger`), whose
covariance may be nonlinear in its parameters: :func:`kr_adjust` takes ``(Phi, P, Q, W)`` and the
optional second-derivative term ``R_rs = X' V^-1 (d^2 V / dphi_r dphi_s) V^-1 X`` (Kenward & Roger
1997, eq. 3: ``Phi_A = Phi + 2 Phi [sum W_rs (Q_rs - P_r Phi P_s - R_rs / 4)] Phi``); :func:`kr_df_1d`
and :func:`kr_ftest` need only ``Phi``, ``P``, ``W`` and ``Phi_A``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memoe.inference.marginal import MarginalMoments

__all__ = [
    "KRTest",
    "KenwardRoger",
    "kenward_roger",
    "kr_adjust",
    "kr_df_1d",
    "kr_ftest",
    "kr_information",
    "kr_weights",
]

# pbkrtest switches to a generalised inverse of IE2 when its smallest |eigenvalue| is below this
_COND_TOL = 1e-10


@dataclass(frozen=True)
class KenwardRoger:
    """The adjusted covariance and the pieces of the KR df.

    Attributes
    ----------
    Phi : numpy.ndarray, shape (p, p)
        Model-based covariance of beta.
    PhiA : numpy.ndarray, shape (p, p)
        Kenward-Roger adjusted covariance (``pbkrtest::vcovAdj``).
    P : numpy.ndarray, shape (R, p, p)
    W : numpy.ndarray, shape (R, R)
        Asymptotic covariance of the natural variance parameters from the expected REML information.
    names : list of str
        Natural variance parameter names (R).
    """

    Phi: np.ndarray
    PhiA: np.ndarray
    P: np.ndarray
    W: np.ndarray
    names: list[str]


def kr_weights(IE2: np.ndarray) -> np.ndarray:
    """``W = 2 IE2^-1``, the asymptotic covariance of the variance parameters (pbkrtest).

    ``IE2 = tr(P G_r P G_s)`` is twice the expected REML information; pbkrtest switches to a
    generalised inverse when its smallest absolute eigenvalue is below 1e-10 (a boundary fit).
    """
    IE2 = 0.5 * (IE2 + IE2.T)
    condi = float(np.min(np.abs(np.linalg.eigvalsh(IE2)))) if IE2.size else 1.0
    W = 2.0 * (np.linalg.inv(IE2) if condi > _COND_TOL else np.linalg.pinv(IE2))
    return 0.5 * (W + W.T)


def kr_information(Phi: np.ndarray, P: np.ndarray, Q: np.ndarray, Ktrace: np.ndarray) -> np.ndarray:
    """pbkrtest's ``IE2[r, s] = tr(V^-1 G_r V^-1 G_s) - 2 tr(Phi Q_rs) + tr(Phi P_r Phi P_s)``, shape (R, R).

    Equals ``tr(Pm G_r Pm G_s)`` with ``Pm = V^-1 - V^-1 X Phi X' V^-1`` (twice the expected REML
    information of the variance parameters).
    """
    PhiP = np.einsum("ab,rbc->rac", Phi, P)
    t2 = np.einsum("rab,sba->rs", PhiP, PhiP)
    tQ = np.einsum("ab,rsba->rs", Phi, Q)
    return Ktrace - 2.0 * tQ + t2


def kr_adjust(
    Phi: np.ndarray,
    P: np.ndarray,
    Q: np.ndarray,
    W: np.ndarray,
    R: np.ndarray | None = None,
    WR: np.ndarray | None = None,
    names: list[str] | None = None,
) -> KenwardRoger:
    """The Kenward-Roger adjusted covariance of beta (Kenward & Roger 1997, eq. 3; pbkrtest, mmrm).

    Parameters
    ----------
    Phi : numpy.ndarray, shape (p, p)
        ``(X' V^-1 X)^-1``.
    P : numpy.ndarray, shape (R, p, p)
        ``P_r = -X' V^-1 V_r V^-1 X`` (``V_r = dV / dphi_r``).
    Q : numpy.ndarray, shape (R, R, p, p)
        ``Q_rs = X' V^-1 V_r V^-1 V_s V^-1 X``.
    W : numpy.ndarray, shape (R, R)
        Asymptotic covariance of the variance parameters.
    R : numpy.ndarray, shape (R, R, p, p), optional
        ``R_rs = X' V^-1 (d^2 V / dphi_r dphi_s) V^-1 X``; omitted (zero) for a covariance linear in phi
        and in the "linear" approximation.
    WR : numpy.ndarray, shape (p, p), optional
        ``sum_rs W_rs R_rs`` already contracted (instead of ``R``).
    names : list of str, optional
        Variance parameter names.

    Returns
    -------
    KenwardRoger
        ``PhiA = Phi + 2 Phi [sum_rs W_rs (Q_rs - P_r Phi P_s - R_rs / 4)] Phi``.
    """
    PPhiP = np.einsum("rab,bc,scd->rsad", P, Phi, P, optimize=True)
    U = np.einsum("rs,rsab->ab", W, Q - PPhiP)
    if R is not None:
        U = U - 0.25 * np.einsum("rs,rsab->ab", W, R)
    if WR is not None:
        U = U - 0.25 * WR
    PhiA = Phi + 2.0 * Phi @ U @ Phi
    return KenwardRoger(
        Phi=Phi, PhiA=0.5 * (PhiA + PhiA.T), P=P, W=W, names=list(names) if names is not None else []
    )


def kenward_roger(mom: MarginalMoments) -> KenwardRoger:
    """pbkrtest's ``vcovAdj`` from the marginal moments of a REML fit (natural parameters: linear, R = 0)."""
    W = kr_weights(mom.reml_information())
    return kr_adjust(mom.Phi, mom.P, mom.Q, W, names=mom.params.names)


def _ddf_from_A(A1: np.ndarray | float, A2: np.ndarray | float, q: int) -> tuple[np.ndarray, np.ndarray]:
    """pbkrtest's ddf and F scaling from A1, A2 (vectorised over contrasts)."""
    A1 = np.asarray(A1, dtype=float)
    A2 = np.asarray(A2, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        B = (A1 + 6.0 * A2) / (2.0 * q)
        g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
        den = 3.0 * q + 2.0 * (1.0 - g)
        c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
        V0 = 1.0 + c1 * B
        V1 = 1.0 - c2 * B
        V2 = 1.0 - c3 * B
        V0 = np.where(np.abs(V0) < 1e-10, 0.0, V0)
        num = 1.0 - A2 / q
        # pbkrtest's .divZero: 0/0 (both below 1e-14) counts as 1
        ratio = np.where((np.abs(num) < 1e-14) & (np.abs(V1) < 1e-14), 1.0, num / V1)
        rho = ratio**2 * V0 / V2 / q
        ddf = 4.0 + (q + 2.0) / (q * rho - 1.0)
        # pbkrtest: "this does not work because df2-2 can be about 0.1"
        scale = np.where(np.abs(ddf - 2.0) < 1e-2, 1.0, ddf * (1.0 - A2 / q) / (ddf - 2.0))
    return ddf, scale


def kr_df_1d(kr: KenwardRoger, L: np.ndarray) -> np.ndarray:
    """KR ddf of each one-row contrast (``pbkrtest::Lb_ddf``), shape (c,) for ``L`` of shape (c, p).

    For a single row ``l``, ``Theta`` has rank one and ``tr(U_r U_s) = tr(U_r) tr(U_s)``, so
    ``A1 = A2 = t' W t`` with ``t_r = l' Phi P_r Phi l / l' Phi l``.
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    PhiL = L @ kr.Phi  # (c, p)
    var = np.einsum("cp,cp->c", PhiL, L)
    t = np.einsum("cp,rpq,cq->cr", PhiL, kr.P, PhiL) / var[:, None]
    A = np.einsum("cr,rs,cs->c", t, kr.W, t)
    ddf, _ = _ddf_from_A(A, A, 1)
    return ddf


@dataclass(frozen=True)
class KRTest:
    """Result of :func:`kr_ftest` (pbkrtest's ``KRmodcomp`` "Ftest" row)."""

    F: float
    ndf: int
    ddf: float
    scale: float
    F_unscaled: float


def kr_ftest(kr: KenwardRoger, L: np.ndarray, beta: np.ndarray, rhs: np.ndarray) -> KRTest:
    """Kenward-Roger scaled F test of ``L beta = rhs``.

    Parameters
    ----------
    kr : KenwardRoger
    L : numpy.ndarray, shape (m, p)
        Full row rank (see :func:`memoe.inference.contrasts.reduce_rank`).
    beta : numpy.ndarray, shape (p,)
    rhs : numpy.ndarray, shape (m,)
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    q = int(np.linalg.matrix_rank(L))
    Phi = kr.Phi
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    U = np.einsum("ab,bc,rcd,de->rae", Theta, Phi, kr.P, Phi, optimize=True)
    tr = np.einsum("raa->r", U)
    A1 = float(tr @ kr.W @ tr)
    A2 = float(np.einsum("rs,rab,sba->", kr.W, U, U, optimize=True))
    ddf, scale = _ddf_from_A(A1, A2, q)
    diff = L @ beta - rhs
    wald = float(diff @ np.linalg.solve(L @ kr.PhiA @ L.T, diff))
    Fu = wald / q
    return KRTest(F=float(scale) * Fu, ndf=q, ddf=float(ddf), scale=float(scale), F_unscaled=Fu)

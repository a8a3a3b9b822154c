"""Satterthwaite denominator degrees of freedom as lmerTest computes them (Kuznetsova et al. 2017).

lmerTest works on the variance parameters ``varpar = (theta, sigma)`` (lme4's relative factor
entries and the residual standard deviation):

* ``A = 2 H^+``, the asymptotic covariance of ``varpar``, with ``H`` the Hessian of the REML (or ML)
  deviance as a function of ``(theta, sigma)`` *not* profiled over sigma (lmerTest's
  ``devfun_vp``; beta is at its conditional optimum). ``H^+`` keeps eigenvalues above ``1e-8``.
* ``J_t = d Phi / d varpar_t``, the Jacobian of ``Phi = Var(beta) = (X' V^-1 X)^-1``.
* For a contrast ``l``: ``df = 2 (l' Phi l)^2 / (g' A g)`` with ``g_t = l' J_t l``.
* For a q-row contrast ``L``: eigen-decompose ``L Phi L' = U diag(d) U'``, one t-statistic and its
  df ``nu_m`` per eigenvector, ``F = sum_m t_m^2 / q`` and ``ddf = 2 E / (E - q)`` with
  ``E = sum_m nu_m / (nu_m - 2)`` (2 if any ``nu_m <= 2``; the mean if all ``nu_m`` agree).

lmerTest differentiates numerically (numDeriv). Here the derivatives are analytic: with the
natural parameters ``phi`` of :mod:`memoe.inference.marginal` (``V = sum_r phi_r G_r``)::

    d dev / d phi_r       = tr(P G_r) - r' G_r r                 (REML; ML: tr(V^-1 G_r) - r' G_r r)
    d2 dev / d phi_r phi_s = -tr(P G_r P G_s) + 2 r' G_r P G_s r  (ML: first term tr(V^-1 G_r V^-1 G_s))
    d Phi / d phi_r       = Phi X' V^-1 G_r V^-1 X Phi

(``r = V^-1 (y - X beta)``, ``P = V^-1 - V^-1 X Phi X' V^-1``), and the chain rule through
``phi = sigma^2 (lambda lambda')[a, b]``, ``phi_res = sigma^2`` gives the ``(theta, sigma)`` versions,
including the second-derivative term of the map (the fit need not be exactly stationary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from memoe.inference.marginal import MarginalMoments

__all__ = [
    "HESSIAN_TOL",
    "VarparInference",
    "fstat_ddf",
    "satterthwaite_f",
    "satterthwaite_t",
    "varpar_deviance",
    "varpar_inference",
]

# lmerTest's tolerance on the eigenvalues of the Hessian (as_lmerModLT(tol = 1e-8))
HESSIAN_TOL = 1e-8


@dataclass(frozen=True)
class VarparInference:
    """lmerTest's ingredients for Satterthwaite's method.

    Attributes
    ----------
    names : list of str
        theta names (lme4's) then ``"sigma"``; k entries.
    varpar : numpy.ndarray, shape (k,)
    gradient : numpy.ndarray, shape (k,)
        Gradient of the deviance in ``varpar`` (about zero at an interior optimum).
    hessian : numpy.ndarray, shape (k, k)
    vcov_varpar : numpy.ndarray, shape (k, k)
        ``2 H^+``.
    jacobian : numpy.ndarray, shape (k, p, p)
        ``d Phi / d varpar_t``.
    Phi : numpy.ndarray, shape (p, p)
    n_nonpositive : int
        Hessian eigenvalues at or below :data:`HESSIAN_TOL` (lmerTest warns about these).
    """

    names: list[str]
    varpar: np.ndarray
    gradient: np.ndarray
    hessian: np.ndarray
    vcov_varpar: np.ndarray
    jacobian: np.ndarray
    Phi: np.ndarray
    n_nonpositive: int


def _chain(fit, mom: MarginalMoments) -> tuple[np.ndarray, np.ndarray]:
    """Jacobian ``J`` (R, k) and second derivatives ``D2`` (R, k, k) of ``phi`` in ``(theta, sigma)``."""
    tmap = fit.design.theta_map
    lambdas = fit.relative_factors()
    sigma = fit.sigma
    T = tmap.size
    k = T + 1
    R = T + 1
    blk, row, col = np.asarray(tmap.block), np.asarray(tmap.row), np.asarray(tmap.col)
    J = np.zeros((R, k))
    D2 = np.zeros((R, k, k))
    for r in range(T):
        b, a, c = blk[r], row[r], col[r]
        lam = lambdas[b]
        D = lam @ lam.T
        for t in range(T):
            if blk[t] != b:
                continue
            it, jt = row[t], col[t]
            # d(lam lam')/d theta_t = E_t lam' + lam E_t',  E_t = e_it e_jt'
            dD = (lam[c, jt] if a == it else 0.0) + (lam[a, jt] if c == it else 0.0)
            J[r, t] = sigma**2 * dD
            D2[r, t, T] = D2[r, T, t] = 2.0 * sigma * dD
            for u in range(T):
                if blk[u] != b or col[u] != jt:
                    continue
                iu = row[u]
                # (E_t E_u' + E_u E_t')[a, c] with E_t E_u' = e_it e_iu' when jt == ju
                D2[r, t, u] = sigma**2 * (float(a == it and c == iu) + float(a == iu and c == it))
        J[r, T] = 2.0 * sigma * D[a, c]
        D2[r, T, T] = 2.0 * D[a, c]
    J[T, T] = 2.0 * sigma
    D2[T, T, T] = 2.0
    return J, D2


def varpar_inference(fit, mom: MarginalMoments) -> VarparInference:
    """Gradient, Hessian and ``2 H^+`` of the deviance in ``(theta, sigma)``, and ``d Phi / d varpar``.

    Parameters
    ----------
    fit : LmmResult
    mom : MarginalMoments
        At the fit's parameters (:func:`memoe.inference.marginal.marginal_moments`).

    Returns
    -------
    VarparInference
    """
    Phi = mom.Phi
    # r' G_r P G_s r = r' G_r V^-1 G_s r - (X' V^-1 G_r r)' Phi (X' V^-1 G_s r)
    rGPGr = mom.rGVGr - mom.XVGr @ Phi @ mom.XVGr.T
    if fit.reml:
        trPG = mom.trVG + np.einsum("ab,rba->r", Phi, mom.P)
        g_phi = trPG - mom.rGr
        H_phi = -mom.reml_information() + 2.0 * rGPGr
    else:
        g_phi = mom.trVG - mom.rGr
        H_phi = -mom.Ktrace + 2.0 * rGPGr
    J, D2 = _chain(fit, mom)
    grad = J.T @ g_phi
    hess = J.T @ H_phi @ J + np.einsum("r,rtu->tu", g_phi, D2)
    hess = 0.5 * (hess + hess.T)
    evals, evecs = np.linalg.eigh(hess)
    pos = evals > HESSIAN_TOL
    h_inv = (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    # d Phi / d phi_r = -Phi P_r Phi (P_r = -X' V^-1 G_r V^-1 X)
    dPhi = -np.einsum("ab,rbc,cd->rad", Phi, mom.P, Phi, optimize=True)
    jac = np.einsum("rt,rab->tab", J, dPhi)
    names = [*fit.design.theta_map.names, "sigma"]
    varpar = np.append(fit.state.theta, fit.sigma)
    return VarparInference(
        names=names,
        varpar=varpar,
        gradient=grad,
        hessian=hess,
        vcov_varpar=2.0 * h_inv,
        jacobian=jac,
        Phi=Phi,
        n_nonpositive=int(np.sum(~pos)),
    )


def varpar_deviance(fit, varpar: np.ndarray) -> float:
    """lmerTest's ``devfun_vp``: the (RE)ML deviance at ``(theta, sigma)``, beta at its conditional optimum.

    Parameters
    ----------
    fit : LmmResult
    varpar : numpy.ndarray, shape (k,)
        theta (lme4 order) then sigma.

    Notes
    -----
    ML: ``logdet_Z + pwrss / sigma^2 + n log(2 pi sigma^2)``; REML adds
    ``logdet_X - p log(2 pi sigma^2)``. Evaluated from the penalised least-squares factor; used
    as the finite-difference oracle of the analytic derivatives.
    """
    varpar = np.asarray(varpar, dtype=float)
    theta, sigma = varpar[:-1], float(varpar[-1])
    f = fit.model.problem.factorize(theta)
    n, p = fit.design.n, fit.design.p
    s2 = sigma * sigma
    dev = f.logdet_Z + f.pwrss / s2 + n * math.log(2.0 * math.pi * s2)
    if fit.reml:
        dev += f.logdet_X - p * math.log(2.0 * math.pi * s2)
    return float(dev)


def satterthwaite_t(vi: VarparInference, L: np.ndarray) -> np.ndarray:
    """Satterthwaite df of each one-row contrast (lmerTest's ``contest1D``).

    Parameters
    ----------
    vi : VarparInference
    L : numpy.ndarray, shape (c, p)
        One contrast per row.

    Returns
    -------
    numpy.ndarray, shape (c,)
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    var_con = np.einsum("cp,pq,cq->c", L, vi.Phi, L)
    grad = np.einsum("cp,tpq,cq->ct", L, vi.jacobian, L)
    denom = np.einsum("ct,tu,cu->c", grad, vi.vcov_varpar, grad)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * var_con**2 / denom


def fstat_ddf(nu: np.ndarray, tol: float = 1e-8) -> float:
    """Denominator df of an F built from t-statistics with df ``nu`` (lmerTest's ``get_Fstat_ddf``)."""
    nu = np.asarray(nu, dtype=float)
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(nu.mean())
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * E / (E - nu.size)


def satterthwaite_f(
    vi: VarparInference, L: np.ndarray, beta: np.ndarray, rhs: np.ndarray, eps: float = math.sqrt(np.finfo(float).eps)
) -> tuple[float, int, float]:
    """F test of ``L beta = rhs`` with Satterthwaite's ddf (lmerTest's ``contestMD``).

    Parameters
    ----------
    vi : VarparInference
    L : numpy.ndarray, shape (m, p)
    beta : numpy.ndarray, shape (p,)
    rhs : numpy.ndarray, shape (m,)
    eps : float
        Relative tolerance on the eigenvalues of ``L Phi L'`` defining its rank q.

    Returns
    -------
    F : float
    q : int
        Numerator df (rank of ``L Phi L'``).
    ddf : float
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    VL = L @ vi.Phi @ L.T
    d, U = np.linalg.eigh(0.5 * (VL + VL.T))
    order = np.argsort(d)[::-1]  # decreasing, as R's eigen()
    d, U = d[order], U[:, order]
    tol = max(eps * d[0], 0.0)
    q = int(np.sum(d > tol))
    if q == 0:
        return math.nan, 0, math.nan
    PtL = U[:, :q].T @ L
    rhs_t = U[:, :q].T @ np.asarray(rhs, dtype=float)
    t2 = (PtL @ beta - rhs_t) ** 2 / d[:q]
    nu = satterthwaite_t(vi, PtL)
    return float(t2.sum() / q), q, fstat_ddf(nu)

"""Satterthwaite degrees of freedom for ``gls`` / ``lme`` fits with residual structures.

The approach of lmerTest and R's mmrm, on the marginal path. With phi = (psi, sigma) the variance
parameters (psi = the optimiser's vector [theta, correlation u, variance u], unconstrained) and

    C(phi) = sigma^2 (X' W(psi)^-1 X)^-1,          -2 l(phi) = f(phi)   (beta profiled out),

a contrast l (p,) has Var(l' beta) ~ v = l' C l, and

    df = 2 v^2 / (g' A g),   g_k = l' (dC / dphi_k) l,   A = 2 H^-1,   H = d^2 f / dphi dphi'

(A is the asymptotic covariance of phi-hat). f is the REML criterion for REML fits and -2 log L for
ML fits, not profiled over sigma:

    REML: f = logdet W + (N - p) log sigma^2 + log det(R_X R_X') + rss(psi) / sigma^2 + (N - p) log 2 pi
    ML:   f = logdet W + N log sigma^2 + rss(psi) / sigma^2 + N log 2 pi

The df do not depend on how psi is parametrised (g and A transform together), so the unconstrained
scale the optimiser uses serves. H and dC / dphi are central finite differences of the objective the
fit minimised (no analytic derivatives of the correlation structures are needed); for a fit whose
variance parameters sit on a boundary the Hessian is singular and a pseudo-inverse is used.

For an ``lme`` fit without residual structure these are lmerTest's Satterthwaite df for the same
model (checked in the tests against lmerTest's reference values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

__all__ = ["SatterthwaiteInputs", "satterthwaite_df", "satterthwaite_inputs"]

_LOG2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class SatterthwaiteInputs:
    """What every contrast's df needs.

    Attributes
    ----------
    C : numpy.ndarray, shape (p, p)
        Covariance of beta-hat at the estimates (sigma^2 (X' W^-1 X)^-1, no nlme N/(N - p) factor).
    dC : numpy.ndarray, shape (k, p, p)
        Its derivatives with respect to the k variance parameters (psi, sigma).
    A : numpy.ndarray, shape (k, k)
        Asymptotic covariance of the variance parameters, 2 H^-1.
    """

    C: np.ndarray
    dC: np.ndarray
    A: np.ndarray


def _pieces(problem, psi: np.ndarray):
    """(logdet W, log det(R_X R_X'), rss, (X' W^-1 X)^-1) at psi, or None where W is not PD."""
    w = problem._whiten(psi)
    if w is None:
        return None
    _, XYt, logdet = w
    R = problem._reduce(XYt)
    if R is None:
        return None
    p = problem.p
    RX = R[:p, :p]
    RXinv = sla.solve_triangular(RX, np.eye(p), lower=True)
    return logdet, 2.0 * float(np.sum(np.log(np.diag(RX)))), float(R[p, p] ** 2), RXinv.T @ RXinv


def _objective(problem, phi: np.ndarray, reml: bool) -> float:
    psi, sigma = phi[:-1], phi[-1]
    got = _pieces(problem, psi)
    if got is None or not sigma > 0:
        return np.inf
    logdet, logdet_x, rss, _ = got
    s2 = sigma * sigma
    n = problem.N - problem.p if reml else problem.N
    out = logdet + n * (np.log(s2) + _LOG2PI) + rss / s2
    return float(out + logdet_x) if reml else float(out)


def _covariance(problem, phi: np.ndarray) -> np.ndarray:
    got = _pieces(problem, phi[:-1])
    if got is None:
        raise np.linalg.LinAlgError("the marginal covariance is not positive definite near the estimates")
    return phi[-1] ** 2 * got[3]


def _steps(phi: np.ndarray, rel: float) -> np.ndarray:
    return rel * np.maximum(np.abs(phi), 0.1)


def satterthwaite_inputs(fit, rel_step: float = 1e-3) -> SatterthwaiteInputs:
    """Covariance of beta, its parameter derivatives and the variance parameters' covariance.

    Parameters
    ----------
    fit : MarginalResult
    rel_step : float
        Central-difference step relative to each parameter (at least 0.1 x ``rel_step``).
    """
    problem = fit.model.problem
    phi = np.append(fit.params_unconstrained, fit.sigma)
    k = phi.size
    h = _steps(phi, rel_step)
    f0 = _objective(problem, phi, fit.reml)
    H = np.empty((k, k))
    E = np.diag(h)
    for i in range(k):
        fp = _objective(problem, phi + E[i], fit.reml)
        fm = _objective(problem, phi - E[i], fit.reml)
        H[i, i] = (fp - 2.0 * f0 + fm) / (h[i] * h[i])
        for j in range(i):
            fpp = _objective(problem, phi + E[i] + E[j], fit.reml)
            fpm = _objective(problem, phi + E[i] - E[j], fit.reml)
            fmp = _objective(problem, phi - E[i] + E[j], fit.reml)
            fmm = _objective(problem, phi - E[i] - E[j], fit.reml)
            H[i, j] = H[j, i] = (fpp - fpm - fmp + fmm) / (4.0 * h[i] * h[j])
    if not np.all(np.isfinite(H)):
        raise np.linalg.LinAlgError("the (RE)ML criterion is not finite near the estimates")
    A = 2.0 * np.linalg.pinv(0.5 * (H + H.T), rcond=1e-10, hermitian=True)
    C = _covariance(problem, phi)
    dC = np.stack([(_covariance(problem, phi + E[i]) - _covariance(problem, phi - E[i])) / (2.0 * h[i])
                   for i in range(k)])
    return SatterthwaiteInputs(C=C, dC=dC, A=A)


def satterthwaite_df(inputs: SatterthwaiteInputs, L: np.ndarray) -> np.ndarray:
    """Satterthwaite df of each row of the contrast matrix ``L`` (m, p)."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    v = np.einsum("mi,ij,mj->m", L, inputs.C, L)
    g = np.einsum("mi,kij,mj->mk", L, inputs.dC, L)
    denom = np.einsum("mk,kl,ml->m", g, inputs.A, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * v * v / denom, np.inf)


def satterthwaite_f(inputs: SatterthwaiteInputs, L: np.ndarray, estimate: np.ndarray) -> tuple[float, int, float]:
    """F statistic, numerator and Satterthwaite denominator df of ``L beta = 0`` (lmerTest's contestMD).

    ``L C L'`` is diagonalised; each eigen-direction is a one-df contrast with its own df nu_i, and
    the F statistic's denominator df is ``2 E / (E - q)`` with ``E = sum nu_i / (nu_i - 2)`` over
    nu_i > 2 (Fai & Cornelius 1996).

    Parameters
    ----------
    inputs : SatterthwaiteInputs
    L : numpy.ndarray, shape (q, p)
        Full row rank.
    estimate : numpy.ndarray, shape (p,)
        beta-hat.
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    q = L.shape[0]
    M = L @ inputs.C @ L.T
    evals, P = np.linalg.eigh(0.5 * (M + M.T))
    evals, P = evals[::-1], P[:, ::-1]
    Lt = P.T @ L
    z = Lt @ estimate
    F = float(np.sum(z * z / evals) / q)
    nu = satterthwaite_df(inputs, Lt)
    if q == 1:
        return F, 1, float(nu[0])
    big = nu > 2
    E = float(np.sum(nu[big] / (nu[big] - 2.0)))
    ddf = 2.0 * E / (E - q) if q < E else np.inf
    return F, q, float(ddf)

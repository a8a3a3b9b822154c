"""The profiled deviance formulas (Bates, Maechler, Bolker & Walker 2015, eqs. 34 and 41)."""

from __future__ import annotations

import math

__all__ = ["profiled_deviance", "sigma_hat"]

LOG_2PI = math.log(2.0 * math.pi)


def profiled_deviance(logdet_Z: float, logdet_X: float, pwrss: float, n: float, p: int, reml: bool) -> float:
    """-2 log-likelihood (ML) or the REML criterion, with beta and sigma profiled out.

    Parameters
    ----------
    logdet_Z : float
        ``log det(Lambda' Z' W Z Lambda + W_g)``, the random-effects block of the Cholesky factor.
    logdet_X : float
        ``log det(R_X' R_X)``, needed only for REML.
    pwrss : float
        Penalised weighted residual sum of squares at the conditional optimum of (u, beta).
    n : float
        Number of observations (the weighted count when groups carry weights).
    p : int
        Number of fixed-effects columns.
    reml : bool

    Notes
    -----
    ML: ``d(theta) = logdet_Z + n (1 + log(2 pi pwrss / n))`` (eq. 34).
    REML: ``d_R(theta) = logdet_Z + logdet_X + (n - p)(1 + log(2 pi pwrss / (n - p)))`` (eq. 41).
    """
    if not (pwrss > 0.0) or not math.isfinite(logdet_Z):
        return math.inf
    if reml:
        nr = n - p
        return logdet_Z + logdet_X + nr * (1.0 + LOG_2PI + math.log(pwrss / nr))
    return logdet_Z + n * (1.0 + LOG_2PI + math.log(pwrss / n))


def sigma_hat(pwrss: float, n: float, p: int, reml: bool) -> float:
    """Residual standard deviation at the profiled optimum."""
    return math.sqrt(pwrss / (n - p if reml else n))

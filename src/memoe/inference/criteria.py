"""Information criteria of a fitted mixed model, with the sample-size convention stated.

All criteria are ``-2 logLik + penalty(k, N)`` with ``k`` the number of parameters (fixed effects,
variance parameters and the residual variance, lme4's ``df``):

=====  ==========================================
AIC    ``2 k``
AICc   ``2 k + 2 k (k + 1) / (N - k - 1)``
BIC    ``k log N``
HQIC   ``2 k log log N``  (Hannan & Quinn 1979)
CAIC   ``k (log N + 1)``  (Bozdogan 1987)
=====  ==========================================

The effective sample size ``N`` is the number of observations ``sum_i n_i`` for ML fits and
``sum_i n_i - p`` for REML fits, whose likelihood is that of the ``N - p`` error contrasts (the
convention of the lecture notes, and of nlme's BIC). lme4 instead uses ``log(nobs)`` in BIC for REML fits
too; that value is reported as ``BIC_lme4`` (it equals ``fit.bic``). REML criteria compare only models
with the same fixed effects; use ML fits to compare mean structures.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pandas as pd

__all__ = ["CriteriaSeries", "information_criteria"]


class CriteriaSeries(pd.Series):
    """Information criteria (a Series) that also prints the sample-size convention used."""

    _metadata: ClassVar[list[str]] = ["convention"]

    @property
    def _constructor(self):
        return pd.Series

    def __repr__(self) -> str:
        body = pd.Series(self).to_string(float_format=lambda v: f"{v:.4f}")
        return f"{body}\n{getattr(self, 'convention', '')}"


def information_criteria(fit) -> CriteriaSeries:
    """AIC, AICc, BIC, HQIC and CAIC of a fit (see the module docstring for the formulas).

    Parameters
    ----------
    fit : LmmResult
        Any fit with ``loglik``, ``df_model``, ``nobs``, ``reml`` and ``design.p``.

    Returns
    -------
    CriteriaSeries
        ``logLik, npar, N, AIC, AICc, BIC, HQIC, CAIC, BIC_lme4``; ``N`` is the effective sample size
        used in the penalties and ``convention`` states it.

    Notes
    -----
    AICc is undefined (``inf``) when ``N <= k + 1``; HQIC needs ``N > e`` for a positive penalty.

    Examples
    --------
    >>> import memoe
    >>> fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).fit(reml=False)
    >>> ic = memoe.inference.information_criteria(fit)
    >>> round(float(ic["AIC"]), 2)
    1763.94
    """
    ll = float(fit.loglik)
    k = int(fit.df_model)
    n_obs = int(fit.nobs)
    # the number of fixed effects: the shared result interface's n_fixef (older fits: design.p)
    p = int(fit.n_fixef) if hasattr(fit, "n_fixef") else int(fit.design.p)
    N = n_obs - p if getattr(fit, "reml", False) else n_obs
    dev = -2.0 * ll
    aicc_extra = 2.0 * k * (k + 1) / (N - k - 1) if N - k - 1 > 0 else math.inf
    values = {
        "logLik": ll,
        "npar": float(k),
        "N": float(N),
        "AIC": dev + 2.0 * k,
        "AICc": dev + 2.0 * k + aicc_extra,
        "BIC": dev + k * math.log(N),
        "HQIC": dev + 2.0 * k * math.log(math.log(N)),
        "CAIC": dev + k * (math.log(N) + 1.0),
        "BIC_lme4": dev + k * math.log(n_obs),
    }
    out = CriteriaSeries(values, name=fit.method if hasattr(fit, "method") else None)
    if getattr(fit, "reml", False):
        out.convention = (
            f"REML fit: N = sum n_i - p = {n_obs} - {p} = {N} (REML log-likelihood of the N - p error contrasts); "
            f"BIC_lme4 uses log(nobs) = log({n_obs}) as lme4 does. Compare REML criteria only across models "
            "with identical fixed effects."
        )
    else:
        out.convention = f"ML fit: N = sum n_i = {n_obs}; BIC equals lme4's BIC."
    return out

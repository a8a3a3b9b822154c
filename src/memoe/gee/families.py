"""geepack's link and variance functions (``famstr.cc``) for the three GEE families.

Why not :mod:`memoe.glmm.families`: those reproduce R's ``family.c``, which clamps the logit linear
predictor at +-30 (``THRESH``); geepack clamps it at ``-log(DBL_EPSILON)`` (~36.04) and returns
``DBL_EPSILON`` for ``mu.eta`` beyond it. The two differ for fitted probabilities within ~1e-13 of 0
or 1, and memoe.gee reproduces geepack's numbers, so it keeps geepack's functions here.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FAMILIES", "LINKS", "linkinv", "mu_eta", "pearson_pieces", "quasi_loglik", "variance", "variance_mu"]

FAMILIES = ("gaussian", "binomial", "poisson")
LINKS = {"gaussian": "identity", "binomial": "logit", "poisson": "log"}

_EPS = np.finfo(float).eps
# geepack clamps the logit linear predictor at -log(DBL_EPSILON) (famstr.cc)
_LOGIT_THRES = -math.log(_EPS)


def linkinv(family: str, eta: np.ndarray) -> np.ndarray:
    """Mean from the linear predictor (inverse canonical link)."""
    if family == "gaussian":
        return eta
    if family == "binomial":
        e = np.exp(np.clip(eta, -_LOGIT_THRES, _LOGIT_THRES))
        return e / (1.0 + e)
    return np.maximum(_EPS, np.exp(eta))


def mu_eta(family: str, eta: np.ndarray) -> np.ndarray:
    """d mu / d eta."""
    if family == "gaussian":
        return np.ones_like(eta)
    if family == "binomial":
        e = np.exp(np.clip(eta, -_LOGIT_THRES, _LOGIT_THRES))
        return np.where(np.abs(eta) >= _LOGIT_THRES, _EPS, e / (1.0 + e) ** 2)
    return np.maximum(_EPS, np.exp(eta))


def variance(family: str, mu: np.ndarray) -> np.ndarray:
    """Variance function v(mu)."""
    if family == "gaussian":
        return np.ones_like(mu)
    if family == "binomial":
        return mu * (1.0 - mu)
    return mu


def variance_mu(family: str, mu: np.ndarray) -> np.ndarray:
    """d v / d mu (geepack's ``mu.eta`` of the variance, used by the sandwich over phi and alpha)."""
    if family == "gaussian":
        return np.zeros_like(mu)
    if family == "binomial":
        return 1.0 - 2.0 * mu
    return np.ones_like(mu)


def quasi_loglik(family: str, y: np.ndarray, mu: np.ndarray) -> float:
    """geepack's ``QIC`` quasi-likelihood (scale and weights 1)."""
    if family == "gaussian":
        return float(np.sum((y - mu) ** 2) / -2.0)
    if family == "binomial":
        return float(np.sum(y * np.log(mu / (1.0 - mu)) + np.log(1.0 - mu)))
    return float(np.sum(y * np.log(mu) - mu))


def pearson_pieces(family: str, X: np.ndarray, y: np.ndarray, beta: np.ndarray):
    """Mean, variance, ``D = diag(mu_eta / sqrt(v)) X`` and Pearson residuals of stacked clusters.

    ``X`` is (..., s, p) and ``y`` (..., s): one call handles every cluster of a batch.
    """
    eta = X @ beta
    mu = linkinv(family, eta)
    v = variance(family, mu)
    root_v = np.sqrt(v)
    D = (mu_eta(family, eta) / root_v)[..., None] * X
    return mu, v, D, (y - mu) / root_v

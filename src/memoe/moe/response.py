"""Response families of the Laplace experts, row by row on the linear-predictor scale.

:class:`RowFamily` gives each row's log-likelihood (with the family's normalising constants), its first
and second derivatives in eta and the PIRLS (Fisher) weight, vectorised over (experts, rows) arrays.
It reuses :mod:`memoe.glmm.families` (links, variance functions, unit deviances) without changing it;
canonical links have closed forms.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from memoe.errors import FamilyError
from memoe.glmm.families import Family, get_family

__all__ = ["FAMILIES", "LOG_2PI", "RowFamily", "resolve_family"]

LOG_2PI = math.log(2.0 * math.pi)
#: family names MEMoE accepts (``None`` and "gaussian" are the exact Gaussian path)
FAMILIES = ("gaussian", "binomial", "poisson")


def resolve_family(family) -> Family | None:
    """``None`` / ``"gaussian"`` -> None (the Gaussian expert); a name or :class:`Family` -> the family.

    Raises
    ------
    memoe.errors.FamilyError
        Unknown family name or a link the family does not support.
    """
    if family is None:
        return None
    if isinstance(family, str) and family.strip().lower() in ("gaussian", "normal"):
        return None
    fam = get_family(family)
    if fam.name not in FAMILIES:
        # the Laplace E-step has no dispersion parameter per expert (Gamma, inverse Gaussian, NB2 need one)
        raise FamilyError(
            f"MEMoE experts support the families {list(FAMILIES)}; family {family!r} ({fam.name}) is a GLMM family "
            "with a dispersion parameter, not yet available for mixture experts (fit it with memoe.glmm)"
        )
    return fam


class RowFamily:
    """Per-row log-likelihood pieces on the linear-predictor scale, vectorised over (M, n) arrays.

    Parameters
    ----------
    family : Family or None
        None: Gaussian with identity link and dispersion ``sigma^2`` (the Laplace path of a Gaussian
        expert, exact; used to check the approximation machinery against the exact path).
    y, wt, ntrials : numpy.ndarray, shape (n,)
        As :meth:`memoe.glmm.families.Family.prepare` leaves them.
    """

    def __init__(self, family: Family | None, y: np.ndarray, wt: np.ndarray, ntrials: np.ndarray) -> None:
        self.family = family
        self.gaussian = family is None
        self.y = y
        self.wt = wt
        self.ntrials = ntrials
        if family is None:
            self.canonical = True
            self.sat = None
            return
        self.canonical = (family.name, family.link.name) in (("binomial", "logit"), ("poisson", "log"))
        self.sat = _saturated(family, y, wt, ntrials)
        # canonical links: log p = ll_const + wt (y eta - b(eta)); the constant is what the saturated
        # log-likelihood leaves after its own y theta(y) - b(theta(y)) term
        with np.errstate(divide="ignore", invalid="ignore"):
            if family.name == "binomial":
                yc = np.clip(y, 0.0, 1.0)
                theta_y = np.where((yc > 0) & (yc < 1), np.log(yc) - np.log1p(-yc), 0.0)
                b_y = np.where((yc > 0) & (yc < 1), -np.log1p(-yc), 0.0)
                kern = np.where((yc > 0) & (yc < 1), y * theta_y - b_y, 0.0)
            else:
                kern = special.xlogy(y, y) - y
        self.ll_const = self.sat - wt * kern

    def loglik(self, eta: np.ndarray, s2: np.ndarray | None) -> np.ndarray:
        """``log p(y_j | eta_j)`` with normalising constants, shape of ``eta``."""
        if self.gaussian:
            r = self.y - eta
            return -0.5 * (LOG_2PI + np.log(s2)) - 0.5 * r * r / s2
        fam = self.family
        mu = fam.linkinv(eta)
        return self.sat - 0.5 * fam.dev_resids(self.y, mu, self.wt)

    def first(self, eta: np.ndarray, s2: np.ndarray | None):
        """``(log p, d log p / d eta, W)`` with W the Fisher (PIRLS) weight."""
        if self.gaussian:
            r = self.y - eta
            ll = -0.5 * (LOG_2PI + np.log(s2)) - 0.5 * r * r / s2
            return ll, r / s2, np.broadcast_to(1.0 / s2, eta.shape)
        fam = self.family
        if self.canonical:
            return self._first_canonical(eta)
        mu = fam.linkinv(eta)
        dmu = fam.mu_eta(eta)
        v = fam.variance(mu)
        ll = self.sat - 0.5 * fam.dev_resids(self.y, mu, self.wt)
        wd = self.wt * dmu / v
        return ll, wd * (self.y - mu), wd * dmu

    def _first_canonical(self, eta: np.ndarray):
        """Canonical links in closed form: ``d log p / d eta = wt (y - mu)`` and ``W = wt V(mu)``.

        The same quantities as the general formulas (R's links clip eta at +-30 for the logit, mu at eps
        for the log), with one exponential per entry instead of the general path's four transcendental
        passes (the E-step's main cost).
        """
        y, wt = self.y, self.wt
        if self.family.name == "binomial":
            e = np.clip(eta, -30.0, 30.0)
            # log(1 + exp(e)) without overflow, and mu = exp(e - softplus(e))
            ex = np.exp(-np.abs(e))
            sp = np.maximum(e, 0.0) + np.log1p(ex)
            mu = np.exp(e - sp)
            ll = self.ll_const + wt * (y * e - sp)
            return ll, wt * (y - mu), wt * mu * (1.0 - mu)
        e = np.maximum(eta, math.log(np.finfo(float).eps))
        mu = np.exp(e)
        return self.ll_const + wt * (y * e - mu), wt * (y - mu), wt * mu

    def second(self, eta: np.ndarray, s2: np.ndarray | None):
        """``(W_obs, dW/deta)``: observed weight ``-d^2 log p / d eta^2`` and the Fisher weight's slope."""
        if self.gaussian:
            z = np.zeros(eta.shape)
            return np.broadcast_to(1.0 / s2, eta.shape), z
        fam = self.family
        if self.canonical:
            mu = fam.linkinv(eta)
            dmu = fam.mu_eta(eta)
            W = self.wt * dmu * dmu / fam.variance(mu)
            # canonical links: W = wt V(mu(eta)), so dW/deta = wt V'(mu) dmu/deta
            slope = (1.0 - 2.0 * mu) if fam.name == "binomial" else np.ones_like(mu)
            return W, W * slope
        # other links: central differences of the analytic first derivatives, row by row (the
        # functions are smooth scalars of eta; h ~ eps^(1/3) gives ~1e-10 relative accuracy)
        h = 1e-5 * (1.0 + np.abs(eta))
        _, d1p, Wp = self.first(eta + h, s2)
        _, d1m, Wm = self.first(eta - h, s2)
        return -(d1p - d1m) / (2.0 * h), (Wp - Wm) / (2.0 * h)

    def mean(self, eta: np.ndarray) -> np.ndarray:
        """Response-scale mean ``mu = g^-1(eta)``."""
        return eta if self.gaussian else self.family.linkinv(eta)


def _saturated(family: Family, y: np.ndarray, wt: np.ndarray, ntrials: np.ndarray) -> np.ndarray:
    """Per-row ``log p(y | mu) + d(y, mu) / 2``, a function of the response only (computed once).

    ``log p(y | mu) = sat - d(y, mu) / 2`` with ``d`` the unit deviance; ``sat`` is the log-likelihood of
    the saturated model, whose normalising constants are R's ``family$aic`` terms.
    """
    if family.name == "binomial":
        k, size, f, lchoose = family.loglik_constants(y, wt, ntrials)
        with np.errstate(divide="ignore", invalid="ignore"):
            m = np.where(f > 0, size, 1.0)
            p = np.where(size > 0, k / m, 0.0)
            sat = lchoose + special.xlogy(k, p) + special.xlog1py(size - k, -p)
        return np.where(f > 0, f * sat, 0.0)
    if family.name == "poisson":
        return wt * (special.xlogy(y, y) - y - special.gammaln(y + 1.0))
    # another family (added to memoe.glmm.families later): its total log-likelihood row by row, once
    out = np.empty(len(y))
    for j in range(len(y)):  # response-only constant: computed once per model, never in the EM
        yj, wj, nj = y[j : j + 1], wt[j : j + 1], ntrials[j : j + 1]
        mu = np.clip(yj, 1e-12, None)
        out[j] = family.loglik(yj, mu, wj, nj) + 0.5 * float(family.dev_resids(yj, mu, wj).sum())
    return out

"""Response families and link functions for GLMMs (R's ``binomial()`` and ``poisson()``).

A :class:`Family` owns everything PIRLS and the likelihood need from the response distribution:
the link (``linkfun``, ``linkinv``, ``mu_eta``), the variance function, the unit deviances
(``dev_resids``), the log-likelihood with its normalising constants (R's ``family$aic``), the
starting values (``family$initialize``) and the checks on the response.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import special

from memoe.errors import DataError, FamilyError, NonIntegerResponseWarning, warn

__all__ = [
    "FAMILY_NAMES",
    "Binomial",
    "Family",
    "FamilyError",
    "Gamma",
    "Gaussian",
    "InverseGaussian",
    "Link",
    "NegativeBinomial",
    "NonIntegerResponseWarning",
    "Poisson",
    "get_family",
    "get_link",
]

# R's THRESH / MTHRESH and DBL_EPSILON in family.c: keep mu strictly inside (0, 1)
_EPS = np.finfo(float).eps
_THRESH = 30.0


@dataclass(frozen=True)
class Link:
    """A link function ``eta = g(mu)`` with its inverse and ``d mu / d eta``.

    Attributes
    ----------
    name : str
        R's name (``logit``, ``probit``, ``cloglog``, ``log``, ``identity``).

    R equivalent
    ------------
    ``stats::make.link(name)`` (``linkfun``, ``linkinv``, ``mu.eta``).

    Examples
    --------
    >>> import numpy as np
    >>> from memoe.glmm import Link
    >>> Link("logit").linkinv(np.array([0.0])).tolist()
    [0.5]
    """

    name: str

    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        """``eta = g(mu)``."""
        if self.name == "logit":
            return special.logit(mu)
        if self.name == "probit":
            return special.ndtri(mu)
        if self.name == "cloglog":
            return np.log(-np.log1p(-mu))
        if self.name == "log":
            return np.log(mu)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.name == "inverse":
                return 1.0 / mu
            if self.name == "1/mu^2":
                return 1.0 / (mu * mu)
            if self.name == "sqrt":
                return np.sqrt(mu)
        return np.asarray(mu, dtype=float)

    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        """``mu = g^-1(eta)``, kept inside the family's domain as R's C code does."""
        if self.name == "logit":
            # R's logit_linkinv (t / (1 + t), t = exp(eta)) with eta clipped so that mu (1 - mu) > 0; three
            # vectorised passes where scipy's expit is ~6x slower per element (PIRLS' fast path in
            # memoe.glmm.pirls computes the same expression into work arrays, bit for bit)
            t = np.exp(np.clip(eta, -_THRESH, _THRESH))
            return t / (1.0 + t)
        if self.name == "probit":
            thresh = -special.ndtri(_EPS)
            return special.ndtr(np.clip(eta, -thresh, thresh))
        if self.name == "cloglog":
            return np.clip(-np.expm1(-np.exp(eta)), _EPS, 1 - _EPS)
        if self.name == "log":
            return np.maximum(np.exp(eta), _EPS)
        # eta outside the link's domain gives inf / nan means: PIRLS' step halving rejects them
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.name == "inverse":
                return 1.0 / eta
            if self.name == "1/mu^2":
                return 1.0 / np.sqrt(eta)
        if self.name == "sqrt":
            return eta * eta
        return np.asarray(eta, dtype=float)

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        """``d mu / d eta``."""
        if self.name == "logit":
            e = np.exp(-np.abs(eta))
            return np.where(np.abs(eta) > _THRESH, _EPS, e / (1.0 + e) ** 2)
        if self.name == "probit":
            return np.maximum(np.exp(-0.5 * eta * eta) / np.sqrt(2 * np.pi), _EPS)
        if self.name == "cloglog":
            eta = np.minimum(eta, 700.0)
            return np.maximum(np.exp(eta) * np.exp(-np.exp(eta)), _EPS)
        if self.name == "log":
            return np.maximum(np.exp(eta), _EPS)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.name == "inverse":
                return -1.0 / (eta * eta)
            if self.name == "1/mu^2":
                return -1.0 / (2.0 * eta**1.5)
        if self.name == "sqrt":
            return 2.0 * eta
        return np.ones_like(np.asarray(eta, dtype=float))

    def mu_eta2(self, eta: np.ndarray) -> np.ndarray:
        """``d^2 mu / d eta^2`` (the observed information of non-canonical links needs it)."""
        eta = np.asarray(eta, dtype=float)
        if self.name == "logit":
            mu = self.linkinv(eta)
            return self.mu_eta(eta) * (1.0 - 2.0 * mu)
        if self.name == "probit":
            return -eta * np.exp(-0.5 * eta * eta) / np.sqrt(2 * np.pi)
        if self.name == "cloglog":
            e = np.exp(np.minimum(eta, 700.0))
            return self.mu_eta(eta) * (1.0 - e)
        if self.name == "log":
            return np.maximum(np.exp(eta), _EPS)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.name == "inverse":
                return 2.0 / eta**3
            if self.name == "1/mu^2":
                return 0.75 * eta**-2.5
        if self.name == "sqrt":
            return np.full_like(eta, 2.0)
        return np.zeros_like(eta)


_LINKS = ("logit", "probit", "cloglog", "log", "identity", "inverse", "1/mu^2", "sqrt")


def get_link(name: str | Link) -> Link:
    """A :class:`Link` by R's name.

    Parameters
    ----------
    name : str or Link
        ``"logit"``, ``"probit"``, ``"cloglog"``, ``"log"`` or ``"identity"``; a Link is returned as is.

    Returns
    -------
    Link

    Raises
    ------
    FamilyError
        An unknown link name (the message lists the accepted ones).

    Examples
    --------
    >>> from memoe.glmm import get_link
    >>> get_link("probit").name
    'probit'
    """
    if isinstance(name, Link):
        return name
    if name not in _LINKS:
        if not isinstance(name, str):
            raise FamilyError(f"link must be a name such as 'log' or a Link, got {type(name).__name__}")
        raise FamilyError(f"unknown link {name!r}; available: {', '.join(_LINKS)}")
    return Link(name)


def _ylogy(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``y log(y / mu)`` with the limit 0 at ``y = 0``.

    The ratio is replaced by 1 where ``y = 0`` *before* the logarithm: ``log(0)`` takes numpy's slow
    special-value path (0.1 ms -> 1 ms per 10^5 entries when half the ratios are 0, as in every 0/1
    binomial response); the values where ``y > 0`` are computed exactly as before.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        pos = y > 0
        return np.where(pos, y * np.log(np.where(pos, y / mu, 1.0)), 0.0)


@dataclass(frozen=True)
class Family(ABC):
    """Base class of the response families (R's ``family`` object).

    Subclasses implement :meth:`variance`, :meth:`dev_resids`, :meth:`loglik`,
    :meth:`mustart` and :meth:`prepare`.

    Parameters
    ----------
    link : Link
        The link function (each subclass has R's default).

    Examples
    --------
    >>> from memoe.glmm import Family, get_family
    >>> isinstance(get_family("poisson"), Family)
    True
    """

    link: Link
    name: str = "family"
    #: links R accepts for the family
    allowed_links: tuple[str, ...] = ()

    #: the family has a dispersion (scale) parameter: lme4's ``useSc``; its aic profiles it as dev / sum(wt)
    has_dispersion: ClassVar[bool] = False
    #: R's ``family$aic`` counts the profiled dispersion as a parameter and adds this 2 (so lme4's Laplace
    #: deviance of Gamma, inverse Gaussian and Gaussian GLMMs is -2 log L + 2; a GLM's logLik is not)
    aic_constant: ClassVar[float] = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.link, str):
            # Gamma(link="log"), as R's family objects
            object.__setattr__(self, "link", get_link(self.link))
        if not isinstance(self.link, Link):
            raise FamilyError(f"link must be a name such as 'log' or a Link, got {type(self.link).__name__}")
        if self.allowed_links and self.link.name not in self.allowed_links:
            raise FamilyError(
                f"link {self.link.name!r} is not available for the {self.name} family; "
                f"use one of {', '.join(self.allowed_links)}"
            )

    # the link, delegated so that PIRLS talks to one object
    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        return self.link.linkfun(mu)

    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        return self.link.linkinv(eta)

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        return self.link.mu_eta(eta)

    @abstractmethod
    def variance(self, mu: np.ndarray) -> np.ndarray:
        """Variance function V(mu)."""

    def variance_deriv(self, mu: np.ndarray) -> np.ndarray:
        """``dV / dmu`` (for the observed information); families override it."""
        raise FamilyError(f"the {self.name} family has no variance derivative")

    def observed_weights(self, y: np.ndarray, mu: np.ndarray, eta: np.ndarray, wt: np.ndarray) -> np.ndarray:
        """``-d^2 log f(y | eta) / d eta^2`` per row (dispersion 1): the observed information in eta.

        ``wt [mu'^2 / V - (y - mu) (mu'' / V - mu'^2 V' / V^2)]``; equal to the Fisher working weight
        ``wt mu'^2 / V`` for canonical links (binomial logit, Poisson log), not for NB2 with the log link.
        """
        d1, d2 = self.link.mu_eta(eta), self.link.mu_eta2(eta)
        V, dV = self.variance(mu), self.variance_deriv(mu)
        return wt * (d1 * d1 / V - (y - mu) * (d2 / V - d1 * d1 * dV / (V * V)))

    @abstractmethod
    def dev_resids(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> np.ndarray:
        """Unit deviances ``d_i`` (squared deviance residuals), shape (n,)."""

    @abstractmethod
    def loglik_constants(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray):
        """The terms of :meth:`loglik` that depend on the response only (pass them back as ``constants``).

        PIRLS evaluates the log-likelihood at every objective evaluation for the same response;
        these terms (``gammaln``, three per row for the binomial) were its most expensive part.
        """

    @abstractmethod
    def loglik(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray, n: np.ndarray, constants=None) -> float:
        """Log-likelihood with normalising constants (``-family$aic(...) / 2`` in R).

        ``constants``: :meth:`loglik_constants` of the same ``y``, ``wt``, ``n`` (computed if None).
        """

    @abstractmethod
    def mustart(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Starting means (R's ``mustart``)."""

    @abstractmethod
    def prepare(self, y: np.ndarray, weights: np.ndarray, trials: np.ndarray | None, response: str):
        """Check the response and return ``(y, wt, n)`` as R's ``family$initialize`` leaves them."""

    @property
    def label(self) -> str:
        """The family's name in messages (``Poisson``, ``negative binomial``)."""
        return {"poisson": "Poisson", "negative_binomial": "negative binomial"}.get(self.name, self.name)

    @property
    def r_name(self) -> str:
        """R's ``family$family`` string (``"Gamma"``, ``"inverse.gaussian"``, ``"Negative Binomial(1.234)"``)."""
        return self.name

    def dispersion_ml(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> float:
        """The dispersion R's ``family$aic`` profiles: ``sum(dev_resids) / sum(wt)`` (1 without a scale)."""
        if not self.has_dispersion:
            return 1.0
        return float(self.dev_resids(y, mu, wt).sum() / wt.sum())

    def __str__(self) -> str:
        return f"{self.r_name} ( {self.link.name} )"


@dataclass(frozen=True)
class Binomial(Family):
    """Binomial family, R's ``binomial(link = "logit")``.

    The response is a proportion ``y`` with weights ``wt`` = prior weights x trials. ``n`` holds the
    trials for ``cbind(successes, failures)`` responses and ones for 0/1 (or proportion) responses.

    Parameters
    ----------
    link : Link, default Link("logit")
        ``logit``, ``probit``, ``cloglog`` or ``log``.

    R equivalent
    ------------
    ``stats::binomial(link = "logit")``.

    Examples
    --------
    >>> import memoe
    >>> from memoe.glmm import Binomial, Link
    >>> cbpp = memoe.datasets.load("cbpp")
    >>> f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    >>> fit = memoe.glmm(f, cbpp, Binomial(link=Link("probit"))).fit()
    >>> fit.response_family.link.name
    'probit'
    """

    link: Link = Link("logit")
    name: str = "binomial"
    allowed_links: tuple[str, ...] = ("logit", "probit", "cloglog", "log")

    def variance(self, mu: np.ndarray) -> np.ndarray:
        return mu * (1.0 - mu)

    def variance_deriv(self, mu: np.ndarray) -> np.ndarray:
        return 1.0 - 2.0 * mu

    def dev_resids(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> np.ndarray:
        if y.size and np.all((y == 0.0) | (y == 1.0)):
            # 0/1 responses: exactly one of the two terms is nonzero, 1 * log(1 / m) with m = mu or 1 - mu
            # (bit for bit the general formula's value, adding its 0.0), at a third of the passes over the
            # data: this is most of the cost of an AGQ evaluation, which works on (nodes x rows) arrays
            with np.errstate(divide="ignore"):
                return 2.0 * wt * np.log(1.0 / np.where(y > 0, mu, 1.0 - mu))
        return 2.0 * wt * (_ylogy(y, mu) + _ylogy(1.0 - y, 1.0 - mu))

    def loglik_constants(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray):
        m = n if np.any(n > 1) else wt
        k, size = np.round(m * y), np.round(m)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(m > 0, wt / m, 0.0)
            lchoose = special.gammaln(size + 1) - special.gammaln(k + 1) - special.gammaln(size - k + 1)
        return k, size, f, lchoose

    def loglik(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray, n: np.ndarray, constants=None) -> float:
        # R's binomial()$aic: m = n if any n > 1 else wt; sum (wt/m) dbinom(round(m y), round(m), mu, log)
        k, size, f, lchoose = self.loglik_constants(y, wt, n) if constants is None else constants
        with np.errstate(divide="ignore", invalid="ignore"):
            ll = lchoose + special.xlogy(k, mu) + special.xlog1py(size - k, -mu)
        return float(np.sum(np.where(f > 0, f * ll, 0.0)))

    def mustart(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray) -> np.ndarray:
        # R: (n y + 0.5) / (n + 1) for two-column responses, (weights y + 0.5) / (weights + 1) otherwise
        m = n if np.any(n > 1) else wt
        return (m * y + 0.5) / (m + 1.0)

    def prepare(self, y, weights, trials, response):
        if trials is None:
            if np.any((y < 0) | (y > 1)):
                bad = y[(y < 0) | (y > 1)]
                raise DataError(
                    f"binomial response {response!r} must be in [0, 1] (0/1 outcomes or proportions with "
                    f"weights = trials), found {bad.size} values outside, e.g. {bad[0]:g}; for counts use "
                    "cbind(successes, failures)"
                )
            n = np.ones_like(y)
            wt = weights.astype(float)
            m = wt * y
        else:
            succ, fail = y, trials - y
            if np.any(succ < 0) or np.any(fail < 0):
                raise DataError(
                    f"binomial response {response!r}: successes and failures must be non-negative counts "
                    f"({int(np.sum(succ < 0))} negative successes, {int(np.sum(fail < 0))} negative failures)"
                )
            n = trials.astype(float)
            with np.errstate(invalid="ignore", divide="ignore"):
                y = np.where(n > 0, succ / n, 0.0)
            wt = weights * n
            m = succ
        used = wt > 0
        if used.any() and (np.all(y[used] == 0.0) or np.all(y[used] == 1.0)):
            # every outcome the same: the intercept runs off to -+inf (R fits with "fitted probabilities
            # numerically 0 or 1"); there is nothing to model
            which = "failures (0)" if np.all(y[used] == 0.0) else "successes (1)"
            raise DataError(
                f"binomial response {response!r} is constant: all {int(used.sum())} rows with positive weight are "
                f"{which}; nothing to model"
            )
        if np.any(np.abs(m - np.round(m)) > 1e-3):
            warn(f"non-integer #successes in a binomial glm! (response {response!r})", NonIntegerResponseWarning)
        return y, wt, n


@dataclass(frozen=True)
class Poisson(Family):
    """Poisson family, R's ``poisson(link = "log")``.

    Parameters
    ----------
    link : Link, default Link("log")
        ``log`` or ``identity``.

    R equivalent
    ------------
    ``stats::poisson(link = "log")``.

    Examples
    --------
    >>> from memoe.glmm import Poisson
    >>> Poisson().variance(2.0)
    2.0
    """

    link: Link = Link("log")
    name: str = "poisson"
    allowed_links: tuple[str, ...] = ("log", "identity")

    def variance(self, mu: np.ndarray) -> np.ndarray:
        return mu

    def variance_deriv(self, mu: np.ndarray) -> np.ndarray:
        return np.ones_like(mu)

    def dev_resids(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> np.ndarray:
        return 2.0 * wt * (_ylogy(y, mu) - (y - mu))

    def loglik_constants(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray):
        return special.gammaln(y + 1.0)

    def loglik(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray, n: np.ndarray, constants=None) -> float:
        # dpois(y, mu, log = TRUE) * wt; gammaln extends R's -Inf for non-integer counts smoothly
        lfact = self.loglik_constants(y, wt, n) if constants is None else constants
        ll = special.xlogy(y, mu) - mu - lfact
        return float(np.sum(wt * ll))

    def mustart(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray) -> np.ndarray:
        return y + 0.1

    def prepare(self, y, weights, trials, response):
        if trials is not None:
            raise DataError(f"cbind() responses are for the binomial family, not {self.name} ({response!r})")
        if np.any(y < 0):
            raise DataError(
                f"negative values not allowed for the '{self.label}' family: response {response!r} has "
                f"{int(np.sum(y < 0))} negative values"
            )
        used = weights > 0
        if used.any() and np.all(y[used] == 0.0):
            raise DataError(
                f"{self.label} response {response!r} is 0 in all {int(used.sum())} rows with positive weight; "
                "nothing to model (the log rate runs off to -inf)"
            )
        if np.any(np.abs(y - np.round(y)) > 1e-7):
            warn(
                f"non-integer counts in the {self.label} response {response!r}: the log-likelihood uses "
                "lgamma(y + 1) (R's dpois gives -Inf with a warning)",
                NonIntegerResponseWarning,
            )
        return y, weights.astype(float), np.ones_like(y)


def _positive_response(y: np.ndarray, weights: np.ndarray, trials, response: str, family: str, strict: bool) -> None:
    """R's ``initialize`` checks of the Gamma and inverse Gaussian families: positive responses only."""
    if trials is not None:
        raise DataError(f"cbind() responses are for the binomial family, not {family} ({response!r})")
    bad = (y <= 0) if strict else (y < 0)
    if np.any(bad):
        raise DataError(
            f"non-positive values not allowed for the {family!r} family: response {response!r} has "
            f"{int(bad.sum())} values <= 0 (e.g. {y[bad][0]:g}); the {family} family needs y > 0"
        )


@dataclass(frozen=True)
class Gamma(Family):
    """Gamma family, R's ``Gamma(link = "inverse")`` (links ``inverse``, ``log``, ``identity``).

    ``V(mu) = mu^2``; the dispersion ``phi`` (1 / shape) is a parameter. lme4's Laplace deviance uses R's
    ``Gamma()$aic`` with ``phi = sum(d_i) / sum(wt)`` at the conditional modes, plus 2.

    Parameters
    ----------
    link : Link, default Link("inverse")
        ``inverse``, ``log`` or ``identity``.

    R equivalent
    ------------
    ``stats::Gamma(link = "inverse")`` (in ``lme4::glmer`` / ``glmmTMB::glmmTMB``).

    Examples
    --------
    >>> from memoe.glmm.families import Gamma
    >>> str(Gamma(link="log"))
    'Gamma ( log )'
    """

    link: Link = Link("inverse")
    name: str = "Gamma"
    allowed_links: tuple[str, ...] = ("inverse", "log", "identity")
    has_dispersion: ClassVar[bool] = True
    aic_constant: ClassVar[float] = 2.0

    def variance(self, mu: np.ndarray) -> np.ndarray:
        return mu * mu

    def variance_deriv(self, mu: np.ndarray) -> np.ndarray:
        return 2.0 * mu

    def dev_resids(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = y / mu
            return -2.0 * wt * (np.log(np.where(y > 0, r, 1.0)) - (y - mu) / mu)

    def loglik_constants(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray):
        with np.errstate(divide="ignore"):
            return np.log(y)

    def loglik(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray, n: np.ndarray, constants=None) -> float:
        # -Gamma()$aic / 2: sum wt dgamma(y, shape = 1/phi, scale = mu phi, log = TRUE) - 1, phi = dev / sum(wt)
        logy = self.loglik_constants(y, wt, n) if constants is None else constants
        phi = self.dispersion_ml(y, mu, wt)
        a = 1.0 / phi
        with np.errstate(divide="ignore", invalid="ignore"):
            ld = (a - 1.0) * logy - y / (mu * phi) - a * np.log(mu * phi) - special.gammaln(a)
        return float(np.sum(np.where(wt > 0, wt * ld, 0.0))) - 0.5 * self.aic_constant

    def mustart(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray) -> np.ndarray:
        return y.astype(float)

    def prepare(self, y, weights, trials, response):
        _positive_response(y, weights, trials, response, "Gamma", strict=True)
        return y, weights.astype(float), np.ones_like(y)


@dataclass(frozen=True)
class InverseGaussian(Family):
    """Inverse Gaussian family, R's ``inverse.gaussian(link = "1/mu^2")`` (links ``1/mu^2``, ``inverse``,
    ``log``, ``identity``). ``V(mu) = mu^3``; dispersion profiled as for :class:`Gamma`.

    Parameters
    ----------
    link : Link, default Link("1/mu^2")
        ``1/mu^2``, ``inverse``, ``log`` or ``identity``.

    R equivalent
    ------------
    ``stats::inverse.gaussian(link = "1/mu^2")``.

    Examples
    --------
    >>> from memoe.glmm.families import InverseGaussian
    >>> from memoe.glmm import Link
    >>> str(InverseGaussian(link=Link("log")))
    'inverse.gaussian ( log )'
    """

    link: Link = Link("1/mu^2")
    name: str = "inverse.gaussian"
    allowed_links: tuple[str, ...] = ("1/mu^2", "inverse", "log", "identity")
    has_dispersion: ClassVar[bool] = True
    aic_constant: ClassVar[float] = 2.0

    def variance(self, mu: np.ndarray) -> np.ndarray:
        return mu**3

    def variance_deriv(self, mu: np.ndarray) -> np.ndarray:
        return 3.0 * mu * mu

    def dev_resids(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> np.ndarray:
        # mu outside (0, inf) (a trial step of PIRLS) gives inf / nan, which the step halving rejects
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return wt * (y - mu) ** 2 / (y * mu * mu)

    def loglik_constants(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray):
        return float(np.sum(wt * np.log(y)))

    def loglik(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray, n: np.ndarray, constants=None) -> float:
        # -inverse.gaussian()$aic / 2 with phi = dev / sum(wt)
        slogy = self.loglik_constants(y, wt, n) if constants is None else constants
        wsum = float(wt.sum())
        dev = float(self.dev_resids(y, mu, wt).sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            aic = wsum * (np.log(dev / wsum * 2.0 * np.pi) + 1.0) + 3.0 * slogy + self.aic_constant
        return -0.5 * aic

    def mustart(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray) -> np.ndarray:
        return y.astype(float)

    def prepare(self, y, weights, trials, response):
        _positive_response(y, weights, trials, response, "inverse.gaussian", strict=True)
        return y, weights.astype(float), np.ones_like(y)


@dataclass(frozen=True)
class Gaussian(Family):
    """Gaussian family with a non-identity link, R's ``gaussian(link = "log")`` (``log``, ``inverse``; the
    default identity link is refused by :func:`get_family`).

    With the identity link a GLMM is a linear mixed model: use :func:`memoe.lmm` (lme4's ``glmer``
    hands it to ``lmer`` too).

    Parameters
    ----------
    link : Link
        ``log`` or ``inverse`` (the identity link is refused: use :func:`memoe.lmm`).

    R equivalent
    ------------
    ``stats::gaussian(link = "log")``.

    Examples
    --------
    >>> from memoe.glmm.families import Gaussian
    >>> from memoe.glmm import Link
    >>> str(Gaussian(link=Link("log")))
    'gaussian ( log )'
    """

    link: Link = Link("identity")
    name: str = "gaussian"
    allowed_links: tuple[str, ...] = ("log", "inverse", "identity")
    has_dispersion: ClassVar[bool] = True
    aic_constant: ClassVar[float] = 2.0

    def variance(self, mu: np.ndarray) -> np.ndarray:
        return np.ones_like(mu)

    def variance_deriv(self, mu: np.ndarray) -> np.ndarray:
        return np.zeros_like(mu)

    def dev_resids(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> np.ndarray:
        return wt * (y - mu) ** 2

    def loglik_constants(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray):
        with np.errstate(divide="ignore"):
            return float(np.sum(np.log(wt[wt > 0])))

    def loglik(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray, n: np.ndarray, constants=None) -> float:
        # lme4's GaussianDist::aic: n (log(2 pi dev / n) + 1) + 2 - sum(log wt)
        slogw = self.loglik_constants(y, wt, n) if constants is None else constants
        nn = float(np.sum(wt > 0))
        dev = float(self.dev_resids(y, mu, wt).sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            return -0.5 * (nn * (np.log(2.0 * np.pi * dev / nn) + 1.0) + self.aic_constant - slogw)

    def dispersion_ml(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> float:
        return float(self.dev_resids(y, mu, wt).sum() / np.sum(wt > 0))

    def mustart(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray) -> np.ndarray:
        return y.astype(float)

    def prepare(self, y, weights, trials, response):
        if trials is not None:
            raise DataError(f"cbind() responses are for the binomial family, not gaussian ({response!r})")
        if self.link.name == "log" and np.any(y <= 0):
            raise DataError(
                f"cannot find valid starting values for gaussian(link = 'log'): response {response!r} has "
                f"{int(np.sum(y <= 0))} values <= 0 (R asks for starting values here)"
            )
        if self.link.name == "inverse" and np.any(y == 0):
            raise DataError(f"gaussian(link = 'inverse'): response {response!r} has zeros (1/mu undefined)")
        return y, weights.astype(float), np.ones_like(y)


@dataclass(frozen=True)
class NegativeBinomial(Family):
    """Negative binomial NB2, ``var = mu + mu^2 / theta`` (MASS's ``negative.binomial(theta)``).

    ``theta=None`` (the default, and the names ``"negative_binomial"``, ``"nbinom2"``): theta is
    estimated with the other parameters (lme4's ``glmer.nb``, glmmTMB's ``nbinom2``); a number fixes it
    (lme4's ``glmer(family = negative.binomial(theta))``).

    Parameters
    ----------
    link : Link, default Link("log")
        ``log``, ``sqrt`` or ``identity``.
    theta : float, optional
        Fixed shape; None estimates it.

    R equivalent
    ------------
    ``lme4::glmer.nb``; ``glmmTMB::glmmTMB(family = nbinom2)``; ``MASS::negative.binomial(theta)``.

    Examples
    --------
    >>> from memoe.glmm.families import NegativeBinomial
    >>> str(NegativeBinomial(theta=1.2345))
    'Negative Binomial(1.234) ( log )'
    """

    link: Link = Link("log")
    name: str = "negative_binomial"
    allowed_links: tuple[str, ...] = ("log", "sqrt", "identity")
    theta: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.theta is not None:
            t = float(self.theta)
            if not (np.isfinite(t) and t > 0):
                raise FamilyError(f"negative binomial theta must be a positive number, got {self.theta!r}")
            object.__setattr__(self, "theta", t)

    @property
    def estimated(self) -> bool:
        return self.theta is None

    def with_theta(self, theta: float) -> NegativeBinomial:
        """The same family at a given theta (the estimate's working value)."""
        return NegativeBinomial(link=self.link, theta=float(theta))

    @property
    def r_name(self) -> str:
        # MASS: paste0("Negative Binomial(", format(round(theta, 4)), ")"); lme4 prints format(theta, digits=4)
        return "Negative Binomial" if self.theta is None else f"Negative Binomial({self.theta:.4g})"

    def _th(self) -> float:
        if self.theta is None:
            raise FamilyError("the negative binomial theta is being estimated: no value is set yet")
        return self.theta

    def variance(self, mu: np.ndarray) -> np.ndarray:
        return mu + mu * mu / self._th()

    def variance_deriv(self, mu: np.ndarray) -> np.ndarray:
        return 1.0 + 2.0 * mu / self._th()

    def dev_resids(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> np.ndarray:
        th = self._th()
        with np.errstate(divide="ignore", invalid="ignore"):
            return 2.0 * wt * (_ylogy(y, mu) - (y + th) * np.log((y + th) / (mu + th)))

    def loglik_constants(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray):
        return special.gammaln(y + 1.0)

    def loglik(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray, n: np.ndarray, constants=None) -> float:
        # -negative.binomial(theta)$aic / 2 = sum wt dnbinom(y, size = theta, mu = mu, log = TRUE)
        th = self._th()
        lfact = self.loglik_constants(y, wt, n) if constants is None else constants
        with np.errstate(divide="ignore", invalid="ignore"):
            ll = (
                special.gammaln(th + y) - special.gammaln(th) - lfact + th * np.log(th)
                + special.xlogy(y, mu) - (y + th) * np.log(mu + th)
            )
        return float(np.sum(wt * ll))

    def mustart(self, y: np.ndarray, wt: np.ndarray, n: np.ndarray) -> np.ndarray:
        # MASS::negative.binomial()$initialize
        return y + (y == 0) / 6.0

    def prepare(self, y, weights, trials, response):
        return Poisson.prepare(self, y, weights, trials, response)


# names (lower case) -> family class; R's spellings and the issue's
_FAMILIES = {
    "binomial": Binomial,
    "poisson": Poisson,
    "gamma": Gamma,
    "inverse_gaussian": InverseGaussian,
    "inverse.gaussian": InverseGaussian,
    "inversegaussian": InverseGaussian,
    "gaussian": Gaussian,
    "negative_binomial": NegativeBinomial,
    "negative.binomial": NegativeBinomial,
    "negativebinomial": NegativeBinomial,
    "nbinom2": NegativeBinomial,
    "nb2": NegativeBinomial,
}


#: the accepted family names, one spelling each (R's other spellings are accepted too)
FAMILY_NAMES = ("binomial", "poisson", "Gamma", "inverse_gaussian", "gaussian", "negative_binomial")


def get_family(family: str | Family, link: str | None = None) -> Family:
    """Resolve ``family`` (a name or a :class:`Family`) and an optional link name.

    Parameters
    ----------
    family : str or Family
        ``"binomial"`` or ``"poisson"`` (case-insensitive), or a Family instance.
    link : str, optional
        A link name the family accepts; default the family's canonical link.

    Returns
    -------
    Family

    Examples
    --------
    >>> from memoe.glmm import get_family
    >>> fam = get_family("binomial", link="cloglog")
    >>> (fam.name, fam.link.name)
    ('binomial', 'cloglog')

    Raises

    ------
    FamilyError
        Unknown family or a link the family does not support.
    """
    if isinstance(family, Family):
        fam = family if link is None else dataclasses.replace(family, link=get_link(link))
        _refuse_gaussian_identity(fam)
        return fam
    if not isinstance(family, str):
        raise FamilyError(
            f"family must be a name ({', '.join(FAMILY_NAMES)}) or a Family such as Gamma(link='log'), "
            f"got {type(family).__name__}"
        )
    key = family.strip().lower()
    if key not in _FAMILIES:
        hint = " (Gaussian responses with the identity link: use memoe.lmm)" if key == "normal" else ""
        raise FamilyError(f"unknown family {family!r}; available: {', '.join(FAMILY_NAMES)}{hint}")
    cls = _FAMILIES[key]
    fam = cls() if link is None else cls(link=get_link(link))
    _refuse_gaussian_identity(fam)
    return fam


def _refuse_gaussian_identity(fam: Family) -> None:
    if isinstance(fam, Gaussian) and fam.link.name == "identity":
        raise FamilyError(
            "family 'gaussian' with the identity link is a linear mixed model: use memoe.lmm (lme4's glmer "
            "passes it to lmer); memoe.glmm takes gaussian with link='log' or 'inverse'"
        )

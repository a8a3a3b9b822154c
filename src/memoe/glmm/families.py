"""Response families and link functions for GLMMs (R's ``binomial()`` and ``poisson()``).

A :class:`Family` owns everything PIRLS and the likelihood need from the response distribution:
the link (``linkfun``, ``linkinv``, ``mu_eta``), the variance function, the unit deviances
(``dev_resids``), the log-likelihood with its normalising constants (R's ``family$aic``), the
starting values (``family$initialize``) and the checks on the response.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from scipy import special

from memoe.errors import DataError, FamilyError, NonIntegerResponseWarning, warn

__all__ = [
    "Binomial",
    "Family",
    "FamilyError",
    "Link",
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
        return np.asarray(mu, dtype=float)

    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        """``mu = g^-1(eta)``, kept inside the family's domain as R's C code does."""
        if self.name == "logit":
            # R's logit_linkinv: exp(eta) capped at eps and 1/eps keeps mu(1 - mu) > 0
            return special.expit(np.clip(eta, -_THRESH, _THRESH))
        if self.name == "probit":
            thresh = -special.ndtri(_EPS)
            return special.ndtr(np.clip(eta, -thresh, thresh))
        if self.name == "cloglog":
            return np.clip(-np.expm1(-np.exp(eta)), _EPS, 1 - _EPS)
        if self.name == "log":
            return np.maximum(np.exp(eta), _EPS)
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
        return np.ones_like(np.asarray(eta, dtype=float))


_LINKS = ("logit", "probit", "cloglog", "log", "identity")


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

    def __post_init__(self) -> None:
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

    def __str__(self) -> str:
        return f"{self.name} ( {self.link.name} )"


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
            raise DataError(f"cbind() responses are for the binomial family, not poisson ({response!r})")
        if np.any(y < 0):
            raise DataError(
                f"negative values not allowed for the 'Poisson' family: response {response!r} has "
                f"{int(np.sum(y < 0))} negative values"
            )
        used = weights > 0
        if used.any() and np.all(y[used] == 0.0):
            raise DataError(
                f"Poisson response {response!r} is 0 in all {int(used.sum())} rows with positive weight; "
                "nothing to model (the log rate runs off to -inf)"
            )
        if np.any(np.abs(y - np.round(y)) > 1e-7):
            warn(
                f"non-integer counts in the Poisson response {response!r}: the log-likelihood uses "
                "lgamma(y + 1) (R's dpois gives -Inf with a warning)",
                NonIntegerResponseWarning,
            )
        return y, weights.astype(float), np.ones_like(y)


_FAMILIES = {"binomial": Binomial, "poisson": Poisson}


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
        return family if link is None else type(family)(link=get_link(link))
    if not isinstance(family, str):
        raise FamilyError(f"family must be a name ('binomial', 'poisson') or a Family, got {type(family).__name__}")
    key = family.strip().lower()
    if key not in _FAMILIES:
        hint = " (Gaussian responses: use memoe.lmm)" if key in ("gaussian", "normal") else ""
        raise FamilyError(f"unknown family {family!r}; available: {', '.join(_FAMILIES)}{hint}")
    cls = _FAMILIES[key]
    return cls() if link is None else cls(link=get_link(link))

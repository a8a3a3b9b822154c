"""Denominator degrees of freedom for t and F tests of fixed effects: one entry point per test shape.

Methods (``ddf=``):

==================  =========================================================================
``"residual"``      ``n - p`` (as for a linear model)
``"containment"``   nlme's between-within rule (:mod:`memoe.inference.containment`)
``"satterthwaite"`` lmerTest's Satterthwaite approximation (:mod:`memoe.inference.satterthwaite`)
``"kenward-roger"`` pbkrtest's Kenward-Roger adjusted covariance and scaled F (REML fits only;
                    :mod:`memoe.inference.kenward_roger`)
``"asymptotic"``    normal / chi-square reference distributions (Wald z and chi^2 / q)
==================  =========================================================================

The expensive ingredients (marginal moments, the Hessian in ``(theta, sigma)``, the KR adjustment)
are computed once per fitted model and cached (weakly keyed by the fit).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np
from scipy import stats

from memoe.errors import HypothesisError
from memoe.inference.containment import containment_df
from memoe.inference.kenward_roger import kenward_roger, kr_df_1d, kr_ftest
from memoe.inference.marginal import marginal_moments
from memoe.inference.sandwich import vcov_cr
from memoe.inference.satterthwaite import satterthwaite_f, satterthwaite_t, varpar_inference
from memoe.inference.terms import fixed_terms

__all__ = ["DDF_METHODS", "FTest", "TTests", "f_test", "ingredient", "normalize_ddf", "note", "t_tests"]

DDF_METHODS = ("residual", "containment", "satterthwaite", "kenward-roger", "asymptotic")
_ALIASES = {
    "residual": "residual",
    "resid": "residual",
    "lm": "residual",
    "containment": "containment",
    "contain": "containment",
    "between-within": "containment",
    "nlme": "containment",
    "satterthwaite": "satterthwaite",
    "satt": "satterthwaite",
    "lmertest": "satterthwaite",
    "kenward-roger": "kenward-roger",
    "kenward_roger": "kenward-roger",
    "kenwardroger": "kenward-roger",
    "kr": "kenward-roger",
    "pbkrtest": "kenward-roger",
    "asymptotic": "asymptotic",
    "normal": "asymptotic",
    "wald": "asymptotic",
    "z": "asymptotic",
}
_LABELS = {
    "residual": "residual degrees of freedom n - p",
    "containment": "containment (between-within) degrees of freedom as nlme's lme",
    "satterthwaite": "Satterthwaite's method for denominator degrees of freedom (as lmerTest)",
    "kenward-roger": "Kenward-Roger's method: adjusted covariance, scaled F and its degrees of freedom (as pbkrtest)",
    "asymptotic": "asymptotic reference distributions: standard normal for t, chi-square / q for F",
}


def normalize_ddf(ddf: str) -> str:
    """Canonical method name; raises :class:`HypothesisError` listing the choices."""
    key = str(ddf).strip().lower().replace(" ", "-")
    if key not in _ALIASES:
        raise HypothesisError(f"unknown ddf method {ddf!r}; choose one of {', '.join(DDF_METHODS)}")
    return _ALIASES[key]


def note(method: str, robust: str | None) -> str:
    """One line saying which reference distribution was used."""
    text = _LABELS[method]
    if robust:
        text += f"; cluster-robust ({robust}) standard errors"
        if method in ("satterthwaite", "containment", "residual"):
            text += ", degrees of freedom from the model-based method"
    return text


# ------------------------------------------------------------------------------------------- cache
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ingredient(fit, name: str):
    """Cached per-fit ingredient: ``"moments"``, ``"varpar"``, ``"kr"``, ``"terms"``, ``"containment"``."""
    store = _CACHE.setdefault(fit, {})
    if name not in store:
        if name == "moments":
            store[name] = marginal_moments(fit)
        elif name == "varpar":
            store[name] = varpar_inference(fit, ingredient(fit, "moments"))
        elif name == "kr":
            if not fit.reml:
                raise HypothesisError(
                    "Kenward-Roger's method is only available for REML fits (as in lmerTest and pbkrtest); "
                    "refit with reml=True"
                )

            store[name] = kenward_roger(ingredient(fit, "moments"))
        elif name == "terms":
            store[name] = fixed_terms(fit)
        elif name == "containment":
            store[name] = containment_df(fit, ingredient(fit, "terms"))
        else:  # pragma: no cover - programming error
            raise KeyError(name)
    return store[name]


def vcov_matrix(fit, robust: str | None) -> np.ndarray:
    """Model-based or cluster-robust covariance of beta, shape (p, p), in ``fit.fixef`` order."""
    if robust is None:
        return np.asarray(fit.vcov().to_numpy(), dtype=float)
    V = vcov_cr(fit, robust)
    names = list(fit.fixef.index)
    return np.asarray(V.loc[names, names].to_numpy(), dtype=float)


# ------------------------------------------------------------------------------------------- t tests
@dataclass(frozen=True)
class TTests:
    """One-row contrasts ``l' beta``: estimate, standard error, df, statistic, two-sided p."""

    estimate: np.ndarray
    se: np.ndarray
    df: np.ndarray
    stat: np.ndarray
    p: np.ndarray


def _containment_for_rows(fit, L: np.ndarray) -> np.ndarray:
    """Containment df of contrasts: the smallest df of the coefficients they involve (nlme warns when
    these differ)."""
    coef_df = ingredient(fit, "containment").coef
    out = np.empty(L.shape[0])
    for i, row in enumerate(L):
        used = np.abs(row) > 0
        out[i] = coef_df[used].min() if used.any() else coef_df.max()
    return out


def t_tests(fit, L: np.ndarray, method: str, robust: str | None = None) -> TTests:
    """t (or z) tests of ``l' beta = 0`` for each row ``l`` of ``L`` (shape (c, p))."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    beta = fit.state.beta
    est = L @ beta
    if method == "kenward-roger":
        if robust:
            raise HypothesisError("Kenward-Roger's method defines its own covariance; it cannot use robust=")

        kr = ingredient(fit, "kr")
        se = np.sqrt(np.einsum("cp,pq,cq->c", L, kr.PhiA, L))
        df = kr_df_1d(kr, L)
    else:
        V = vcov_matrix(fit, robust)
        se = np.sqrt(np.einsum("cp,pq,cq->c", L, V, L))
        if method == "satterthwaite":
            df = satterthwaite_t(ingredient(fit, "varpar"), L)
        elif method == "residual":
            df = np.full(L.shape[0], float(fit.nobs - fit.design.p))
        elif method == "containment":
            df = _containment_for_rows(fit, L)
        else:
            df = np.full(L.shape[0], np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = est / se
    if method == "asymptotic":
        p = 2.0 * stats.norm.sf(np.abs(stat))
    else:
        p = 2.0 * stats.t.sf(np.abs(stat), df)
    return TTests(estimate=est, se=se, df=df, stat=stat, p=p)


# ------------------------------------------------------------------------------------------- F tests
@dataclass(frozen=True)
class FTest:
    """An F test of ``L beta = rhs``.

    ``F`` is the statistic referred to ``F(ndf, ddf)`` (``ddf = inf``: ``chi2(ndf) / ndf``); for
    Kenward-Roger it is the scaled statistic (Wald with the adjusted covariance / q, times ``scale``),
    else ``scale = 1``.
    """

    F: float
    ndf: int
    ddf: float
    p: float
    scale: float = 1.0

    @property
    def F_unscaled(self) -> float:
        """The statistic before Kenward-Roger's scaling (lmerTest's ``Mean Sq`` is ``F_unscaled sigma^2``)."""
        return self.F / self.scale


def f_p_value(F: float, ndf: int, ddf: float) -> float:
    if not math.isfinite(F):
        return math.nan
    if math.isinf(ddf):
        return float(stats.chi2.sf(F * ndf, ndf))
    return float(stats.f.sf(F, ndf, ddf))


def f_test(
    fit,
    L: np.ndarray,
    rhs: np.ndarray,
    method: str,
    robust: str | None = None,
    containment: float | None = None,
) -> FTest:
    """F test of ``L beta = rhs`` with ``L`` of full row rank (shape (m, p)).

    Parameters
    ----------
    containment : float, optional
        Denominator df to use with ``method="containment"`` (a term's df in an ANOVA table); by
        default the smallest df of the coefficients involved.
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    rhs = np.asarray(rhs, dtype=float)
    beta = fit.state.beta
    if method == "kenward-roger":
        if robust:
            raise HypothesisError("Kenward-Roger's method defines its own covariance; it cannot use robust=")

        res = kr_ftest(ingredient(fit, "kr"), L, beta, rhs)
        return FTest(F=res.F, ndf=res.ndf, ddf=res.ddf, p=f_p_value(res.F, res.ndf, res.ddf), scale=res.scale)
    if method == "satterthwaite" and not robust:
        F, q, ddf = satterthwaite_f(ingredient(fit, "varpar"), L, beta, rhs)
        return FTest(F=F, ndf=q, ddf=ddf, p=f_p_value(F, q, ddf))
    V = vcov_matrix(fit, robust)
    q = L.shape[0]
    diff = L @ beta - rhs
    F = float(diff @ np.linalg.solve(L @ V @ L.T, diff)) / q
    if method == "satterthwaite":
        ddf = satterthwaite_f(ingredient(fit, "varpar"), L, beta, rhs)[2]
    elif method == "residual":
        ddf = float(fit.nobs - fit.design.p)
    elif method == "containment":
        ddf = float(containment) if containment is not None else float(_containment_for_rows(fit, L).min())
    else:
        ddf = math.inf
    return FTest(F=F, ndf=q, ddf=ddf, p=f_p_value(F, q, ddf))

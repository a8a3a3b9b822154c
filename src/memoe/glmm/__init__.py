"""Generalised linear mixed models (lme4's ``glmer``): binomial and Poisson responses, Laplace and
adaptive Gauss-Hermite quadrature, on the LMM's formula, design and penalised least squares.

>>> from memoe.glmm import glmm
>>> fit = glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", data, "binomial").fit()

Modules: ``families`` (links, variance, deviance, log-likelihood), ``design`` (cbind responses,
weights, offset), ``pirls`` (conditional modes), ``laplace`` and ``agq`` (the deviances),
``model`` (the two-stage fit), ``result`` and ``summary``.
"""

# registers the family's .memoe codec with memoe.core.persist (which imports no family)
from memoe.glmm import persist as _persist  # noqa: F401
from memoe.glmm.agq import QuadratureError, gh_rule
from memoe.glmm.families import (
    Binomial,
    Family,
    FamilyError,
    Link,
    NonIntegerResponseWarning,
    Poisson,
    get_family,
    get_link,
)
from memoe.glmm.model import GLMM, GlmmControl, glmm
from memoe.glmm.result import GlmmResult

__all__ = [
    "GLMM",
    "Binomial",
    "Family",
    "FamilyError",
    "GlmmControl",
    "GlmmResult",
    "Link",
    "NonIntegerResponseWarning",
    "Poisson",
    "QuadratureError",
    "get_family",
    "get_link",
    "gh_rule",
    "glmm",
]

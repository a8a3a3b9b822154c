"""Generalised linear mixed models (lme4's ``glmer``, ``glmer.nb``; glmmTMB's Laplace with
``laplace="observed"``): binomial, Poisson, Gamma, inverse Gaussian, Gaussian (non-identity link) and
negative binomial (NB2) responses, Laplace and adaptive Gauss-Hermite quadrature, on the LMM's formula,
design and penalised least squares. A formula without random-effects terms fits the GLM (R's ``glm``).

>>> from memoe.glmm import glmm
>>> fit = glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", data, "binomial").fit()

Modules: ``families`` (links, variance, deviance, log-likelihood), ``design`` (cbind responses,
weights, offset), ``pirls`` (conditional modes), ``laplace`` and ``agq`` (the deviances),
``model`` (the two-stage fit), ``result`` and ``summary``, ``glm`` (no random effects),
``inference`` (profile / bootstrap intervals, Wald tests and ANOVA).
"""

# registers the family's .memoe codec with memoe.core.persist (which imports no family)
from memoe.glmm import persist as _persist  # noqa: F401
from memoe.glmm.agq import QuadratureError, gh_rule
from memoe.glmm.control import GlmmControl
from memoe.glmm.factory import glmm
from memoe.glmm.families import (
    Binomial,
    Family,
    FamilyError,
    Gamma,
    Gaussian,
    InverseGaussian,
    Link,
    NegativeBinomial,
    NonIntegerResponseWarning,
    Poisson,
    get_family,
    get_link,
)
from memoe.glmm.glm import GlmResult
from memoe.glmm.model import GLMM
from memoe.glmm.result import GlmmResult

__all__ = [
    "GLMM",
    "Binomial",
    "Family",
    "FamilyError",
    "Gamma",
    "Gaussian",
    "GlmResult",
    "GlmmControl",
    "GlmmResult",
    "InverseGaussian",
    "Link",
    "NegativeBinomial",
    "NonIntegerResponseWarning",
    "Poisson",
    "QuadratureError",
    "get_family",
    "get_link",
    "gh_rule",
    "glmm",
]

"""Inference for fitted mixed models: tests with approximate denominator df, LRTs, sandwich SEs,
information criteria, confidence intervals.

The functions here are thin entry points; each idea lives in its own module.
"""

from __future__ import annotations

__all__ = ["anova", "coef_table", "compare", "confint", "information_criteria", "test"]


def coef_table(fit, ddf: str = "residual", robust: str | None = None):
    """Fixed-effects table (Estimate, Std. Error, df, t value, Pr(>|t|)); see :mod:`memoe.inference.tables`."""
    from memoe.inference.tables import coef_table as _coef_table

    return _coef_table(fit, ddf=ddf, robust=robust)


def test(fit, hypothesis, ddf: str = "satterthwaite", robust: str | None = None):
    """F test of ``L beta = 0``; see :mod:`memoe.inference.hypothesis`."""
    from memoe.inference.hypothesis import test as _test

    return _test(fit, hypothesis, ddf=ddf, robust=robust)


def anova(fit, ddf: str = "satterthwaite", type: int = 3):
    """Type III (or I) F-test table as lmerTest's ``anova``; see :mod:`memoe.inference.anova`."""
    from memoe.inference.anova import anova as _anova

    return _anova(fit, ddf=ddf, type=type)


def compare(*fits, boundary: bool = False, refit: bool = True):
    """Likelihood-ratio table of nested models as lme4's ``anova``; see :mod:`memoe.inference.lrt`."""
    from memoe.inference.lrt import compare as _compare

    return _compare(*fits, boundary=boundary, refit=refit)


def information_criteria(fit):
    """AIC, AICc, BIC, HQIC, CAIC; see :mod:`memoe.inference.criteria`."""
    from memoe.inference.criteria import information_criteria as _ic

    return _ic(fit)


def confint(fit, method: str = "wald", level: float = 0.95, **kwargs):
    """Confidence intervals (Wald, profile, parametric bootstrap); see :mod:`memoe.inference.confint`."""
    from memoe.inference.confint import confint as _confint

    return _confint(fit, method=method, level=level, **kwargs)

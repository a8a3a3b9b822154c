"""Inference for fitted mixed models: tests with approximate denominator df, LRTs, sandwich SEs,
information criteria, confidence intervals.

Each idea lives in its own module; the entry points are re-exported here. The submodules are imported
eagerly so that the package attributes ``anova`` and ``confint`` are the functions, not the modules of
the same names (a later ``import memoe.inference.anova`` does not rebind an attribute that exists).
"""

from __future__ import annotations

from memoe.inference.anova import anova
from memoe.inference.confint import confint
from memoe.inference.criteria import information_criteria
from memoe.inference.hypothesis import test
from memoe.inference.lrt import compare
from memoe.inference.sandwich import vcov_cr
from memoe.inference.tables import coef_table

__all__ = ["anova", "coef_table", "compare", "confint", "information_criteria", "test", "vcov_cr"]

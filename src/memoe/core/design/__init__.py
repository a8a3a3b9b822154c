"""From formula and DataFrame to the numeric design of a mixed model (no fitting happens here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.core.covariance import ThetaMap
from memoe.core.design.fixed import FixedDesign, build_fixed
from memoe.core.design.frame import ModelFrame, build_frame, check_response_varies, numeric_response
from memoe.core.design.grouping import GroupingFactor, make_grouping_factor
from memoe.core.design.random import FactorBlock, ReTerm, build_random
from memoe.core.formula.parse import FormulaSpec, parse_formula
from memoe.errors import DataError, FormulaError

__all__ = [
    "Design",
    "FactorBlock",
    "FixedDesign",
    "GroupingFactor",
    "ModelFrame",
    "ReTerm",
    "build_design",
    "make_grouping_factor",
]


@dataclass(frozen=True)
class Design:
    """Everything numeric a mixed model needs, built once per formula and data.

    Attributes
    ----------
    spec : FormulaSpec
    frame : ModelFrame
        Kept rows and the missing-value report.
    y : numpy.ndarray, shape (n,)
    fixed : FixedDesign
        ``fixed.X`` is (n, p).
    terms : list of ReTerm
        lme4's terms in lme4's order.
    blocks : list of FactorBlock
        Terms merged per grouping factor, block 0 has the most levels.
    theta_map : ThetaMap
    """

    spec: FormulaSpec
    frame: ModelFrame
    y: np.ndarray
    fixed: FixedDesign
    terms: list[ReTerm]
    blocks: list[FactorBlock]
    theta_map: ThetaMap

    @property
    def X(self) -> np.ndarray:
        return self.fixed.X

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def p(self) -> int:
        return self.fixed.X.shape[1]

    @property
    def fixef_names(self) -> list[str]:
        return self.fixed.names


def build_design(
    formula: str | FormulaSpec,
    data: pd.DataFrame,
    require_random: bool = True,
    contrasts: Mapping[str, str] | None = None,
) -> Design:
    """Parse ``formula``, build the model frame, fixed design and random-effects blocks.

    Parameters
    ----------
    formula : str or FormulaSpec
    data : pandas.DataFrame
    require_random : bool
        Raise if the formula has no ``(lhs | group)`` term.
    contrasts : mapping, optional
        Factor column -> ``"treatment"``, ``"sum"``, ``"helmert"`` or ``"poly"`` for the fixed
        effects (see :mod:`memoe.core.design.contrasts`); default R's.

    Raises
    ------
    FormulaError, DataError, IdentifiabilityError
    """
    spec = formula if isinstance(formula, FormulaSpec) else parse_formula(formula)
    if require_random and not spec.random:
        raise FormulaError(
            f"formula {spec.text!r} has no random-effects term such as (1 | group); "
            "a linear mixed model needs at least one"
        )
    frame = build_frame(spec, data)
    y = numeric_response(frame.data, spec.response)
    if not np.all(np.isfinite(y)):
        raise DataError(f"response {spec.response!r} has {int((~np.isfinite(y)).sum())} non-finite values")
    check_response_varies(y, spec.response)
    fixed = build_fixed(spec.fixed, frame.data, contrasts)
    n = len(y)
    if fixed.X.shape[0] != n:
        raise DataError(f"fixed-effects matrix has {fixed.X.shape[0]} rows but the response has {n}")
    if fixed.p >= n:
        # REML needs n - p > 0 residual degrees of freedom, ML a residual variance
        raise DataError(
            f"the fixed effects have {fixed.p} linearly independent columns for {n} observations "
            f"({frame.n_dropped} rows dropped for missing values); a linear mixed model needs more "
            "observations than fixed-effects coefficients"
        )
    terms, blocks, theta_map = build_random(spec.random, frame.data, n)
    return Design(spec=spec, frame=frame, y=y, fixed=fixed, terms=terms, blocks=blocks, theta_map=theta_map)

"""From formula and DataFrame to the numeric design of a mixed model (no fitting happens here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
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
    prior_weights : numpy.ndarray of shape (n,), or None
        lme4's prior weights (residual variance ``sigma^2 / w_i``). With weights or an offset, ``y``,
        ``fixed.X`` and every block's ``Z`` are the *working* values ``sqrt(w) (y - offset)``,
        ``sqrt(w) X`` and ``sqrt(w) Z`` (lme4's ``sqrtXWt``), on which every likelihood computation is the
        unweighted one; :attr:`response`, :meth:`raw_rows` give the values on the data's scale.
    offset : numpy.ndarray of shape (n,), or None
        The sum of the formula's ``offset(expr)`` terms and the ``offset=`` argument.
    offset_terms : tuple of str
        The expressions of the formula's ``offset(...)`` terms (replayed on new data).
    weights_column, offset_column : str or None
        The model-frame columns of the ``weights=`` / ``offset=`` arguments (``"(weights)"`` when given
        as values).
    """

    spec: FormulaSpec
    frame: ModelFrame
    y: np.ndarray
    fixed: FixedDesign
    terms: list[ReTerm]
    blocks: list[FactorBlock]
    theta_map: ThetaMap
    prior_weights: np.ndarray | None = None
    offset: np.ndarray | None = None
    offset_terms: tuple[str, ...] = ()
    weights_column: str | None = None
    offset_column: str | None = None
    response_values: np.ndarray | None = None

    @property
    def sqrt_weights(self) -> np.ndarray | None:
        """``sqrt(w)``, or None without prior weights."""
        return None if self.prior_weights is None else np.sqrt(self.prior_weights)

    @property
    def response(self) -> np.ndarray:
        """The response on the data's scale (``y`` itself without weights and offset)."""
        return self.y if self.response_values is None else self.response_values

    def raw_rows(self, values: np.ndarray) -> np.ndarray:
        """Working rows (``sqrt(w) x``) back on the data's scale; ``values`` of shape (n,) or (n, k)."""
        s = self.sqrt_weights
        if s is None:
            return values
        return values / (s if values.ndim == 1 else s[:, None])

    @property
    def log_weights(self) -> float:
        """``sum(log w)``: lme4's deviance subtracts it (``ldW``), its log-likelihood adds half of it."""
        return 0.0 if self.prior_weights is None else float(np.log(self.prior_weights).sum())

    def with_prior(
        self, weights: np.ndarray | None, offset: np.ndarray | None, offset_terms: tuple[str, ...] = (),
        weights_column: str | None = None, offset_column: str | None = None,
    ) -> Design:
        """The working design of prior weights and an offset (see the class notes); unchanged without either."""
        if weights is None and offset is None:
            return self
        y = self.y if offset is None else self.y - offset
        fixed, blocks = self.fixed, self.blocks
        if weights is not None:
            s = np.sqrt(weights)
            y = s * y
            fixed = dataclasses.replace(fixed, X=np.ascontiguousarray(fixed.X * s[:, None]), spreads=None)
            blocks = [dataclasses.replace(b, Z=np.ascontiguousarray(b.Z * s[:, None])) for b in blocks]
        return dataclasses.replace(
            self, y=y, fixed=fixed, blocks=blocks, prior_weights=weights, offset=offset, offset_terms=offset_terms,
            weights_column=weights_column, offset_column=offset_column, response_values=self.y,
        )

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
    extra: Iterable[str] = (),
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
    extra : iterable of str
        Further columns whose missing values drop rows (weights, offset variables).

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
    frame = build_frame(spec, data, extra=extra)
    y = numeric_response(frame.data, spec.response, frame.columns)
    if not np.all(np.isfinite(y)):
        raise DataError(f"response {spec.response!r} has {int((~np.isfinite(y)).sum())} non-finite values")
    check_response_varies(y, spec.response)
    # the design's column cache: model-matrix columns of the fixed part, reused (as views) by random-effects
    # terms with the same columns; the frame's Series and text factor codes (memoe.core.design.native.column)
    cache: dict = {("__col__", c): col for c, col in frame.columns.items()}
    fixed = build_fixed(spec.fixed, frame.data, contrasts, cache=cache)
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
    terms, blocks, theta_map = build_random(spec.random, frame.data, n, cache=cache)
    return Design(spec=spec, frame=frame, y=y, fixed=fixed, terms=terms, blocks=blocks, theta_map=theta_map)

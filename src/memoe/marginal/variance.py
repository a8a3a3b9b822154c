"""Residual variance functions, as nlme's ``varFunc`` classes.

A variance function gives every row an SD ratio ``s`` (the residual SD of the row is
``sigma * s``); it enters the per-group residual covariance as ``sigma^2 S C S`` with
``S = diag(s)``. The optimiser works on log ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.errors import ArgumentError, ArgumentTypeError, DataError

__all__ = ["BoundVariance", "VarIdent"]


@dataclass(frozen=True)
class BoundVariance:
    """A variance function bound to the rows of one data set.

    Attributes
    ----------
    function : VarIdent
    strata : numpy.ndarray of int, shape (N,)
        Stratum code of each row (0 = the reference stratum).
    levels : pandas.Index
        Stratum labels; the first is the reference (ratio 1).
    """

    function: VarIdent
    strata: np.ndarray
    levels: pd.Index

    @property
    def size(self) -> int:
        return len(self.levels) - 1

    @property
    def names(self) -> list[str]:
        return [str(v) for v in self.levels[1:]]

    def ratios(self, u: np.ndarray) -> np.ndarray:
        """SD ratio of every row, shape (N,)."""
        return np.exp(np.concatenate(([0.0], np.asarray(u, dtype=float))))[self.strata]

    def natural(self, u: np.ndarray) -> pd.Series:
        """SD ratios of all strata, the reference included (nlme's ``coef(varStruct, FALSE)``)."""
        vals = np.exp(np.concatenate(([0.0], np.asarray(u, dtype=float))))
        return pd.Series(vals, index=[str(v) for v in self.levels], dtype=float)

    needs_fitted = False

    def transform(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Per entry of ``u``: the SD ratio, its derivative d ratio / d u, and the kind ("sd": log scale)."""
        r = np.exp(np.asarray(u, dtype=float))
        return r, r, ["sd"] * len(r)

    def term(self, name: str) -> str:
        """broom-style ``tidy()`` term of the SD ratio of stratum ``name``: ``varIdent(<by>=<name>)``."""
        return f"varIdent({self.function.by}={name})"

    def summary_lines(self, u: np.ndarray, block) -> list[str]:
        """nlme's ``Variance function:`` block (without its header line)."""
        v = self.function
        return [f" Structure: {v.label}", f" Formula: {v.formula()}", " Parameter estimates:", *block(self.natural(u))]

    def ratios_for(self, u: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        """SD ratios of the rows of new data (strata matched to the fit's)."""
        from memoe.core.design.newdata import match_levels

        by = self.function.by
        if by not in frame.columns:
            raise DataError(f"the data have no column {by!r} (the strata of the variance function VarIdent)")
        codes = match_levels(self.levels, frame[by])
        if np.any(codes == -1):
            bad = frame[by][codes == -1].iloc[0]
            raise DataError(
                f"column {by!r} (the strata of VarIdent) has the value {bad!r}, not a stratum of the fit; "
                f"the strata are {[str(v) for v in self.levels][:12]}"
            )
        r = np.exp(np.concatenate(([0.0], np.asarray(u, dtype=float))))
        return np.where(codes >= 0, r[np.maximum(codes, 0)], np.nan)

    def start(self, resid: np.ndarray | None = None) -> np.ndarray:
        """Log SD ratios: zeros, or the ratios of the residual SDs per stratum when residuals are given."""
        if resid is None:
            return np.zeros(self.size)
        ss = np.bincount(self.strata, weights=resid**2, minlength=len(self.levels))
        n = np.bincount(self.strata, minlength=len(self.levels))
        sd = np.sqrt(ss / np.maximum(n, 1))
        if not np.all(sd > 0):
            return np.zeros(self.size)
        return np.log(sd[1:] / sd[0])


@dataclass(frozen=True)
class VarIdent:
    """nlme's ``varIdent(form = ~ 1 | by)``: a residual SD ratio per stratum of ``by``.

    Parameters
    ----------
    by : str
        Stratum column (any type: a Categorical keeps its category order, other values are sorted,
        as R's ``factor()``). The first stratum is the reference with ratio 1.

    R equivalent
    ------------
    ``nlme::varIdent(form = ~ 1 | by)``.

    Examples
    --------
    >>> import memoe
    >>> from memoe.marginal import CAR1, VarIdent
    >>> bw = memoe.datasets.load("BodyWeight")
    >>> fit = memoe.gls("weight ~ Time * Diet", bw, correlation=CAR1("Time", "Rat"), weights=VarIdent("Diet")).fit()
    >>> fit.var_params.index.tolist()     # SD ratios to the first stratum (1 for the reference)
    ['1', '2', '3']

    """

    by: str

    label = "Different standard deviations per stratum"

    def __post_init__(self) -> None:
        if not isinstance(self.by, str):
            raise ArgumentTypeError(
                f"VarIdent(by=...) must be the stratum column name (str), got {self.by!r} ({type(self.by).__name__})"
            )
        if not self.by.strip():
            raise ArgumentError("VarIdent(by=...) must be a non-empty column name")

    def columns(self) -> list[str]:
        return [self.by]

    def formula(self) -> str:
        return f"~1 | {self.by}"

    def bind(self, frame: pd.DataFrame) -> BoundVariance:
        if self.by not in frame.columns:
            raise DataError(f"unknown column {self.by!r} (the strata of VarIdent)")
        col = frame[self.by]
        if isinstance(col.dtype, pd.CategoricalDtype):
            col = col.cat.remove_unused_categories()
            codes, levels = col.cat.codes.to_numpy().astype(np.int64), pd.Index(col.cat.categories)
        else:
            c, u = pd.factorize(col, sort=True)
            codes, levels = c.astype(np.int64), pd.Index(u)
        if len(levels) < 2:
            raise DataError(f"column {self.by!r} (the strata of VarIdent) has a single value; VarIdent needs two")
        return BoundVariance(function=self, strata=codes, levels=levels)


#: fewest rows per VarIdent stratum: an SD ratio from fewer rows has under 2 residual degrees of freedom
MIN_STRATUM_ROWS = 3
#: a numeric stratum column with non-integer values and more distinct values than this is continuous
CONTINUOUS_LEVELS = 20


def check_variance_identifiable(var: BoundVariance, by: str, column: pd.Series) -> None:
    """Refuse a ``VarIdent`` whose strata the data cannot identify.

    Rules (stated in the messages): the stratum column must not be continuous (numeric with
    non-integer values and more than :data:`CONTINUOUS_LEVELS` distinct values: one SD per value is one
    parameter per handful of rows); every stratum needs at least :data:`MIN_STRATUM_ROWS` rows (so at
    most ``nobs / 3`` strata).

    Raises
    ------
    DataError
        Naming the column, the number of strata and the smallest strata.
    """
    nobs = len(var.strata)
    nlev = len(var.levels)
    if pd.api.types.is_numeric_dtype(column) and column.dtype != bool and nlev > CONTINUOUS_LEVELS:
        v = column.to_numpy(dtype=float)
        if np.any(v != np.round(v)):
            raise DataError(
                f"VarIdent({by!r}): column {by!r} looks continuous ({nlev} distinct non-integer values in {nobs} "
                "rows); VarIdent estimates one SD ratio per distinct value. Use a grouping column with few levels "
                f"(e.g. pd.cut of {by!r})"
            )
    counts = np.bincount(var.strata, minlength=nlev)
    small = np.flatnonzero(counts < MIN_STRATUM_ROWS)
    if small.size:
        show = ", ".join(f"{var.levels[i]!s} ({counts[i]} row{'s' if counts[i] != 1 else ''})" for i in small[:5])
        raise DataError(
            f"VarIdent({by!r}): {small.size} of its {nlev} strata have fewer than {MIN_STRATUM_ROWS} rows ({show}"
            f"{', ...' if small.size > 5 else ''}); each stratum's SD ratio needs at least {MIN_STRATUM_ROWS} rows "
            f"(so at most {nobs // MIN_STRATUM_ROWS} strata for {nobs} rows). Merge strata or use a coarser column"
        )

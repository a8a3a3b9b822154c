"""Residual variance functions, as nlme's ``varFunc`` classes.

A variance function gives every row an SD ratio ``s`` (the residual SD of the row is
``sigma * s``); it enters the per-group residual covariance as ``sigma^2 S C S`` with
``S = diag(s)``. The optimiser works on log ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.errors import DataError

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
    """

    by: str

    label = "Different standard deviations per stratum"

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

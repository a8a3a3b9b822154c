"""One view of a fitted model for the figures: kept rows, groups, residuals and formula, whatever the family.

Each family stores these in its own place (``design.frame`` for the mixed models, ``model._frame`` for
GEE, ``model.mdesign`` for mixtures); the figures read them only through :class:`FitView`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from memoe.core.design.frame import formula_variables
from memoe.core.formula.parse import FormulaSpec, parse_formula
from memoe.errors import ArgumentError, ArgumentTypeError, MemoeError, UnknownColumnError

__all__ = ["FitView", "Groups"]

# residuals drawn by default: response residuals keep the response's units for the residual-vs-fitted
# plot; the QQ plot wants residuals that are N(0, 1) under the model where the family has them
_RESID_DEFAULT = {"glmm": "pearson", "gee": "pearson"}
_QQ_DEFAULT = {"lmm": "pearson", "lme": "normalized", "gls": "normalized", "glmm": "deviance", "gee": "pearson"}
_MIXED = ("lmm", "glmm", "lme")


@dataclass(frozen=True)
class Groups:
    """Subjects of the kept rows: ``codes`` (n,) index into ``levels``."""

    name: str
    codes: np.ndarray
    levels: pd.Index

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=len(self.levels))


class FitView:
    """Family-independent access to what the figures need from a fit."""

    def __init__(self, fit) -> None:
        self.fit = fit
        self.family: str = str(fit.family)

    # ------------------------------------------------------------------ rows and formula
    @cached_property
    def frame(self):
        """The :class:`~memoe.core.design.frame.ModelFrame` of the fit (kept rows and their mask)."""
        fam = self.family
        if fam == "gee":
            return self.fit.model._frame
        if fam in ("memoe", "moe"):
            return self.fit.model.mdesign.design.frame
        return self.fit.design.frame

    @cached_property
    def data(self) -> pd.DataFrame:
        """The used columns of the kept rows (original index)."""
        if self.family in ("memoe", "moe"):
            return self.fit.model.mdesign.data
        return self.frame.data

    def kept(self, series: pd.Series) -> np.ndarray:
        """Per-input-row values reduced to the kept rows (the order of :attr:`data`)."""
        values = np.asarray(series, dtype=float)
        mask = np.asarray(self.frame.row_mask, dtype=bool)
        return values[mask] if len(values) == len(mask) else values

    @cached_property
    def spec(self) -> FormulaSpec:
        fam = self.family
        if fam == "gee":
            return parse_formula(self.fit.model.formula)
        if fam in ("memoe", "moe"):
            return self.fit.model.mdesign.design.spec
        return self.fit.design.spec

    @property
    def formula(self) -> str:
        return self.spec.text

    @property
    def response(self) -> str:
        return str(self.fit.response_name)

    @cached_property
    def fitted(self) -> np.ndarray:
        return self.kept(self.fit.fitted)

    @cached_property
    def y(self) -> np.ndarray:
        # fitted + response residual: the response as the family models it (proportions for binomial)
        return self.fitted + self.kept(self.fit.resid)

    def residuals(self, type: str | None, qq: bool = False) -> tuple[np.ndarray, str]:
        """Residuals of the kept rows and their label; ``type=None`` picks the figure's default."""
        if type is None:
            table = _QQ_DEFAULT if qq else _RESID_DEFAULT
            type = table.get(self.family, "response")
            if type not in self.fit.residual_types:
                type = self.fit.residual_types[0]
        values = self.kept(self.fit.residuals(type=type))
        return values, f"{type} residual"

    # ------------------------------------------------------------------ subjects
    def groups(self, group: str | None = None) -> Groups | None:
        """The subjects (first grouping factor, GEE cluster, mixture subject), or those of column ``group``."""
        if group is not None:
            col = self.column(group, "group")
            codes, levels = pd.factorize(col, sort=True)
            if (codes < 0).any():
                raise ArgumentError(f"group column {group!r} has missing values in the rows of the fit")
            return Groups(group, codes.astype(np.int64), pd.Index(levels, name=group))
        fam, fit = self.family, self.fit
        if fam in _MIXED and fit.design.blocks:
            f = fit.design.blocks[0].factor
            return Groups(f.name, np.asarray(f.codes, dtype=np.int64), f.levels)
        if fam == "gls":
            lay = fit.model.layout
            if lay.name is None:
                return None
            return Groups(lay.name, np.asarray(lay.codes, dtype=np.int64), lay.levels)
        if fam == "gee":
            return self.groups(fit.model.group)
        if fam in ("memoe", "moe"):
            md = fit.model.mdesign
            return Groups(md.group, np.asarray(md.codes, dtype=np.int64), md.subjects)
        return None

    def require_groups(self, group: str | None, what: str) -> Groups:
        g = self.groups(group)
        if g is None:
            raise MemoeError(
                f"{what} needs subjects, and this {self.family} fit has no grouping (independent rows); "
                "pass group='<column>' naming the subject column"
            )
        return g

    def column(self, name: str, argument: str) -> pd.Series:
        if not isinstance(name, str):
            raise ArgumentTypeError(f"{argument} must be a column name (str), got {type(name).__name__}")
        if name not in self.data.columns:
            raise UnknownColumnError(
                f"{argument}={name!r} is not a column of the fit's data; columns: {list(self.data.columns)}"
            )
        return self.data[name]

    def time(self, time: str | None) -> str:
        """The time axis: ``time`` if given, else the first numeric variable of a random-effects term,
        of the GEE's ``time``, or of the fixed part."""
        if time is not None:
            col = self.column(time, "time")
            if not pd.api.types.is_numeric_dtype(col):
                raise ArgumentError(f"time={time!r} must be a numeric column, it has dtype {col.dtype}")
            return time
        candidates: list[str] = []
        for term in self.spec.random:
            candidates += formula_variables(term.lhs, "random term") if term.lhs.strip() not in ("1", "0") else []
        if self.family == "gee" and self.fit.model.time is not None:
            candidates.append(self.fit.model.time)
        candidates += formula_variables(self.spec.fixed, "fixed part")
        for c in candidates:
            usable = c in self.data.columns and c != self.response and pd.api.types.is_numeric_dtype(self.data[c])
            if usable and self.data[c].nunique() > 1:
                return c
        raise MemoeError(
            f"no numeric covariate of {self.formula!r} to use as the time axis; pass time='<column>'"
        )

    # ------------------------------------------------------------------ grids for population curves
    def grid(self, time: str, by: str | None = None, n: int = 60) -> pd.DataFrame:
        """Rows spanning ``time`` (per level of ``by``), every other column at its mean or most frequent value."""
        data = self.data
        t = data[time].to_numpy(dtype=float)
        tgrid = np.linspace(np.nanmin(t), np.nanmax(t), n)
        levels = [None] if by is None else list(pd.unique(self.column(by, "by").dropna()))
        m = len(tgrid) * len(levels)
        cols: dict[str, object] = {}
        for c in data.columns:
            if c in (time, by):
                continue
            col = data[c]
            if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
                value = col.mode().iloc[0]
                if isinstance(col.dtype, pd.CategoricalDtype):
                    cols[c] = pd.Categorical([value] * m, categories=col.cat.categories)
                else:
                    cols[c] = np.repeat(np.array([value], dtype=object), m)
            else:
                cols[c] = np.repeat(float(col.mean()), m)
        frame = pd.DataFrame(cols)
        frame[time] = np.tile(tgrid, len(levels))
        if by is not None:
            col = data[by]
            values = np.repeat(np.array(levels, dtype=object), len(tgrid))
            frame[by] = pd.Categorical(values, categories=col.cat.categories) if isinstance(
                col.dtype, pd.CategoricalDtype
            ) else values
        return frame

    # ------------------------------------------------------------------ random effects
    def has_ranef(self) -> bool:
        if self.family in _MIXED:
            return bool(self.fit.design.blocks)
        if self.family == "memoe":
            return bool(self.fit.model.mdesign.z_names)
        return False

    def require_ranef(self, what: str) -> None:
        if not self.has_ranef():
            why = {
                "gls": "a gls model has no random effects (only residual correlation)",
                "gee": "a GEE is a marginal model without random effects",
                "moe": "a MoE's experts are regressions without random effects",
            }.get(self.family, f"this {self.family} fit has no random effects")
            raise MemoeError(f"{what} does not apply: {why}")

    def ranef(self) -> dict[str, pd.DataFrame]:
        """BLUPs per grouping factor (posterior-weighted for a MEMoE)."""
        self.require_ranef("ranef")
        if self.family == "memoe":
            return self.fit.ranef_posterior
        return self.fit.ranef

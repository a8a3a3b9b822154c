"""The model frame: which columns a formula uses, their checks, and the missing-value policy."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from formulaic import Formula

from memoe.core.formula.parse import FormulaSpec
from memoe.errors import DataError, FormulaError

__all__ = ["R_FUNCTIONS", "ModelFrame", "build_frame", "formula_variables"]

# R functions memoe evaluates in formulas (see memoe.core.design.fixed), not data columns
R_FUNCTIONS = frozenset({"factor"})


def formula_variables(rhs_or_formula: str, where: str) -> list[str]:
    """Variables a formulaic expression reads from the data (functions such as ``np.log`` excluded)."""
    try:
        f = Formula(rhs_or_formula)
    except Exception as exc:  # formulaic's parse errors are varied; name the part that failed
        raise FormulaError(f"cannot parse {where} {rhs_or_formula!r}: {exc}") from None
    return sorted(str(v) for v in f.required_variables if str(v) not in R_FUNCTIONS)


@dataclass(frozen=True)
class ModelFrame:
    """Rows of the input kept for fitting.

    Attributes
    ----------
    data : pandas.DataFrame
        The used columns of the kept rows (original index preserved).
    row_mask : numpy.ndarray of bool, shape (n_input,)
        Which input rows were kept.
    index : pandas.Index
        The input DataFrame's index (for aligning per-row outputs).
    n_dropped : int
        Rows dropped because a used column was missing.
    dropped_by_column : dict
        Missing-value counts per used column.
    """

    data: pd.DataFrame
    row_mask: np.ndarray
    index: pd.Index
    n_dropped: int
    dropped_by_column: dict[str, int]

    def align(self, values: np.ndarray, name: str) -> pd.Series:
        """Per-row values of the kept rows on the input's index, NaN for dropped rows (R's ``na.exclude``)."""
        if self.n_dropped == 0:
            return pd.Series(values, index=self.index, name=name)
        full = np.full(len(self.index), np.nan)
        full[self.row_mask] = values
        return pd.Series(full, index=self.index, name=name)


def _check_columns(df: pd.DataFrame, names: Iterable[str], what: dict[str, str]) -> None:
    missing = [n for n in names if n not in df.columns]
    if missing:
        shown = ", ".join(repr(c) for c in list(df.columns)[:12])
        more = "" if len(df.columns) <= 12 else f", ... ({len(df.columns)} columns)"
        details = "; ".join(f"{m!r} (used in {what.get(m, 'the formula')})" for m in missing)
        raise DataError(f"unknown column {details}; the data have {shown}{more}")


def build_frame(spec: FormulaSpec, data: pd.DataFrame, extra: Iterable[str] = ()) -> ModelFrame:
    """Select the used columns, check them, and drop rows with missing values.

    Parameters
    ----------
    spec : FormulaSpec
    data : pandas.DataFrame
    extra : iterable of str
        Further columns that must be complete (e.g. gating covariates of a mixture).

    Raises
    ------
    DataError
        Unknown column, non-numeric response, or no rows left.
    """
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if len(data) == 0:
        raise DataError("data has 0 rows")
    where: dict[str, str] = {}
    used: list[str] = []

    def add(names: Iterable[str], place: str) -> None:
        for n in names:
            where.setdefault(n, place)
            if n not in used:
                used.append(n)

    add(formula_variables(spec.response + " ~ 1", "the response"), f"the response {spec.response!r}")
    add(formula_variables(spec.fixed, "the fixed-effects part"), "the fixed effects")
    for term in spec.random:
        add(formula_variables(term.lhs, f"random-effects term {term.text!r}"), f"random term {term.text!r}")
        add(term.group_factors, f"the grouping factor of {term.text!r}")
    add(extra, "the gating model")
    _check_columns(data, used, where)

    frame = data[used]
    na = frame.isna()
    dropped_by_column = {c: int(k) for c, k in na.sum().items() if k}
    mask = ~na.any(axis=1).to_numpy()
    n_dropped = int((~mask).sum())
    if not mask.any():
        raise DataError(
            f"no rows left after removing {n_dropped} rows with missing values "
            f"(missing per column: {dropped_by_column})"
        )
    return ModelFrame(
        data=frame.loc[mask] if n_dropped else frame,
        row_mask=mask,
        index=data.index,
        n_dropped=n_dropped,
        dropped_by_column=dropped_by_column,
    )


def numeric_response(frame: pd.DataFrame, response: str) -> np.ndarray:
    """Evaluate the response and insist it is numeric."""
    if response in frame.columns:
        col = frame[response]
        if col.dtype == bool:
            return col.to_numpy(dtype=float)
        if not pd.api.types.is_numeric_dtype(col):
            raise DataError(
                f"response {response!r} must be numeric, but column {response!r} has dtype {col.dtype} "
                f"(first value {col.iloc[0]!r})"
            )
        return col.to_numpy(dtype=float)
    from formulaic import model_matrix

    try:
        mm = model_matrix(f"{response} ~ 1", frame, na_action="ignore")
        lhs = mm.lhs
    except Exception as exc:
        raise DataError(f"cannot evaluate the response {response!r}: {exc}") from None
    if lhs.shape[1] != 1:
        raise DataError(f"response {response!r} must be a single numeric column, it gives {lhs.shape[1]} columns")
    y = np.asarray(lhs, dtype=float).ravel()
    return y

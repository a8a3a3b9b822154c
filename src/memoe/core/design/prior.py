"""Prior weights and offsets of a linear model: R's ``weights=``, ``offset=`` and ``offset(expr)`` terms.

R's ``model.frame`` carries them as the columns ``(weights)`` and ``(offset)``: rows with a missing
weight or offset are dropped with the rest, and ``offset(expr)`` terms of the formula are summed
with the ``offset=`` argument. This module does the same for the LMM (the GLMM has its own copy in
:mod:`memoe.glmm.design`).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from memoe.core.formula.parse import split_top_level
from memoe.errors import DataError, FormulaError

__all__ = [
    "OFFSET_COLUMN",
    "WEIGHTS_COLUMN",
    "as_expression",
    "attach_vector",
    "check_prior_weights",
    "evaluate_offset",
    "newdata_offset",
    "same_transform_states",
    "split_offsets",
    "transform_states",
]

# R's model-frame names of the weights= and offset= arguments
WEIGHTS_COLUMN = "(weights)"
OFFSET_COLUMN = "(offset)"

_OFFSET = re.compile(r"^offset\s*\((.*)\)$", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


def split_offsets(fixed: str) -> tuple[str, tuple[str, ...]]:
    """Remove top-level ``offset(expr)`` terms from a fixed-effects right-hand side.

    Returns the remaining right-hand side (``"1"`` if nothing is left) and the offset expressions.

    Raises
    ------
    FormulaError
        A subtracted offset term (``- offset(o)``), an empty ``offset()``.
    """
    kept, offsets = [], []
    for sep, piece in split_top_level(fixed, "+-", fixed):
        m = _OFFSET.match(piece.strip())
        if m:
            if sep == "-":
                raise FormulaError(f"an offset term cannot be subtracted: '- {piece.strip()}'")
            if not m.group(1).strip():
                raise FormulaError(f"the offset term {piece.strip()!r} needs an expression, e.g. offset(log(t))")
            offsets.append(m.group(1).strip())
        elif piece.strip() or sep:
            kept.append(f"{sep} {piece.strip()}" if sep else piece.strip())
    rest = " ".join(kept).strip()
    rest = rest[1:].strip() if rest.startswith("+") else rest
    if not rest:
        rest = "1"
    elif rest.startswith("-"):
        rest = "1 " + rest
    return rest, tuple(offsets)


def as_expression(expr: str) -> str:
    """An expression formulaic evaluates arithmetically (``t * 2`` -> ``I(t * 2)``); a name stays."""
    return expr if _NAME.match(expr) else f"I({expr})"


def attach_vector(data: pd.DataFrame, value, column: str, what: str) -> tuple[pd.DataFrame, str | None]:
    """``weights=`` / ``offset=`` as a column of ``data``: a column name, or values put in ``column``.

    Returns the data (a shallow copy when a column was added) and the column name (None without a value).

    Raises
    ------
    DataError
        An unknown column, values that are not numbers, or the wrong length.
    """
    if value is None:
        return data, None
    if isinstance(value, str):
        if value not in data.columns:
            shown = ", ".join(repr(str(c)) for c in list(data.columns)[:12])
            raise DataError(f"{what} column {value!r} is not in the data (columns: {shown})")
        return data, value
    try:
        arr = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        raise DataError(
            f"{what} must be a column name or numbers, one per data row; got {type(value).__name__}"
        ) from None
    if arr.shape != (len(data),):
        raise DataError(f"{what} must have one value per data row ({len(data)}), got shape {arr.shape}")
    out = data.copy(deep=False)
    out[column] = arr
    return out, column


def numeric_column(frame: pd.DataFrame, column: str, what: str) -> np.ndarray:
    """A used column as floats, or a DataError naming it and its dtype."""
    col = frame[column]
    if col.dtype == bool or not pd.api.types.is_numeric_dtype(col):
        raise DataError(
            f"{what} column {column!r} must be numeric, it has dtype {col.dtype} (first value {col.iloc[0]!r})"
        )
    return col.to_numpy(dtype=float)


def check_prior_weights(w: np.ndarray, column: str | None) -> None:
    """lme4's prior weights must be positive and finite here.

    lme4 refuses negative weights (``all(weights >= 0) is not TRUE``) and fits zero weights with a
    log-likelihood of ``-Inf`` (its ``log det W`` term); memoe refuses both, asking for the rows to be
    dropped instead.

    Raises
    ------
    DataError
    """
    where = "weights" if column is None else f"weights (column {column!r})"
    bad = ~np.isfinite(w)
    if bad.any():
        raise DataError(f"{where} must be finite; {int(bad.sum())} of {len(w)} values are not")
    neg = w < 0
    if neg.any():
        raise DataError(
            f"{where} must be positive; {int(neg.sum())} of {len(w)} values are negative (e.g. {w[neg][0]:g}), "
            "as lme4 refuses"
        )
    zero = w == 0
    if zero.any():
        raise DataError(
            f"{where} must be positive; {int(zero.sum())} of {len(w)} values are zero. lme4 fits them with a "
            "log-likelihood of -Inf (log det of the weights); drop those rows instead"
        )


def evaluate_offset(frame: pd.DataFrame, exprs: tuple[str, ...], column: str | None) -> np.ndarray | None:
    """Sum of the ``offset(expr)`` terms and the ``offset=`` column on the rows of ``frame`` (None if neither).

    Raises
    ------
    DataError
        A non-numeric or non-finite offset, naming the column or expression.
    """
    from memoe.core.design.frame import numeric_response

    if not exprs and column is None:
        return None
    total = np.zeros(len(frame))
    for e in exprs:
        if e in frame.columns:
            v = numeric_column(frame, e, f"the offset term offset({e}): the")
        else:
            try:
                v = numeric_response(frame, as_expression(e))
            except DataError as exc:
                raise DataError(f"cannot evaluate the offset term offset({e}): {exc}") from None
        if not np.all(np.isfinite(v)):
            raise DataError(f"the offset term offset({e}) has {int((~np.isfinite(v)).sum())} non-finite values")
        total = total + v
    if column is not None:
        v = numeric_column(frame, column, "offset")
        if not np.all(np.isfinite(v)):
            raise DataError(f"offset column {column!r} has {int((~np.isfinite(v)).sum())} non-finite values")
        total = total + v
    return total


def newdata_offset(design, newdata: pd.DataFrame) -> np.ndarray | float:
    """The formula's ``offset(expr)`` terms of a fitted design evaluated on new data (0 without any).

    As lme4's ``predict.merMod``: the ``offset=`` argument of the fit is not replayed on new data.

    Raises
    ------
    DataError
        A column an offset term reads is absent from ``newdata`` or not numeric.
    """
    from memoe.core.design.frame import formula_variables

    terms = getattr(design, "offset_terms", ())
    if not terms:
        return 0.0
    for e in terms:
        missing = [v for v in formula_variables(f"{as_expression(e)} ~ 1", f"offset({e})") if v not in newdata.columns]
        if missing:
            raise DataError(
                f"newdata lacks the column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                f"of the offset term offset({e})"
            )
    # missing values give NaN predictions, as for any other covariate
    out = np.zeros(len(newdata))
    for e in terms:
        if e in newdata.columns:
            out = out + numeric_column(newdata, e, f"the offset term offset({e}): the")
        else:
            from memoe.core.design.frame import numeric_response

            out = out + numeric_response(newdata, as_expression(e))
    return out


def _plain_state(value):
    """A formulaic transform state as JSON data (numbers, lists, dicts with string keys)."""
    if isinstance(value, dict):
        return {str(k): _plain_state(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain_state(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return None if value is None else str(value)


def transform_states(design) -> dict:
    """The learned state of every stateful transform of a design (``scale``'s centre and SD, ``poly``'s
    recurrence coefficients, ``bs``'s knots), as plain data keyed by where the transform sits.

    Savers write it next to the data; loaders re-learn the transforms from the saved rows and compare
    (:func:`same_transform_states`), so a file never supplies code, only numbers to check.
    """
    out = {}
    state = getattr(design.fixed.spec, "transform_state", None) or {}
    if state:
        out["fixed"] = _plain_state(state)
    for blk in design.blocks:
        for i, (spec, _) in enumerate(blk.specs):
            st = getattr(spec, "transform_state", None) or {}
            if st:
                out[f"random:{blk.factor.name}:{i}"] = _plain_state(st)
    return out


def same_transform_states(saved, rebuilt, rtol: float = 1e-12) -> bool:
    """Whether two :func:`transform_states` agree (numbers to ``rtol``)."""
    if isinstance(saved, dict) and isinstance(rebuilt, dict):
        return saved.keys() == rebuilt.keys() and all(same_transform_states(saved[k], rebuilt[k], rtol) for k in saved)
    if isinstance(saved, list) and isinstance(rebuilt, list):
        if len(saved) != len(rebuilt):
            return False
        return all(same_transform_states(a, b, rtol) for a, b in zip(saved, rebuilt, strict=True))
    if isinstance(saved, (int, float)) and isinstance(rebuilt, (int, float)) and not isinstance(saved, bool):
        return abs(saved - rebuilt) <= rtol * max(abs(saved), abs(rebuilt), 1e-300) or saved == rebuilt
    return saved == rebuilt

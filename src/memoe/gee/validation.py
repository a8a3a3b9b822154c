"""Checks of the arguments of :func:`memoe.gee` and :meth:`GEE.fit` at the public boundary.

Every refusal is a :class:`~memoe.errors.MemoeError` naming the argument or column and what is accepted:
:class:`~memoe.errors.ArgumentTypeError` / :class:`~memoe.errors.ArgumentError` for arguments,
:class:`~memoe.errors.DataError` for the data, so no numpy, pandas or statsmodels traceback (nor
``UnboundLocalError`` for ``maxiter=0``) reaches the user.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from memoe.errors import ArgumentError, ArgumentTypeError, DataError
from memoe.gee.correlation import CORSTRS
from memoe.gee.families import FAMILIES

__all__ = [
    "check_choice",
    "check_columns",
    "check_fit_arguments",
    "check_response",
]


def check_choice(value: Any, argument: str, choices: tuple[str, ...]) -> str:
    """A string among ``choices`` (case-insensitive), returned in its canonical spelling."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{argument} must be a string, one of {list(choices)}; got {type(value).__name__}")
    key = value.strip().lower()
    if key not in choices:
        raise ArgumentError(f"{argument} {value!r} is not supported; use one of {list(choices)}")
    return key


def check_family_corstr(family: Any, corstr: Any) -> tuple[str, str]:
    return check_choice(family, "family", FAMILIES), check_choice(corstr, "corstr", CORSTRS)


def check_columns(data: pd.DataFrame, group: Any, time: Any) -> None:
    """``group`` a column of ``data``; ``time`` None or another column."""
    for arg, col in (("group", group), ("time", time)):
        if col is None and arg == "time":
            continue
        if not isinstance(col, str):
            raise ArgumentTypeError(
                f"{arg} must be the name of a column of data (a string){'' if arg == 'group' else ' or None'}, "
                f"got {type(col).__name__}"
            )
        if col not in data.columns:
            shown = ", ".join(repr(c) for c in list(data.columns)[:12])
            raise DataError(f"unknown {arg} column {col!r}; the data have {shown}")
    if time is not None and time == group:
        raise ArgumentError(f"time and group are the same column {group!r}; time must order the rows within a group")


def check_scale_fix(scale_fix: Any) -> bool:
    if not isinstance(scale_fix, (bool, np.bool_)):
        raise ArgumentTypeError(f"scale_fix must be True or False, got {scale_fix!r}")
    return bool(scale_fix)


def check_response(y: np.ndarray, response: str, family: str) -> None:
    """Finite, not constant, and inside the family's support."""
    bad = ~np.isfinite(y)
    if np.any(bad):
        raise DataError(f"response {response!r} has {int(bad.sum())} non-finite values (inf); remove those rows")
    if family == "binomial" and (np.any(y < 0) or np.any(y > 1)):
        out = y[(y < 0) | (y > 1)]
        raise DataError(
            f"response {response!r} must lie in [0, 1] for the binomial family (0/1 or proportions); "
            f"{len(out)} values are outside, e.g. {out[0]:g}"
        )
    if family == "poisson" and np.any(y < 0):
        raise DataError(
            f"response {response!r} must be non-negative for the poisson family (counts); "
            f"{int((y < 0).sum())} values are negative, e.g. {y[y < 0][0]:g}"
        )
    if len(y) and np.all(y == y[0]):
        raise DataError(
            f"response {response!r} is constant ({y[0]:g} in all {len(y)} rows used): "
            "the mean model and the scale cannot be estimated"
        )


def check_fit_arguments(tol: Any, maxiter: Any) -> tuple[float, int]:
    """``tol`` a positive finite number, ``maxiter`` a positive integer."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(f"tol must be a positive number (e.g. 1e-4), got {type(tol).__name__}")
    tol = float(tol)
    if not (math.isfinite(tol) and tol > 0.0):
        raise ArgumentError(f"tol must be a positive finite number (e.g. 1e-4, geepack's epsilon), got {tol}")
    if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)):
        raise ArgumentTypeError(f"maxiter must be a positive integer (e.g. 25), got {type(maxiter).__name__}")
    if maxiter < 1:
        raise ArgumentError(f"maxiter must be at least 1 (geepack's maxit, default 25), got {maxiter}")
    return tol, int(maxiter)

"""Checks of the public fitting arguments (``reml``, ``start``, ``control``, ``nAGQ``, ...) at the boundary.

Python would coerce ``reml="no"`` to True and nlopt would fail on a ``start`` of the wrong length
with its own message; these helpers refuse such values with an
:class:`~memoe.errors.ArgumentError` that names the argument and what it accepts.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from memoe.errors import ArgumentError, ArgumentTypeError

__all__ = ["check_bool", "check_control", "check_int", "check_start"]

C = TypeVar("C")


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a bool; only ``True``/``False`` (Python or numpy) are accepted."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ArgumentTypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def check_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (Python or numpy, not bool, not a float) within ``[minimum, maximum]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        lo = "" if minimum is None else f" >= {minimum}"
        hi = "" if maximum is None else f"{' and' if lo else ''} <= {maximum}"
        raise ArgumentError(f"{name} must be an integer{lo}{hi}, got {v}")
    return v


def _check_number(value: Any, name: str, kind: type) -> Any:
    if kind is bool:
        return check_bool(value, name)
    if kind is int:
        return check_int(value, name)
    if kind is float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise ArgumentTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
        v = float(value)
        if not np.isfinite(v) or v < 0:
            raise ArgumentError(f"{name} must be a finite non-negative number, got {v}")
        return v
    return value


def check_control(control: Any, cls: type[C], name: str = "control") -> C:
    """A control dataclass from ``None``, an instance, or a mapping of its field names.

    Every field given is checked against the field's declared type (bool, int, float; other types
    are checked by the dataclass's own consumers), and unknown keys are refused with the accepted ones.
    """
    if control is None:
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if isinstance(control, cls):
        values = {k: getattr(control, k) for k in fields}
    elif isinstance(control, Mapping):
        unknown = [k for k in control if k not in fields]
        if unknown:
            raise ArgumentError(
                f"unknown {name} setting{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)}; "
                f"accepted: {', '.join(fields)}"
            )
        values = {**{k: getattr(cls(), k) for k in fields}, **dict(control)}
    else:
        raise ArgumentTypeError(
            f"{name} must be a {cls.__name__} or a dict of its settings, got {type(control).__name__}"
        )
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    checked = {}
    for key, value in values.items():
        hint = hints[key]
        hint_name = hint if isinstance(hint, str) else getattr(hint, "__name__", "")
        kind = {"bool": bool, "int": int, "float": float}.get(hint_name)
        checked[key] = _check_number(value, f"{name}[{key!r}]", kind) if kind else value
    if "maxeval" in checked and checked["maxeval"] < 1:
        raise ArgumentError(f"{name}['maxeval'] must be >= 1, got {checked['maxeval']}")
    return cls(**checked)


def check_start(start: Any, names: Sequence[str], lower: np.ndarray, name: str = "start") -> np.ndarray | None:
    """A starting vector: the right length, finite, and within the lower bounds.

    Parameters
    ----------
    start : array-like or None
    names : sequence of str
        Parameter names in order (for the message).
    lower : numpy.ndarray
        Lower bounds (0 for the diagonal of the relative covariance factors, -inf elsewhere).
    """
    if start is None:
        return None
    if isinstance(start, Mapping):
        unknown = [k for k in start if k not in names]
        missing = [k for k in names if k not in start]
        if unknown or missing:
            raise ArgumentError(
                f"{name} has unknown names {unknown} and lacks {missing}; expected the names {list(names)}"
            )
        start = [start[k] for k in names]
    if isinstance(start, (str, bytes)):
        raise ArgumentTypeError(f"{name} must be a sequence of numbers, got {start!r}")
    try:
        x = np.array(start, dtype=float)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"{name} must be a sequence of numbers, got {start!r}") from None
    x = np.atleast_1d(x)
    if x.ndim != 1 or len(x) != len(names):
        raise ArgumentError(
            f"{name} must have {len(names)} value{'s' if len(names) != 1 else ''} "
            f"({', '.join(names)}), got shape {np.shape(start)}"
        )
    bad = [names[i] for i in np.flatnonzero(~np.isfinite(x))]
    if bad:
        raise ArgumentError(f"{name} must be finite; not finite: {', '.join(bad)}")
    below = [f"{names[i]}={x[i]:g}" for i in np.flatnonzero(x < lower)]
    if below:
        raise ArgumentError(
            f"{name} is below the lower bound 0 for {', '.join(below)} (diagonal entries of the relative "
            "covariance factors must be >= 0)"
        )
    return x

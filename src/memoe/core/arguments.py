"""Checks of public arguments: each refusal is an :class:`~memoe.errors.ArgumentError` naming the argument.

The checks accept what Python users pass in practice (numpy integers and floats, ``range`` objects)
and refuse what would otherwise fail deep inside numpy with an unrelated message, or worse, be
silently reinterpreted (``True`` as 1, ``2.5`` truncated to 2, ``0`` starts run as one).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from memoe.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_int_list",
    "check_level",
    "check_optional_bool",
    "check_positive_float",
    "check_seed",
    "check_str",
]


def _tname(value) -> str:
    return type(value).__name__


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int; numpy integers and integral floats are refused unless they are ints.

    Bools are refused (``True`` is an int in Python but never a meaningful count here).

    Raises
    ------
    ArgumentTypeError
        Not an integer (``None``, ``2.5``, ``"3"``, ``True``).
    ArgumentError
        Below ``minimum`` or above ``maximum``.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(
            f"{name} must be an integer{_range_text(minimum, maximum)}, got {value!r} ({_tname(value)})"
        )
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise ArgumentError(f"{name} must be an integer{_range_text(minimum, maximum)}, got {v}")
    return v


def _range_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" between {minimum} and {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_positive_float(value, name: str, allow_inf: bool = False) -> float:
    """A finite (or ``inf`` when allowed) float > 0; bools and non-numbers refused."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a positive number, got {value!r} ({_tname(value)})")
    v = float(value)
    if not (v > 0) or (math.isinf(v) and not allow_inf):
        raise ArgumentError(f"{name} must be a positive finite number, got {v!r}")
    return v


def check_bool(value, name: str) -> bool:
    """A bool (numpy bools accepted); ``0``/``1``/strings refused so ``"False"`` cannot mean True."""
    if not isinstance(value, bool | np.bool_):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r} ({_tname(value)})")
    return bool(value)


def check_optional_bool(value, name: str) -> bool | None:
    """None or a bool (``progress=None``: decide automatically)."""
    return None if value is None else check_bool(value, name)


def check_str(value, name: str, example: str) -> str:
    """A non-empty string (formulas, column names); ``example`` shows what is accepted."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a string such as {example!r}, got {value!r} ({_tname(value)})")
    if not value.strip():
        raise ArgumentError(f"{name} must be a non-empty string such as {example!r}")
    return value


def check_choice(value, name: str, choices: tuple) -> object:
    """One of ``choices`` (compared with ``==`` after an exact type check for strings)."""
    for c in choices:
        if (c is None and value is None) or (c is not None and isinstance(value, str) and value == c):
            return value
    raise ArgumentError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_seed(value, name: str = "seed"):
    """None, an int >= 0, a ``numpy.random.SeedSequence`` or a ``numpy.random.Generator``.

    Returns the value unchanged (``numpy.random.default_rng`` accepts all four); a numpy integer is
    turned into a Python int.
    """
    if value is None or isinstance(value, np.random.SeedSequence | np.random.Generator):
        return value
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(
            f"{name} must be None, a non-negative integer, a numpy SeedSequence or Generator, "
            f"got {value!r} ({_tname(value)})"
        )
    if int(value) < 0:
        raise ArgumentError(f"{name} must be a non-negative integer, got {int(value)}")
    return int(value)


def check_int_list(values, name: str, minimum: int = 1) -> list[int]:
    """A non-empty iterable of distinct integers >= ``minimum`` (e.g. ``ks=range(1, 5)``), sorted."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        if isinstance(values, numbers.Integral) and not isinstance(values, bool | np.bool_):
            values = [values]  # a single K is an obvious request
        else:
            raise ArgumentTypeError(
                f"{name} must be an iterable of integers >= {minimum} such as range(1, 5), "
                f"got {values!r} ({_tname(values)})"
            )
    out = [check_int(v, f"each entry of {name}", minimum) for v in values]
    if not out:
        raise ArgumentError(f"{name} must contain at least one integer >= {minimum}, got an empty sequence")
    dup = sorted({v for v in out if out.count(v) > 1})
    if dup:
        raise ArgumentError(f"{name} has repeated value(s) {dup}; give each number once")
    return sorted(out)


def check_level(level: Any) -> float:
    """A confidence level strictly between 0 and 1, or an :class:`~memoe.errors.ArgumentError`."""
    if isinstance(level, bool) or not isinstance(level, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(
            f"level must be a number in (0, 1) such as 0.95, got {level!r} ({type(level).__name__})"
        )
    if not 0.0 < float(level) < 1.0:
        raise ArgumentError(f"level must be in (0, 1) such as 0.95, got {level!r}")
    return float(level)

"""Parse the command line's residual-structure strings into :mod:`memoe.marginal` objects.

``--correlation`` takes ``ar1``, ``ar1(visit | id)``, ``car1(Time | Rat)``, ``exp(Time | Rat, nugget)``,
``symm(visit | id)``, ``compsymm`` or ``compsymm(| id)``; ``--weights`` takes ``varident(Diet)`` (also
``varident(~ 1 | Diet)``). nlme's names (``corAR1``, ``corCAR1``, ``corExp``, ``corSymm``,
``corCompSymm``, ``varIdent``) are accepted too, case-insensitively.
"""

from __future__ import annotations

import re

from memoe.errors import ArgumentError
from memoe.marginal import AR1, CAR1, CompSymm, CorStruct, Exp, Symm, VarIdent

__all__ = ["CORRELATION_FORMS", "WEIGHTS_FORMS", "parse_correlation", "parse_weights"]

CORRELATION_FORMS = (
    "ar1, ar1(visit | id), car1(time | id), exp(time | id), exp(time | id, nugget), symm(visit | id), compsymm(| id)"
)
WEIGHTS_FORMS = "varident(column)"

_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")

# canonical name -> (class, what stands left of '|': "time" (required), "visit" (optional) or None)
_CORRELATIONS: dict[str, tuple[type[CorStruct], str | None]] = {
    "ar1": (AR1, "visit"),
    "car1": (CAR1, "time"),
    "exp": (Exp, "time"),
    "symm": (Symm, "visit"),
    "compsymm": (CompSymm, None),
}


def _split_call(text: str, option: str, accepted: str) -> tuple[str, str | None]:
    """``"car1(Time | Rat)"`` -> ``("car1", "Time | Rat")``; the name lower-cased, nlme's ``cor``/``var`` kept."""
    if not isinstance(text, str) or not text.strip():
        raise ArgumentError(f"{option} must be a structure such as {accepted}, got {text!r}")
    m = _CALL.match(text)
    if m is None:
        raise ArgumentError(f"{option} {text!r} is not of the form name or name(arguments); accepted: {accepted}")
    return m.group(1).lower(), m.group(2)


def _column(name: str, option: str, text: str) -> str:
    name = name.strip()
    if not _NAME.match(name):
        raise ArgumentError(f"{option} {text!r}: {name!r} is not a column name")
    return name


def _form(args: str, option: str, text: str) -> tuple[str | None, str | None]:
    """``"Time | Rat"`` -> ``("Time", "Rat")``; ``"~ 1 | Rat"`` / ``"| Rat"`` -> ``(None, "Rat")``.

    ``"Time"`` -> ``("Time", None)``.
    """
    args = args.strip().removeprefix("~").strip()
    if "|" in args:
        lhs, _, rhs = args.partition("|")
        if "|" in rhs:
            raise ArgumentError(f"{option} {text!r} has more than one '|'; write (time | group)")
        group = _column(rhs, option, text) if rhs.strip() else None
        if group is None:
            raise ArgumentError(f"{option} {text!r} has nothing after '|'; name the grouping column")
    else:
        lhs, group = args, None
    lhs = lhs.strip()
    left = None if lhs in ("", "1") else _column(lhs, option, text)
    return left, group


def parse_correlation(text: str) -> CorStruct:
    """A correlation structure from its command-line spelling.

    Parameters
    ----------
    text : str
        E.g. ``"car1(Time | Rat)"``, ``"ar1"``, ``"exp(Time | Rat, nugget)"``, ``"symm(visit | id)"``, ``"compsymm"``.

    Returns
    -------
    CorStruct

    Raises
    ------
    ArgumentError
        An unknown structure or a malformed argument list (the message lists the accepted forms).
    """
    option = "--correlation"
    name, args = _split_call(text, option, CORRELATION_FORMS)
    key = name.removeprefix("cor") if name.startswith("cor") and name != "cor" else name
    if key not in _CORRELATIONS:
        raise ArgumentError(f"unknown {option} structure {name!r}; accepted: {CORRELATION_FORMS}")
    cls, lhs_kind = _CORRELATIONS[key]
    parts = [] if args is None else [p.strip() for p in args.split(",")]
    if parts == [""]:
        parts = []
    nugget = False
    if key == "exp" and len(parts) > 1:
        extra = [p.lower() for p in parts[1:]]
        if extra not in (["nugget"], ["nugget=true"]):
            raise ArgumentError(
                f"{option} {text!r}: exp() takes (time | group) and optionally 'nugget', got {parts[1:]}"
            )
        nugget = True
        parts = parts[:1]
    if len(parts) > 1:
        raise ArgumentError(f"{option} {text!r} takes one argument (lhs | group); accepted: {CORRELATION_FORMS}")
    left, group = _form(parts[0], option, text) if parts else (None, None)
    if lhs_kind == "time":
        if left is None:
            raise ArgumentError(f"{option} {text!r} needs a time column: {key}(time | group)")
        kw = {"time": left, "group": group}
        if key == "exp":
            kw["nugget"] = nugget
        return cls(**kw)
    if lhs_kind == "visit":
        return cls(group=group, visit=left)
    if left is not None:
        raise ArgumentError(f"{option} {text!r}: compsymm takes only a group, as compsymm(| id)")
    return cls(group=group)


def parse_weights(text: str) -> VarIdent:
    """A variance function from its command-line spelling: ``"varident(Diet)"`` or ``"varident(~ 1 | Diet)"``.

    Raises
    ------
    ArgumentError
        Not a varident(...) with one stratum column.
    """
    option = "--weights"
    name, args = _split_call(text, option, WEIGHTS_FORMS)
    if name not in ("varident",):
        raise ArgumentError(f"unknown {option} function {name!r}; accepted: {WEIGHTS_FORMS}")
    if args is None or not args.strip():
        raise ArgumentError(f"{option} {text!r} needs the stratum column: varident(column)")
    left, group = _form(args, option, text)
    by = group if group is not None else left
    if by is None or (group is not None and left is not None):
        raise ArgumentError(f"{option} {text!r}: write varident(column) or varident(~ 1 | column)")
    return VarIdent(by)

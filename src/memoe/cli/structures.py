"""Parse the command line's residual-structure strings into :mod:`memoe.marginal` objects.

``--correlation`` takes ``ar1``, ``ar1(visit | id)``, ``car1(Time | Rat)``, ``exp(Time | Rat, nugget)``,
``symm(visit | id)``, ``compsymm`` or ``compsymm(| id)``, ``arma(1, 1)`` / ``arma(| Mare, p=1, q=1)`` /
``arma(visit | id, p=2)``, and the spatial ``gaus``, ``spher``, ``lin``, ``ratio`` (as ``exp``:
``gaus(Time | Rat, nugget)``, several coordinates as ``spher(x + y | field, metric=manhattan)``).
``--weights`` takes ``varident(Diet)`` (also ``varident(~ 1 | Diet)``), ``varpower`` (the fitted
values), ``varpower(age)``, ``varpower(age | Sex)``, ``varpower(age, fixed=0.5)``, ``varexp(age)``,
``varconstpower(age)``, ``varfixed(age)`` and ``varcomb(varident(Sex), varpower(age))``. nlme's names
(``corAR1``, ``corARMA``, ``corGaus``, ``varPower``, ...) are accepted too, case-insensitively.
"""

from __future__ import annotations

import re

from memoe.errors import ArgumentError
from memoe.marginal import (
    AR1,
    ARMA,
    CAR1,
    CompSymm,
    CorStruct,
    Exp,
    Gaus,
    Lin,
    Ratio,
    Spher,
    Symm,
    VarComb,
    VarConstPower,
    VarExp,
    VarFixed,
    VarIdent,
    VarPower,
)

__all__ = ["CORRELATION_FORMS", "WEIGHTS_FORMS", "parse_correlation", "parse_weights"]

CORRELATION_FORMS = (
    "ar1, ar1(visit | id), car1(time | id), exp(time | id), exp(time | id, nugget), symm(visit | id), "
    "compsymm(| id), arma(p, q), arma(visit | id, p=1, q=1), gaus|spher|lin|ratio(x [+ y] | id [, nugget] "
    "[, metric=euclidean|manhattan|maximum])"
)
WEIGHTS_FORMS = (
    "varident(column), varpower, varpower(column [| by] [, fixed=value]), varexp(...), varconstpower(...), "
    "varfixed(column), varcomb(function, function, ...)"
)

_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")

# canonical name -> (class, what stands left of '|': "time" (required), "visit" (optional) or None)
_CORRELATIONS: dict[str, tuple[type[CorStruct], str | None]] = {
    "ar1": (AR1, "visit"),
    "car1": (CAR1, "time"),
    "exp": (Exp, "time"),
    "symm": (Symm, "visit"),
    "compsymm": (CompSymm, None),
    "arma": (ARMA, "visit"),
    "gaus": (Gaus, "time"),
    "spher": (Spher, "time"),
    "lin": (Lin, "time"),
    "ratio": (Ratio, "time"),
}
_SPATIAL = ("gaus", "spher", "lin", "ratio")
_VARFUNCS = {"varpower": VarPower, "varexp": VarExp, "varconstpower": VarConstPower, "varfixed": VarFixed}


def _split_call(text: str, option: str, accepted: str) -> tuple[str, str | None]:
    """``"car1(Time | Rat)"`` -> ``("car1", "Time | Rat")``; the name lower-cased, nlme's ``cor``/``var`` kept."""
    if not isinstance(text, str) or not text.strip():
        raise ArgumentError(f"{option} must be a structure such as {accepted}, got {text!r}")
    m = _CALL.match(text)
    if m is None:
        raise ArgumentError(f"{option} {text!r} is not of the form name or name(arguments); accepted: {accepted}")
    return m.group(1).lower(), m.group(2)


def _split_args(args: str | None, option: str, text: str) -> list[str]:
    """Top-level comma-separated arguments (commas inside parentheses stay)."""
    if args is None:
        return []
    out, depth, cur = [], 0, []
    for ch in args:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ArgumentError(f"{option} {text!r} has unbalanced parentheses")
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ArgumentError(f"{option} {text!r} has unbalanced parentheses")
    out.append("".join(cur).strip())
    return [] if out == [""] else out


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
    left = None if lhs in ("", "1") else lhs
    return left, group


def _int_value(value: str, key: str, option: str, text: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ArgumentError(f"{option} {text!r}: {key} must be a whole number, got {value!r}") from None


def parse_correlation(text: str) -> CorStruct:
    """A correlation structure from its command-line spelling.

    Parameters
    ----------
    text : str
        E.g. ``"car1(Time | Rat)"``, ``"ar1"``, ``"exp(Time | Rat, nugget)"``, ``"symm(visit | id)"``,
        ``"compsymm"``, ``"arma(| Mare, p=1, q=1)"``, ``"gaus(Time | Rat, nugget)"``.

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
    parts = _split_args(args, option, text)
    form_parts, options = [], {}
    positional_ints: list[int] = []
    for p in parts:
        low = p.lower().replace(" ", "")
        if "=" in p and "|" not in p:
            k, _, v = p.partition("=")
            options[k.strip().lower()] = v.strip()
        elif low == "nugget":
            options["nugget"] = "true"
        elif key == "arma" and re.fullmatch(r"\d+", p.strip()):
            positional_ints.append(int(p))
        else:
            form_parts.append(p)
    if len(form_parts) > 1:
        raise ArgumentError(f"{option} {text!r} takes one (lhs | group) argument; accepted: {CORRELATION_FORMS}")
    left, group = _form(form_parts[0], option, text) if form_parts else (None, None)
    allowed = {"exp": {"nugget"}, "arma": {"p", "q"}}.get(key, {"nugget", "metric"} if key in _SPATIAL else set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ArgumentError(
            f"{option} {text!r}: {key}() does not take {unknown}; accepted: {sorted(allowed) or 'no options'}"
        )
    nugget = False
    if "nugget" in options:
        if options["nugget"].lower() not in ("true", "1", "yes"):
            raise ArgumentError(f"{option} {text!r}: write 'nugget' (or nugget=true) to estimate a nugget")
        nugget = True
    if key == "arma":
        if len(positional_ints) > 2:
            raise ArgumentError(f"{option} {text!r}: arma takes the orders (p, q)")
        p = positional_ints[0] if positional_ints else _int_value(options.get("p", "0"), "p", option, text)
        q = positional_ints[1] if len(positional_ints) > 1 else _int_value(options.get("q", "0"), "q", option, text)
        visit = None if left is None else _column(left, option, text)
        return ARMA(p=p, q=q, group=group, visit=visit)
    if lhs_kind == "time":
        if left is None:
            raise ArgumentError(f"{option} {text!r} needs a time column: {key}(time | group)")
        covs = [_column(c, option, text) for c in left.split("+")]
        if key in _SPATIAL:
            return cls(tuple(covs) if len(covs) > 1 else covs[0], group=group, nugget=nugget,
                       metric=options.get("metric", "euclidean"))
        if len(covs) > 1:
            raise ArgumentError(f"{option} {text!r}: {key} takes one time column")
        kw = {"time": covs[0], "group": group}
        if key == "exp":
            kw["nugget"] = nugget
        return cls(**kw)
    if lhs_kind == "visit":
        return cls(group=group, visit=None if left is None else _column(left, option, text))
    if left is not None:
        raise ArgumentError(f"{option} {text!r}: compsymm takes only a group, as compsymm(| id)")
    return cls(group=group)


def parse_weights(text: str):
    """A variance function from its command-line spelling.

    ``"varident(Diet)"``, ``"varident(~ 1 | Diet)"``, ``"varpower"`` (fitted values), ``"varpower(age | Sex)"``,
    ``"varexp(age, fixed=0.1)"``, ``"varconstpower(age)"``, ``"varfixed(age)"``,
    ``"varcomb(varident(Sex), varpower(age))"``.

    Returns
    -------
    VarIdent, VarPower, VarExp, VarConstPower, VarFixed or VarComb

    Raises
    ------
    ArgumentError
        An unknown function or malformed arguments (the message lists the accepted forms).
    """
    option = "--weights"
    name, args = _split_call(text, option, WEIGHTS_FORMS)
    if name == "varident":
        if args is None or not args.strip():
            raise ArgumentError(f"{option} {text!r} needs the stratum column: varident(column)")
        left, group = _form(args, option, text)
        by = group if group is not None else left
        if by is None or (group is not None and left is not None):
            raise ArgumentError(f"{option} {text!r}: write varident(column) or varident(~ 1 | column)")
        return VarIdent(_column(by, option, text))
    if name == "varcomb":
        parts = _split_args(args, option, text)
        if len(parts) < 2:
            raise ArgumentError(f"{option} {text!r}: varcomb needs at least two variance functions")
        return VarComb(*[parse_weights(p) for p in parts])
    if name not in _VARFUNCS:
        raise ArgumentError(f"unknown {option} function {name!r}; accepted: {WEIGHTS_FORMS}")
    cls = _VARFUNCS[name]
    form, by, fixed = None, None, None
    for p in _split_args(args, option, text):
        if "=" in p and "|" not in p:
            k, _, v = p.partition("=")
            if k.strip().lower() != "fixed" or name in ("varfixed", "varconstpower"):
                raise ArgumentError(f"{option} {text!r}: {name}() does not take {k.strip()!r}")
            try:
                fixed = float(v)
            except ValueError:
                raise ArgumentError(f"{option} {text!r}: fixed must be a number, got {v.strip()!r}") from None
        else:
            left, by = _form(p, option, text)
            if left is not None and left.replace(" ", "") not in ("fitted", "fitted(.)"):
                form = _column(left, option, text)
    if name == "varfixed":
        if form is None or by is not None:
            raise ArgumentError(f"{option} {text!r}: write varfixed(column)")
        return VarFixed(form)
    kw = {"form": form, "by": by}
    if fixed is not None:
        kw["fixed"] = fixed
    return cls(**kw)

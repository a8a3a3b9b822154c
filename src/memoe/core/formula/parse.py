"""Split an lme4-style model formula into its fixed part and its random-effects (bar) terms.

formulaic treats ``|`` as a top-level operator, so the bar terms ``(lhs | group)`` are found here
by scanning the right-hand side at parenthesis depth zero; everything else is handed to formulaic
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from memoe.errors import FormulaError

__all__ = ["FormulaSpec", "RandomTermSpec", "parse_formula", "split_top_level"]


@dataclass(frozen=True)
class RandomTermSpec:
    """One random-effects term after expansion of ``||`` and ``/``.

    Attributes
    ----------
    lhs : str
        Right-hand side of the term's own model matrix, e.g. ``"1"``, ``"Days"``, ``"0 + Days"``.
    group_factors : tuple of str
        Variables whose interaction defines the grouping factor, in lme4's label order
        (``(1 | a/b)`` gives ``("a",)`` and ``("b", "a")``).
    uncorrelated : bool
        The term came from ``||``: lme4 splits it into one term per formula term of ``lhs``.
    text : str
        The term as the user wrote it, for messages.
    """

    lhs: str
    group_factors: tuple[str, ...]
    uncorrelated: bool
    text: str

    @property
    def group(self) -> str:
        """lme4's name of the grouping factor, e.g. ``"cask:batch"``."""
        return ":".join(self.group_factors)


@dataclass(frozen=True)
class FormulaSpec:
    """A parsed mixed-model formula.

    Attributes
    ----------
    response : str
        Left-hand side expression.
    fixed : str
        Right-hand side of the fixed-effects part in formulaic syntax (``"1"`` when only bar terms
        were given, as R implies an intercept).
    random : tuple of RandomTermSpec
        Random-effects terms in the order written (``/`` expanded).
    text : str
        The formula as given.
    """

    response: str
    fixed: str
    random: tuple[RandomTermSpec, ...]
    text: str

    @property
    def fixed_formula(self) -> str:
        return f"{self.response} ~ {self.fixed}"


def _depths(s: str, text: str) -> list[int]:
    """Parenthesis depth before each character; raises on unbalanced parentheses."""
    depth, out = 0, []
    for ch in s:
        if ch == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"unbalanced ')' in formula {text!r}")
        out.append(depth)
        if ch == "(":
            depth += 1
    if depth != 0:
        raise FormulaError(f"unbalanced '(' in formula {text!r}")
    return out


def split_top_level(s: str, seps: str, text: str | None = None) -> list[tuple[str, str]]:
    """Split ``s`` at characters in ``seps`` found at parenthesis depth zero.

    Returns ``(separator, piece)`` pairs; the first separator is ``""``.
    """
    depth = _depths(s, text or s)
    pieces: list[tuple[str, str]] = []
    sep, start = "", 0
    for i, ch in enumerate(s):
        if ch in seps and depth[i] == 0:
            # '**' is a power, not a separator; also skip unary +/- right after an operator
            pieces.append((sep, s[start:i]))
            sep, start = ch, i + 1
    pieces.append((sep, s[start:]))
    return pieces


def _is_wrapped(piece: str) -> bool:
    """True if the whole piece is one parenthesised group ``( ... )``."""
    p = piece.strip()
    if not (p.startswith("(") and p.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(p):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and i != len(p) - 1:
                return False
    return True


def _find_bar(inner: str, text: str) -> tuple[int, int] | None:
    """Position and width of the top-level ``|`` or ``||`` inside a bar term."""
    depth = _depths(inner, text)
    for i, ch in enumerate(inner):
        if ch == "|" and depth[i] == 0:
            width = 2 if inner[i + 1 : i + 2] == "|" else 1
            return i, width
    return None


def _expand_group(group: str, term_text: str) -> list[tuple[str, ...]]:
    """Expand ``a/b/c`` into lme4's ``a``, ``b:a``, ``c:b:a``; keep ``a:b`` as one factor."""
    g = group.strip()
    if not g:
        raise FormulaError(f"random-effects term {term_text!r} has no grouping factor after '|'")
    nested = [part.strip() for part in g.split("/")]
    if any(not part for part in nested):
        raise FormulaError(f"malformed nesting in grouping factor of term {term_text!r}")
    out: list[tuple[str, ...]] = []
    prefix: tuple[str, ...] = ()
    for part in nested:
        factors = tuple(f.strip() for f in part.split(":"))
        if any(not f or not f.replace("_", "a").replace(".", "a").isalnum() for f in factors):
            raise FormulaError(
                f"grouping factor {part!r} in term {term_text!r} must be a column name or "
                "an interaction of column names (a:b)"
            )
        prefix = factors + prefix if prefix else factors
        out.append(prefix)
    return out


def _call_powers(expr: str) -> str:
    """R's arithmetic ``^`` inside a call (``I(day^2)``, ``log(x^2)``) as Python's ``**``.

    formulaic evaluates call arguments as Python, where ``^`` is a bitwise XOR: ``I(day^2)`` on an integer
    column silently gave ``day XOR 2`` (Pixel: ``day`` 0, 1, ..., 21 -> 2, 3, 0, 1, 6, ...). R reads ``^``
    inside a call as a power, so it is rewritten there; a ``^`` outside any call (``(a + b)^2``) stays the
    formula operator (interactions up to order 2), as in R.
    """
    if "^" not in expr:
        return expr
    out: list[str] = []
    calls: list[bool] = []  # per open parenthesis: does it open a call's arguments?
    for i, ch in enumerate(expr):
        if ch == "(":
            j = i - 1
            while j >= 0 and expr[j] == " ":
                j -= 1
            calls.append(j >= 0 and (expr[j].isalnum() or expr[j] in "._"))
        elif ch == ")" and calls:
            calls.pop()
        elif ch == "^" and any(calls):
            out.append("**")
            continue
        out.append(ch)
    return "".join(out)


def parse_formula(formula: str) -> FormulaSpec:
    """Parse an lme4-style formula.

    Parameters
    ----------
    formula : str
        For example ``"Reaction ~ Days + (Days | Subject)"``.

    Returns
    -------
    FormulaSpec

    Raises
    ------
    FormulaError
        With the offending term quoted.
    """
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string, got {type(formula).__name__}")
    text = formula.strip()
    sides = split_top_level(text, "~", text)
    if len(sides) != 2:
        raise FormulaError(f"formula {text!r} must have exactly one '~' with a response on the left")
    response, rhs = sides[0][1].strip(), sides[1][1].strip()
    if not response:
        raise FormulaError(f"formula {text!r} has no response on the left of '~'")
    if not rhs:
        raise FormulaError(f"formula {text!r} has nothing on the right of '~'")
    if "|" in response:
        raise FormulaError(f"'|' is not allowed in the response {response!r}")
    response, rhs = _call_powers(response), _call_powers(rhs)

    fixed_pieces: list[str] = []
    random: list[RandomTermSpec] = []
    for sep, piece in split_top_level(rhs, "+-", text):
        p = piece.strip()
        if not p:
            if sep == "-" or sep == "+":
                # '+' or '-' with nothing after it, or a leading sign: keep for formulaic to judge
                fixed_pieces.append(sep)
            continue
        inner_bar = "|" in p
        if inner_bar and _is_wrapped(p):
            inner = p.strip()[1:-1]
            bar = _find_bar(inner, text)
            if bar is None:
                raise FormulaError(f"cannot read random-effects term {p!r}: '|' must not be nested")
            if sep == "-":
                raise FormulaError(f"a random-effects term cannot be subtracted: '- {p}'")
            pos, width = bar
            lhs = inner[:pos].strip()
            group = inner[pos + width :].strip()
            if not lhs:
                raise FormulaError(f"random-effects term {p!r} has nothing before '|'")
            if "|" in group:
                raise FormulaError(f"random-effects term {p!r} has more than one '|'")
            for factors in _expand_group(group, p):
                random.append(RandomTermSpec(lhs=lhs, group_factors=factors, uncorrelated=width == 2, text=p))
        elif inner_bar:
            raise FormulaError(
                f"term {p!r} uses '|' outside a parenthesised random-effects term; write it as (lhs | group)"
            )
        else:
            fixed_pieces.append(f"{sep} {p}" if sep else p)
    fixed = " ".join(fixed_pieces).strip()
    if fixed.startswith("+"):
        fixed = fixed[1:].strip()
    if not fixed:
        fixed = "1"
    elif fixed.startswith("-"):
        # "y ~ -1 + (1|g)": an intercept-free fixed part
        fixed = "1 " + fixed
    return FormulaSpec(response=response, fixed=fixed, random=tuple(random), text=text)

"""Allow-list check of formulas read from a file, before anything evaluates them.

A formula is code: formulaic evaluates its ``{...}`` blocks and call terms as Python with ``np`` in
scope. A formula typed by a user is the user's own code (as in any formula library), but a formula
read from a ``.memoe`` file comes from whoever wrote the file, so loaders pass it through
:func:`check_formula` first. The check parses the formula with Python's :mod:`ast` (after turning
the formula operators that are not Python into harmless Python operators) and accepts only:

* names of columns of the saved data (bare, dotted such as ``a.b``, or backquoted);
* numbers (and short plain strings as contrast names / levels inside ``C()``);
* the operators ``+ - * / : ** ^ | || %in%`` and parentheses, one ``~``;
* calls of a fixed set of transforms (:data:`FUNCTIONS`, ``np.<f>`` / ``numpy.<f>`` for
  :data:`NUMPY_FUNCTIONS`), ``np.pi`` / ``np.e``, contrasts inside ``C()``, and the keyword
  arguments in :data:`KEYWORDS` with literal values.

Anything else (other calls, attribute access, dunders, subscripts, lambdas, comprehensions,
f-strings, comparisons, ``**kwargs``, comments, backslashes) is refused with a
:class:`~memoe.errors.PersistenceError` naming the offending piece. The check is deliberately
stricter than formulaic's grammar: a rare legitimate formula outside the allow-list is refused (its
file cannot be loaded), never evaluated.

Also :func:`check_column`, for string fields naming one column (grouping, time, strata).
"""

from __future__ import annotations

import ast
import keyword
import re
from collections.abc import Collection

from memoe.errors import PersistenceError

__all__ = ["FUNCTIONS", "KEYWORDS", "MAX_FORMULA_CHARS", "NUMPY_FUNCTIONS", "check_column", "check_formula"]

# transforms callable by bare name (formulaic's, memoe's factor/offset/cbind, R spellings)
FUNCTIONS = frozenset({
    "log", "exp", "sqrt", "abs", "log2", "log10", "I", "C", "factor", "offset", "scale", "center", "poly", "bs",
    "cr", "cc", "cbind",
})
# numpy functions callable as np.<f> / numpy.<f>; and the numpy constants readable as np.<c>
NUMPY_FUNCTIONS = frozenset({
    "log", "log1p", "log2", "log10", "exp", "expm1", "sqrt", "abs", "sin", "cos", "tan", "arcsin", "arccos",
    "arctan", "sinh", "cosh", "tanh", "square", "power",
})
NUMPY_CONSTANTS = frozenset({"pi", "e"})
_NUMPY = frozenset({"np", "numpy"})
# keyword arguments of the transforms above; their values must be literals
KEYWORDS = frozenset({
    "degree", "df", "raw", "knots", "include_intercept", "lower_bound", "upper_bound", "levels", "center", "scale",
    "ddof", "reference", "base",
})
# contrasts the second argument of C() may name: formulaic's contr.<name> and patsy-style classes
_CONTR_ATTRS = frozenset({"treatment", "sum", "helmert", "poly", "diff", "custom"})
_CONTR_CLASSES = frozenset({"Treatment", "Sum", "Helmert", "Poly", "Diff"})
# longest formula accepted from a file (a fit's formula is a line or two; this bounds parse time)
MAX_FORMULA_CHARS = 10_000
# an integer power of literals is computed exactly by Python: bound it so 9**9**9 cannot hang a load
_MAX_LITERAL_EXPONENT = 64
# what a quoted string or a backquoted column name may contain: nothing that a tokenizer (formulaic's
# or Python's) could read as a delimiter, so both see the same structure around it
_SAFE_QUOTED = re.compile(r"[A-Za-z0-9_. ,+\-*/:^|&()\[\]=<>!?@$~]*")
_SAFE_STRING = re.compile(r"[A-Za-z0-9_. +\-]*")

_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.BitXor, ast.BitOr, ast.BitAnd)


def check_formula(text: object, columns: Collection[str], *, what: str = "formula") -> None:
    """Refuse a formula from a file unless every piece of it is on the allow-list.

    Parameters
    ----------
    text : object
        The saved formula (``"y ~ x + (x | g)"``, a one-sided ``"~ w1 + w2"``, or a right-hand side).
        Anything but a ``str`` is refused.
    columns : collection of str
        Names of the columns of the saved data: the only variables the formula may read.
    what : str
        How messages name the formula (``"the saved gating formula"``).

    Raises
    ------
    PersistenceError
        Naming the offending piece (a call, an attribute, a name that is not a saved column, ...).
    """
    if not isinstance(text, str):
        raise PersistenceError(f"{what} must be a string, the file holds a {type(text).__name__}")
    if len(text) > MAX_FORMULA_CHARS:
        raise PersistenceError(f"{what} has {len(text)} characters; at most {MAX_FORMULA_CHARS} are accepted")
    cols = {str(c) for c in columns}
    python, quoted = _to_python(text, cols, what)
    # a column named like a Python keyword (nlme's Oats has ``yield``) cannot be parsed as a name:
    # it reads as that column through a placeholder, as a backquoted name does
    for kw in keyword.kwlist:
        if kw in cols and re.search(rf"(?<![\w.]){kw}(?![\w])", python):
            key = f"memoe_quoted_{len(quoted)}"
            quoted[key] = kw
            python = re.sub(rf"(?<![\w.]){kw}(?![\w])", f" {key} ", python)
    sides = python.split("~")
    if len(sides) > 2:
        raise PersistenceError(f"{what} {_show(text)} has more than one '~'")
    for i, side in enumerate(sides):
        if not side.strip():
            if i == 0 and len(sides) == 2:
                continue  # a one-sided formula such as the gating formula '~ w1 + w2'
            raise PersistenceError(f"{what} {_show(text)} has an empty side")
        try:
            tree = ast.parse(side.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            raise PersistenceError(
                f"{what} {_show(text)} is not a formula memoe loads from a file ({type(exc).__name__}: "
                f"{getattr(exc, 'msg', exc)})"
            ) from None
        try:
            _Checker(text, cols, quoted, what).visit(tree.body)
        except RecursionError:
            raise PersistenceError(f"{what} has {len(text)} characters nested too deeply to check") from None


def check_column(value: object, columns: Collection[str], *, what: str, optional: bool = True) -> None:
    """Refuse a saved column-name field (a grouping, time or strata column) that is not a saved column.

    Parameters
    ----------
    value : object
        The field read from the file; ``None`` is accepted when ``optional``.
    columns : collection of str
        Names of the columns of the saved data.
    what : str
        How messages name the field (``"the group of the saved GEE"``).
    optional : bool
        Whether ``None`` is accepted.

    Raises
    ------
    PersistenceError
        Not a string naming a saved column.
    """
    if value is None and optional:
        return
    if not isinstance(value, str) or value not in {str(c) for c in columns}:
        shown = ", ".join(repr(str(c)) for c in list(columns)[:12])
        raise PersistenceError(f"{what} must name a column of the saved data ({shown}), the file holds {value!r}")


def _to_python(text: str, columns: set[str], what: str) -> tuple[str, dict[str, str]]:
    """``text`` with formula syntax mapped onto Python syntax of the same shape.

    ``{`` ``}`` -> ``(`` ``)`` (formulaic's Python blocks), ``||`` -> ``|``, ``%in%`` -> ``/``, ``:``
    -> ``&`` (interactions; inside Python a ``:`` belongs to a lambda, slice, dict or walrus, all of
    which stay refused after the mapping), backquoted names -> placeholder identifiers. Quotes are
    copied verbatim, and their content must be plain (see ``_SAFE_STRING``). Returns the text and
    the placeholder -> column map.
    """
    out: list[str] = []
    quoted: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":
            end = text.find(ch, i + 1)
            if end < 0:
                raise PersistenceError(f"{what} {_show(text)} has an unterminated string")
            content = text[i + 1 : end]
            if (i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_'\"")) or text[end + 1 : end + 2] in ("'", '"'):
                # a prefix (f"", b"", r"") or an adjacent quote (triple quotes): Python would read
                # the string differently from the simple scan here
                raise PersistenceError(
                    f"{what} {_show(text)} has a prefixed or adjacent string near {text[i : end + 1]!r}"
                )
            if not _SAFE_STRING.fullmatch(content):
                raise PersistenceError(
                    f"{what} {_show(text)} holds the string {text[i : end + 1]!r}; strings in a formula loaded from "
                    "a file may hold only letters, digits, spaces and _ . + -"
                )
            out.append(text[i : end + 1])
            i = end + 1
        elif ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise PersistenceError(f"{what} {_show(text)} has an unterminated backquoted name")
            name = text[i + 1 : end]
            if name not in columns or not _SAFE_QUOTED.fullmatch(name):
                raise PersistenceError(
                    f"{what} {_show(text)} reads the backquoted name `{name}`, which is not a column of the saved data"
                )
            # a letter prefix keeps the placeholder a valid identifier; the counter keeps it unique
            key = f"memoe_quoted_{len(quoted)}"
            quoted[key] = name
            out.append(f" {key} ")
            i = end + 1
        elif ch == "%":
            if text.startswith("%in%", i):
                out.append(" / ")
                i += 4
            else:
                raise PersistenceError(f"{what} {_show(text)} uses '%' other than in the operator %in%")
        elif ch in "#\\;\n\r\x0b\x0c" or (ord(ch) < 32 and ch != "\t"):
            # a comment or a line continuation would hide the rest of the text from the parser
            raise PersistenceError(
                f"{what} {_show(text)} contains the character {ch!r}, refused in a formula from a file"
            )
        elif ch == "|" and text.startswith("||", i):
            out.append("|")
            i += 2
        else:
            out.append({"{": "(", "}": ")", ":": "&"}.get(ch, ch))
            i += 1
    return "".join(out), quoted


def _show(text: str) -> str:
    """``repr`` of a formula for a message, shortened in the middle when long."""
    return repr(text) if len(text) <= 200 else repr(f"{text[:120]} ... {text[-60:]}")


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _has_name(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) for n in ast.walk(node))


def _literal_number(node: ast.AST) -> float | None:
    """The value of ``3``, ``-2.5``, ``+1`` (a number literal, maybe signed), else None."""
    sign = 1
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = -sign if isinstance(node.op, ast.USub) else sign
        node = node.operand
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return sign * node.value
    return None


class _Checker:
    """Walks a parsed formula side; every node type it does not name explicitly is refused."""

    def __init__(self, text: str, columns: set[str], quoted: dict[str, str], what: str) -> None:
        self.text, self.columns, self.quoted, self.what = text, columns, quoted, what

    def refuse(self, node: ast.AST, why: str) -> PersistenceError:
        try:
            piece = ast.unparse(node)
        except Exception:  # unparse of a partial tree; the node type still says what it was
            piece = type(node).__name__
        for key, name in self.quoted.items():
            piece = piece.replace(key, f"`{name}`")
        return PersistenceError(
            f"refusing {self.what} {_show(self.text)}: {why}: {piece!r} (a formula loaded from a file may use only "
            "saved columns, numbers, formula operators and memoe's allow-listed transforms)"
        )

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, _BINOPS):
                raise self.refuse(node, f"operator {type(node.op).__name__} is not a formula operator")
            if isinstance(node.op, ast.Pow):
                self._check_power(node)
            self.visit(node.left)
            self.visit(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd):
                raise self.refuse(node, f"unary operator {type(node.op).__name__} is not a formula operator")
            self.visit(node.operand)
        elif isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):
                raise self.refuse(node, "only numbers may stand alone in a formula")
        elif isinstance(node, ast.Name):
            self._check_variable(node)
        elif isinstance(node, ast.Attribute):
            self._check_attribute(node)
        elif isinstance(node, ast.Call):
            self._check_call(node)
        else:
            raise self.refuse(node, f"{type(node).__name__} is not allowed")

    def _check_variable(self, node: ast.Name) -> None:
        name = node.id
        if name.startswith("__"):
            raise self.refuse(node, "dunder names are not allowed")
        if name in self.quoted or name in self.columns:
            return
        raise self.refuse(node, f"{name!r} is not a column of the saved data")

    def _check_attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        if dotted is not None and "__" not in dotted:
            if dotted in self.columns:
                return  # an R-style column name such as 'a.b': formulaic reads it from the data
            base, _, attr = dotted.partition(".")
            if base in _NUMPY and attr in NUMPY_CONSTANTS:
                return
        raise self.refuse(node, "attribute access other than np.pi / np.e (or np.<transform>(...)) is not allowed")

    def _check_power(self, node: ast.BinOp) -> None:
        # numpy arrays overflow to inf, but a power of Python integers is exact: keep literal powers small
        if not _has_name(node.right):
            exponent = _literal_number(node.right)
            if exponent is None or abs(exponent) > _MAX_LITERAL_EXPONENT:
                limit = _MAX_LITERAL_EXPONENT
                raise self.refuse(node, f"an exponent must be a column or a number of size at most {limit}")
            if not _has_name(node.left) and _literal_number(node.left) is None:
                raise self.refuse(node, "a power of a constant expression is not allowed")

    def _check_call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            name = func.id
            if name not in FUNCTIONS:
                raise self.refuse(node, f"calling {name!r} is not allowed")
        elif isinstance(func, ast.Attribute):
            dotted = _dotted(func)
            base, _, attr = (dotted or "").partition(".")
            if base not in _NUMPY or attr not in NUMPY_FUNCTIONS:
                raise self.refuse(node, f"calling {dotted or ast.unparse(func)!r} is not allowed")
            name = attr
        else:
            raise self.refuse(node, "calling the result of an expression is not allowed")
        for i, arg in enumerate(node.args):
            if isinstance(arg, ast.Starred):
                raise self.refuse(node, "*args is not allowed")
            if name == "C" and i == 1:
                self._check_contrast(arg)
            else:
                self.visit(arg)
        for kw in node.keywords:
            if kw.arg is None:
                raise self.refuse(node, "**kwargs is not allowed")
            if kw.arg not in KEYWORDS:
                raise self.refuse(node, f"keyword argument {kw.arg!r} is not allowed")
            self._check_literal(kw.value)

    def _check_contrast(self, node: ast.AST) -> None:
        """The second argument of C(): a contrast name, ``contr.<name>`` or a call of either with literals."""
        target = node.func if isinstance(node, ast.Call) else node
        dotted = _dotted(target)
        ok = (
            (
                isinstance(target, ast.Constant) and type(target.value) is str and not isinstance(node, ast.Call)
                and _SAFE_STRING.fullmatch(target.value) is not None
            )
            or dotted in _CONTR_CLASSES
            or (dotted is not None and dotted.startswith("contr.") and dotted[6:] in _CONTR_ATTRS)
        )
        if not ok:
            raise self.refuse(node, "the contrast of C() must be a contrast name such as contr.sum or 'treatment'")
        if isinstance(node, ast.Call):
            for arg in node.args:
                self._check_literal(arg)
            for kw in node.keywords:
                if kw.arg is None or kw.arg not in KEYWORDS:
                    raise self.refuse(node, f"keyword argument {kw.arg!r} is not allowed")
                self._check_literal(kw.value)

    def _check_literal(self, node: ast.AST) -> None:
        """A number, bool, None, plain string, or a flat list/tuple of those."""
        items = node.elts if isinstance(node, ast.List | ast.Tuple) else [node]
        for item in items:
            if _literal_number(item) is not None:
                continue
            if isinstance(item, ast.Constant) and (item.value is None or type(item.value) is bool):
                continue
            if isinstance(item, ast.Constant) and type(item.value) is str and _SAFE_STRING.fullmatch(item.value):
                continue
            raise self.refuse(node, "keyword and contrast arguments must be literal numbers, booleans or strings")

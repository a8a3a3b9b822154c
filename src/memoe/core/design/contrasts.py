"""R's contrasts for factors in a fixed-effects formula: defaults, the ``contrasts=`` argument, names.

R codes an unordered factor with ``contr.treatment`` and an *ordered* factor with ``contr.poly``
(``options(contrasts = c("contr.treatment", "contr.poly"))``); ``lm``/``lmer``/``glmer``/``gls``/
``geeglm`` take ``contrasts = list(x = "contr.sum")`` to choose per factor. memoe does the same:

* ``contrasts=None`` (the default) — treatment contrasts for unordered factors (strings,
  unordered Categoricals, ``factor(x)``), polynomial contrasts for ordered pandas Categoricals
  (polars ``Enum`` and ordered categoricals arrive as ordered pandas Categoricals);
* ``contrasts={"dept": "sum", "lectage": "treatment"}`` — per variable, one of ``"treatment"``,
  ``"sum"``, ``"helmert"``, ``"poly"`` (or R's ``"contr.treatment"``, ``"contr.sum"``, ...);
  variables not named keep the default.

The choice is carried out by rewriting a factor variable ``x`` of the formula into formulaic's
``C(x, contr.poly)`` (whose numbers are R's: orthonormal polynomials of the scores 1..n for poly,
-1 in the last row for sum, unscaled Helmert), so the stored formulaic spec replays it on new data.
An explicit ``C(x, ...)`` in the formula is the user's own choice and is left alone.
"""

from __future__ import annotations

import functools
import io
import re
import tokenize
from collections.abc import Mapping

import pandas as pd

from memoe.errors import DataError, FormulaError

__all__ = [
    "CONTRASTS",
    "apply_contrasts",
    "canonical_contrast",
    "check_contrasts_argument",
    "check_saved_contrasts",
    "contrasts_footer",
    "factor_variables",
    "resolve_contrasts",
]

# accepted spellings -> canonical short name (R's function is "contr." + the short name)
CONTRASTS: dict[str, str] = {}
for _name in ("treatment", "sum", "helmert", "poly"):
    CONTRASTS[_name] = _name
    CONTRASTS[f"contr.{_name}"] = _name
del _name

# what a bare factor reference may be wrapped in and still be "the variable x" (R's factor(x) of an
# ordered factor stays ordered, so its default is contr.poly too)
_WRAPPERS = frozenset({"factor", "C"})


def canonical_contrast(value: object, variable: str, what: str = "contrasts") -> str:
    """The short name (``"poly"``) of an accepted contrast spelling, else a :class:`FormulaError`."""
    if isinstance(value, str) and value.strip() in CONTRASTS:
        return CONTRASTS[value.strip()]
    raise FormulaError(
        f"{what}[{variable!r}] is {value!r}; accepted contrasts are 'treatment', 'sum', 'helmert', 'poly' "
        "(or R's 'contr.treatment', 'contr.sum', 'contr.helmert', 'contr.poly')"
    )


def check_contrasts_argument(contrasts: object, what: str = "contrasts") -> dict[str, str]:
    """Validate a ``contrasts=`` argument: ``None`` or a mapping of column name to contrast name.

    Returns
    -------
    dict
        Column name -> canonical short name (``{"dept": "sum"}``); empty for ``None``.

    Raises
    ------
    FormulaError
        Not a mapping, a key that is not a string, or a contrast that is not accepted.
    """
    if contrasts is None:
        return {}
    if not isinstance(contrasts, Mapping):
        raise FormulaError(
            f"{what} must be None or a dict of column name to contrast, e.g. {{'dept': 'sum'}}; "
            f"got {type(contrasts).__name__}"
        )
    out: dict[str, str] = {}
    for key, value in contrasts.items():
        if not isinstance(key, str):
            raise FormulaError(f"{what} keys must be column names (strings); got {key!r}")
        out[key] = canonical_contrast(value, key, what)
    return out


def check_saved_contrasts(saved: object, columns, what: str = "the saved contrasts") -> None:
    """Refuse saved contrasts that are not a dict of saved column -> accepted contrast name.

    Files written before contrasts were saved have none (``None``): R's default is then replayed
    from the saved data's (ordered) Categoricals.

    Raises
    ------
    PersistenceError
    """
    from memoe.errors import PersistenceError

    if saved is None:
        return
    if not isinstance(saved, dict):
        raise PersistenceError(f"{what} must be a dict of column name to contrast name; got {type(saved).__name__}")
    cols = {str(c) for c in columns}
    for key, value in saved.items():
        if not isinstance(key, str) or key not in cols:
            raise PersistenceError(f"{what} name {key!r}, which is not a saved data column")
        if not isinstance(value, str) or value not in CONTRASTS:
            raise PersistenceError(
                f"{what}[{key!r}] is {value!r}; only 'treatment', 'sum', 'helmert' and 'poly' (or 'contr.*') are "
                "accepted"
            )


def _tokens(rhs: str) -> list[tokenize.TokenInfo]:
    """Python tokens of a formula side (formulaic's operators tokenize as Python operators)."""
    try:
        return [
            t for t in tokenize.generate_tokens(io.StringIO(rhs).readline)
            if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT)
        ]
    except (tokenize.TokenError, IndentationError, SyntaxError) as exc:
        raise FormulaError(f"cannot read the formula {rhs!r}: {exc}") from None


@functools.lru_cache(maxsize=512)
def _references(rhs: str) -> tuple[tuple[int, int, str, bool], ...]:
    """Top-level references to a variable: ``(start, end, name, wrapped)`` character spans.

    A reference is a bare name (``x`` or a backquoted `` `my x` ``) at parenthesis depth 0, or a
    ``factor(x)`` / ``C(x)`` call with that single argument (``wrapped``). Names inside other calls
    (``log(x)``, ``I(x)``, ``C(x, contr.sum)``) or ``{...}`` blocks are not references.
    """
    out: list[tuple[int, int, str, bool]] = []
    # backquoted names are not Python: replace them by same-length placeholders, remember the spans
    quoted: dict[int, tuple[int, str]] = {}
    chars = list(rhs)
    for m in re.finditer(r"`([^`]*)`", rhs):
        quoted[m.start()] = (m.end(), m.group(1))
        chars[m.start() : m.end()] = ["_"] * (m.end() - m.start())
    text = "".join(chars)
    line_start = [0]
    for line in text.splitlines(keepends=True):
        line_start.append(line_start[-1] + len(line))
    toks = _tokens(text)

    def pos(rc: tuple[int, int]) -> int:
        return line_start[rc[0] - 1] + rc[1]

    def name_of(t: tokenize.TokenInfo) -> str:
        start = pos(t.start)
        return quoted[start][1] if start in quoted else t.string

    # a "(" right after a name opens a call (its arguments are not references); any other "(" only
    # groups terms, as in (a + b)^2, and its contents are still at the top level
    stack: list[bool] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        depth = sum(stack)
        if t.type == tokenize.OP and t.string in "([{":
            prev = toks[i - 1] if i else None
            grouping = t.string == "(" and not (prev is not None and prev.type == tokenize.NAME)
            stack.append(not grouping)
        elif t.type == tokenize.OP and t.string in ")]}":
            if stack:
                stack.pop()
        elif t.type == tokenize.NAME and depth == 0:
            prev = toks[i - 1] if i else None
            after = toks[i + 1] if i + 1 < len(toks) else None
            if prev is not None and prev.type == tokenize.OP and prev.string == ".":
                pass  # an attribute (np.log): not a variable
            elif after is not None and after.type == tokenize.OP and after.string == "(":
                # factor(x) / C(x) with exactly one name inside
                if (
                    t.string in _WRAPPERS
                    and i + 3 < len(toks)
                    and toks[i + 2].type == tokenize.NAME
                    and toks[i + 3].type == tokenize.OP
                    and toks[i + 3].string == ")"
                ):
                    out.append((pos(t.start), pos(toks[i + 3].end), name_of(toks[i + 2]), True))
                    i += 4
                    continue
            elif after is not None and after.type == tokenize.OP and after.string == ".":
                pass
            else:
                out.append((pos(t.start), pos(t.end), name_of(t), False))
        i += 1
    # cached (a pure function of the string; tokenizing costs ~40 us, asked several times per model)
    return tuple(out)


def factor_variables(rhs: str, data: pd.DataFrame, columns: Mapping[str, pd.Series] | None = None) -> dict[str, bool]:
    """Columns referenced as factors at the top level of ``rhs``: name -> whether via ``factor()``/``C()``.

    A bare column is a factor when formulaic encodes it as one (string, object or
    Categorical dtype); ``factor(x)`` / ``C(x)`` make any column a factor. ``columns`` holds Series of
    ``data`` already looked up, by name.
    """
    out: dict[str, bool] = {}
    for _, _, name, wrapped in _references(rhs):
        if columns and name in columns:
            col = columns[name]
        elif name not in data.columns:
            continue
        else:
            col = data[name]
        if wrapped or _is_factor_dtype(col):
            out[name] = out.get(name, False) or wrapped
    return out


def _is_factor_dtype(col: pd.Series) -> bool:
    dt = col.dtype
    # booleans are 0/1 numbers to formulaic (memoe names their column xTRUE, as R); contrasts do not apply
    return isinstance(dt, pd.CategoricalDtype) or pd.api.types.is_object_dtype(dt) or pd.api.types.is_string_dtype(dt)


def _is_ordered(col: pd.Series) -> bool:
    return isinstance(col.dtype, pd.CategoricalDtype) and bool(col.dtype.ordered)


def resolve_contrasts(
    rhs_list: list[str], data: pd.DataFrame, contrasts: Mapping[str, str] | None, what: str = "contrasts",
    columns: Mapping[str, pd.Series] | None = None,
) -> dict[str, str]:
    """The contrast of every factor variable of the formula sides ``rhs_list``.

    Parameters
    ----------
    rhs_list : list of str
        Formula right-hand sides in formulaic syntax (the fixed part; a gating formula).
    data : pandas.DataFrame
    contrasts : mapping or None
        The user's choice (already validated by :func:`check_contrasts_argument` or raw).
    what : str
        How messages name the argument.
    columns : mapping, optional
        Series of ``data`` already looked up, by name (spares pandas' column lookups).

    Returns
    -------
    dict
        Variable -> canonical short name, in order of first appearance, for every factor variable
        (treatment-coded ones included).

    Raises
    ------
    DataError
        A named column is not in the data, or is used only as a number in the formula.
    FormulaError
        A contrast name that is not accepted.
    """
    user = check_contrasts_argument(contrasts, what)
    factors: dict[str, bool] = {}
    numeric_refs: set[str] = set()
    for rhs in rhs_list:
        for name, wrapped in factor_variables(rhs, data, columns).items():
            factors[name] = factors.get(name, False) or wrapped
        numeric_refs.update(n for _, _, n, w in _references(rhs) if n in data.columns and not w)
    for name in user:
        if name not in data.columns:
            raise DataError(
                f"{what} names {name!r}, which is not a variable of the formula {' / '.join(rhs_list)!r}; "
                f"contrasts are set for its factor columns ({', '.join(map(str, list(data.columns)[:10]))}"
                f"{', ...' if data.shape[1] > 10 else ''})"
            )
        if name not in factors and name in numeric_refs:
            raise DataError(
                f"{what} sets {user[name]!r} contrasts for {name!r}, which the formula uses as a number "
                f"(dtype {data[name].dtype}); contrasts apply to factors: string or Categorical "
                f"columns, or the column wrapped in factor({name})"
            )
    out: dict[str, str] = {}
    for name in factors:
        if name in user:
            out[name] = user[name]
        elif _is_ordered(columns[name] if columns and name in columns else data[name]):
            out[name] = "poly"
        else:
            out[name] = "treatment"
    return out


def apply_contrasts(rhs: str, resolved: Mapping[str, str]) -> str:
    """``rhs`` with each factor reference whose contrast is not treatment rewritten as ``C(x, contr.<name>)``.

    Treatment-coded references are left as written, so their formulaic column names (and
    memoe's R names) are unchanged.
    """
    out = []
    last = 0
    for start, end, name, _ in _references(rhs):
        kind = resolved.get(name)
        if kind is None or kind == "treatment":
            continue
        ref = name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else f"`{name}`"
        out.append(rhs[last:start])
        out.append(f"C({ref}, contr.{kind})")
        last = end
    out.append(rhs[last:])
    return "".join(out)


def contrasts_footer(resolved: Mapping[str, str] | None) -> str | None:
    """``"Contrasts: lectage = contr.poly, dept = contr.sum"`` when any factor is not treatment-coded, else None."""
    if not resolved:
        return None
    shown = [f"{k} = contr.{v}" for k, v in resolved.items() if v != "treatment"]
    return "Contrasts: " + ", ".join(shown) if shown else None

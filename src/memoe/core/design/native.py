"""Model matrices of everyday formulas built natively: numeric columns, factors, their interactions.

formulaic evaluates a formula generically (per factor a pandas evaluation, per term a scoping pass, a
``ModelSpec`` with its parser), which costs 1-3 ms per model matrix whatever the data's size: most of
a small model's construction (sleepstudy's whole fit is ~7 ms). For the formulas people write every
day every model-matrix column is a product of data columns and of factor indicator/contrast columns,
so this module builds them straight from the columns' numpy arrays, in Fortran order:

* terms whose factors are the intercept or *lookups* of data columns: numeric (NumPy int, unsigned,
  float, bool) or factors (pandas Categorical, ordered or not, with at least two categories; object
  columns of strings), interactions ``a:b``, ``a*b`` of any of them;
* contrasts: treatment (R's default), poly (the default of ordered factors), sum and helmert
  (``contrasts=``), with the numbers of formulaic's own contrast classes;
* the coding of a factor without its margin (full indicator coding when the lower-order term is absent)
  is formulaic's (patsy's) scoping algorithm, replayed on the factors' kinds
  (:func:`scoped_terms`), so the columns, their order and their names are exactly formulaic's.

Anything else (calls such as ``log(x)``, ``I()``, ``poly()``, ``C()``, ``factor()``, splines, nullable
or string dtypes, single-level factors) answers None and goes through formulaic unchanged.

The formulaic ``ModelSpec`` that replays the encoding on new data (``predict(newdata)``, Dask
partitions, persistence) is built lazily (:class:`LazySpec`) on first access, by formulaic itself on a
small frame holding the first rows and the first row of every level of every object-dtype factor (a
Categorical's levels are its dtype's categories), so its levels and their order are those of the
full data; its column names are checked against the native ones.
``tests/unit/test_design_native.py`` compares both paths element by element over a grid of formulas.
"""

from __future__ import annotations

import functools
import itertools
import re
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from formulaic import Formula, model_matrix
from formulaic.model_spec import ModelSpec
from formulaic.transforms.contrasts import HelmertContrasts, PolyContrasts, SumContrasts, TreatmentContrasts

from memoe.core.formula.names import r_column_name
from memoe.errors import FormulaError

__all__ = [
    "LazySpec", "NativeMatrix", "column", "frame_columns", "native_matrix", "parse_terms", "scoped_terms", "text_codes",
]

_CONTRAST_CLASSES = {
    "treatment": TreatmentContrasts, "sum": SumContrasts, "helmert": HelmertContrasts, "poly": PolyContrasts,
}
# rows of the head of the data handed to formulaic to learn the spec (numeric columns carry no state)
HEAD_ROWS = 2

# formulaic column name -> (Fortran-ordered matrix, column index): the columns of one design's fixed part,
# reused by its random-effects terms
ColumnCache = dict


# a power of a data column, ``I(day ** 2)`` (formulaic's spelling of R's ``I(day^2)``): the everyday polynomial
# trend, built natively as a numeric column (same numbers as formulaic: the column's own dtype raised, then float)
_POWER = re.compile(r"^I\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\*\*\s*([1-9][0-9]?)\s*\)$")


@functools.lru_cache(maxsize=512)
def parse_terms(rhs: str) -> tuple[tuple[str, ...], ...] | None:
    """The terms of ``rhs`` in formulaic's order, each the tuple of its data columns (``()``: intercept).

    None when any factor is not a plain column lookup, a power ``I(x ** k)`` of one or the intercept (a
    call, a literal, a ``{...}`` block, a left-hand side): such formulas go through formulaic. Cached: a pure
    function of the string, and formulaic's parse costs ~1 ms.
    """
    try:
        parsed = Formula(rhs)
    except Exception:  # formulaic reports the parse error on its own path
        return None
    if hasattr(parsed, "lhs"):
        return None
    terms: list[tuple[str, ...]] = []
    for term in parsed:
        cols: list[str] = []
        for factor in term.factors:
            method = getattr(factor.eval_method, "value", factor.eval_method)
            if method == "literal" and str(factor.expr) == "1":
                continue
            if method != "lookup" and not (method == "python" and _POWER.match(str(factor.expr))):
                return None
            cols.append(str(factor.expr))
        terms.append(tuple(dict.fromkeys(cols)))
    return tuple(terms)


# ---------------------------------------------------------------------------------------------------
# formulaic's (patsy's) scoping: which factors of a term are coded by contrasts (reduced) or in full
# ---------------------------------------------------------------------------------------------------
_Scoped = tuple[tuple[str, bool], ...]  # ((column, reduced), ...) in the term's factor order


def _simplify(scoped: Sequence[_Scoped]) -> list[_Scoped]:
    """formulaic's ``_simplify_scoped_terms``: (anything):(reduced) + (anything) -> (anything):(full)."""
    terms: list[_Scoped] = []
    for st in sorted(scoped, key=len):
        factors = set(st)
        combined = False
        for existing in terms:
            cof = set(existing)
            diff = factors - cof
            if len(factors) - 1 != len(cof) or len(diff) != 1:
                continue
            new = next(iter(diff))
            if new[1]:
                replaced = tuple((f[0], False) if f == new else f for f in st)
                rest = [t for t in terms if set(t) != cof]
                if not any(set(t) == set(replaced) for t in rest):
                    rest.append(replaced)
                terms = _simplify(rest)
                combined = True
                break
        if not combined and not any(set(t) == factors for t in terms):
            terms.append(st)
    return terms


@functools.lru_cache(maxsize=512)
def scoped_terms(terms: tuple[tuple[str, ...], ...], categorical: frozenset[str]) -> tuple[tuple[_Scoped, ...], ...]:
    """Per term, its scoped terms (formulaic's ``_get_scoped_terms`` with ``ensure_full_rank``).

    A categorical factor spans the intercept: its term contributes the products of (reduced factor or
    nothing) over categorical factors, minus what earlier terms spanned, simplified. A pure function of
    the terms and of which columns are categorical (cached).
    """
    spanned: set[frozenset] = set()
    out: list[tuple[_Scoped, ...]] = []
    for term in terms:
        choices = [[(c, True), None] if c in categorical else [(c, False)] for c in term]
        span: list[_Scoped] = []
        seen: set[frozenset] = set()
        for prod in itertools.product(*choices):
            st = tuple(p for p in prod if p is not None)
            key = frozenset(st)
            if key not in spanned and key not in seen:
                seen.add(key)
                span.append(st)
        out.append(tuple(_simplify(span)))
        spanned.update(seen)
    return tuple(out)


# ---------------------------------------------------------------------------------------------------
# factors
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Factor:
    """One categorical column: codes, levels, its formulaic expression and contrast."""

    expr: str
    levels: list
    codes: np.ndarray
    contrast: str
    categorical: bool = False  # a pandas Categorical (its levels are its dtype's, whatever rows are kept)

    def columns(self, reduced: bool) -> list[tuple[str, np.ndarray | None, int]]:
        """``(formulaic column name, coding vector over levels or None for an indicator, level)``."""
        cls = _CONTRAST_CLASSES[self.contrast]()
        fmt = cls.get_factor_format(self.levels, reduced_rank=reduced)
        names = cls.get_coding_column_names(self.levels, reduced_rank=reduced)
        if not reduced or self.contrast == "treatment":
            # indicator columns: level i of names is levels[offset + i]
            off = len(self.levels) - len(names)
            return [(fmt.format(name=self.expr, field=nm), None, off + i) for i, nm in enumerate(names)]
        M = np.asarray(cls.get_coding_matrix(self.levels, reduced_rank=True), dtype=float)
        return [(fmt.format(name=self.expr, field=nm), np.ascontiguousarray(M[:, i]), -1) for i, nm in enumerate(names)]

    def values(self, coding: np.ndarray | None, level: int) -> np.ndarray:
        if coding is None:
            return (self.codes == level).astype(np.float64)
        return coding[self.codes]


def column(data: pd.DataFrame, name: str, memo: dict | None = None) -> pd.Series:
    """``data[name]``, from a design's column cache when the model frame put it there (one lookup per design)."""
    if memo is not None:
        col = memo.get(("__col__", name))
        if col is not None:
            return col
    return data[name]


def frame_columns(memo: dict | None) -> dict[str, pd.Series] | None:
    """The model frame's Series held in a design's column cache, by name (None without any)."""
    if not memo:
        return None
    return {k[1]: v for k, v in memo.items() if type(k) is tuple and k[0] == "__col__"} or None


def text_codes(col: pd.Series, memo: dict | None = None) -> tuple[np.ndarray, list] | None:
    """Codes (intp) and sorted levels of a text column (``str`` dtype, or object of strings), else None.

    ``memo`` (a design's column cache) keeps the answer per column: the fixed part, the random-effects
    terms and the grouping factors of one design factorise each column once.
    """
    key = ("__text__", col.name)
    if memo is not None and key in memo:
        return memo[key]
    dt = col.dtype
    if isinstance(dt, pd.StringDtype):
        # pandas >= 3 reads text as ``str`` (a StringDtype): factorised on its own (Arrow) array
        codes, uniques = pd.factorize(col.array, sort=True)
        out = (np.asarray(codes, dtype=np.intp), [str(v) for v in uniques])
    elif isinstance(dt, np.dtype) and dt.kind == "O":
        values = col.to_numpy()
        if pd.api.types.infer_dtype(values, skipna=False) != "string":
            return None
        codes, uniques = pd.factorize(values, sort=True)
        out = (np.asarray(codes, dtype=np.intp), list(uniques))
    else:
        return None
    if memo is not None:
        memo[key] = out
    return out


def _factor_of(col: pd.Series, name: str, contrast: str, memo: dict | None) -> _Factor | None:
    """The factor of a Categorical or text column, or None (formulaic decides)."""
    dt = col.dtype
    if isinstance(dt, pd.CategoricalDtype):
        levels = list(dt.categories)
        codes = np.asarray(col.array.codes, dtype=np.intp)
    else:
        found = text_codes(col, memo)
        if found is None:
            return None
        codes, levels = found
    if len(levels) < 2:
        # one level: formulaic's reduced coding of it has no column and no longer spans the intercept
        return None
    if len(codes) and codes.min() < 0:
        # missing values (code -1; the model frame has dropped them, other callers may not): formulaic's rows
        return None
    ref = name if name.isidentifier() else f"`{name}`"
    expr = name if contrast == "treatment" else f"C({ref}, contr.{contrast})"
    return _Factor(
        expr=expr, levels=levels, codes=codes, contrast=contrast, categorical=isinstance(dt, pd.CategoricalDtype)
    )


def _numeric_kind(col: pd.Series) -> bool | None:
    """True for a NumPy int, unsigned, bool or float64 column, None for a narrower float, else False."""
    dt = col.dtype
    if not isinstance(dt, np.dtype) or dt.kind not in "fiub":
        return False
    return None if dt.kind == "f" and dt.itemsize < 8 else True


# ---------------------------------------------------------------------------------------------------
# the lazily built formulaic spec
# ---------------------------------------------------------------------------------------------------
class LazySpec:
    """A formulaic ``ModelSpec`` built on first :meth:`get` (thread-safe), from a small frame.

    Parameters
    ----------
    rhs : str
        The formula side formulaic evaluates (contrasts already written as ``C(x, contr.*)``).
    data : pandas.DataFrame
        The full model frame (kept by the design anyway).
    factors : sequence of str
        Object-dtype factor columns whose every level must appear in the small frame.
    expected : sequence of str
        The native path's formulaic column names; the spec must give exactly these.
    what : str
        What ``rhs`` encodes, for messages.
    """

    def __init__(self, rhs: str, data: pd.DataFrame, factors: Sequence[str], expected: Sequence[str], what: str):
        self._args = (rhs, data, tuple(factors), tuple(expected), what)
        self._spec: ModelSpec | None = None
        self._lock = threading.Lock()

    def get(self) -> ModelSpec:
        if self._spec is None:
            with self._lock:
                if self._spec is None:
                    self._spec = self._build()
                    self._args = None  # the frame is no longer needed here
        return self._spec

    def __getstate__(self) -> dict:
        # copies and worker processes (memoe.core.replicates) get the built spec, not the lock and frame
        return {"spec": self.get()}

    def __setstate__(self, state: dict) -> None:
        self._args = None
        self._spec = state["spec"]
        self._lock = threading.Lock()

    def _build(self) -> ModelSpec:
        rhs, data, factors, expected, what = self._args
        rows = [np.arange(min(HEAD_ROWS, len(data)))]
        for c in factors:
            codes, _ = pd.factorize(data[c].to_numpy())
            rows.append(np.unique(codes, return_index=True)[1])
        small = data.iloc[np.unique(np.concatenate(rows))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                spec = model_matrix(rhs, small, output="numpy", na_action="ignore").model_spec
        except Exception as exc:
            raise FormulaError(f"cannot build {what} {rhs!r}: {exc}") from None
        if tuple(spec.column_names) != expected:
            raise FormulaError(
                f"internal: the formulaic spec of {what} {rhs!r} has columns {list(spec.column_names)}, the native "
                f"design {list(expected)}; please report this formula"
            )
        return spec


def resolve_spec(spec: ModelSpec | LazySpec) -> ModelSpec:
    """The formulaic spec itself (building a :class:`LazySpec` on first use)."""
    return spec.get() if isinstance(spec, LazySpec) else spec


# ---------------------------------------------------------------------------------------------------
# the matrix
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NativeMatrix:
    """A model matrix built natively.

    Attributes
    ----------
    X : numpy.ndarray, shape (n, p), Fortran order (a read-only view of a cached matrix when fully cached)
    names : list of str
        R's column names.
    spec : LazySpec
    contrasts : dict
        The contrast of each factor variable (only what was passed in, for the factors used).
    """

    X: np.ndarray
    names: list[str]
    spec: LazySpec
    contrasts: dict[str, str]


def native_matrix(
    rhs: str,
    data: pd.DataFrame,
    contrasts: Mapping[str, str],
    what: str,
    cache: ColumnCache | None = None,
) -> NativeMatrix | None:
    """The model matrix of ``rhs`` on ``data`` built natively, or None when formulaic must build it.

    Parameters
    ----------
    rhs : str
        Formula side in formulaic syntax, as written (factors as bare names).
    data : pandas.DataFrame
        The model frame (missing rows already dropped).
    contrasts : mapping
        Factor column -> canonical contrast (``"treatment"``, ``"sum"``, ``"helmert"``, ``"poly"``), as
        :func:`memoe.core.design.contrasts.resolve_contrasts` gives it; a factor not named is treatment
        coded (poly when ordered).
    what : str
        What ``rhs`` encodes, for messages.
    cache : dict, optional
        Formulaic column name -> ``(matrix, j)`` of columns already built for this design; a matrix
        whose columns are all there, consecutive in one matrix, is a read-only view of it.

    Returns
    -------
    NativeMatrix or None

    Examples
    --------
    >>> import pandas as pd
    >>> from memoe.core.design.native import native_matrix
    >>> d = pd.DataFrame({"x": [0.0, 1, 2, 3], "g": ["a", "b", "a", "c"]})
    >>> m = native_matrix("1 + x * g", d, {}, "the fixed effects")
    >>> m.names
    ['(Intercept)', 'x', 'gb', 'gc', 'x:gb', 'x:gc']

    R equivalent
    ------------
    ``model.matrix(~ rhs, data, contrasts.arg = contrasts)`` (for formulas where formulaic's columns are R's).
    """
    terms = parse_terms(rhs)
    if terms is None:
        return None
    columns = {c for t in terms for c in t}
    factors: dict[str, _Factor] = {}
    numeric: set[str] = set()
    narrow: set[str] = set()
    for c in columns:
        power = _POWER.match(c)
        if power is not None:
            # I(x ** k): numeric when x is a NumPy int or float64 column (bool, narrow floats, text: formulaic)
            base = cache.get(("__col__", power.group(1))) if cache is not None else None
            if base is None:
                if power.group(1) not in data.columns:
                    return None
                base = data[power.group(1)]
            if not isinstance(base, pd.Series) or not _numeric_kind(base) or base.dtype.kind == "b":
                return None
            if contrasts.get(c, "treatment") != "treatment":
                return None
            numeric.add(c)
            continue
        col = cache.get(("__col__", c)) if cache is not None else None
        if col is None:
            if c not in data.columns:
                return None
            col = data[c]
        if not isinstance(col, pd.Series):  # duplicated column names: formulaic reports them
            return None
        kind = _numeric_kind(col)
        if kind is None:
            narrow.add(c)
        if kind is None or kind:
            if contrasts.get(c, "treatment") != "treatment":
                return None  # contrasts for a number: resolve_contrasts refuses it on formulaic's path
            numeric.add(c)
            continue
        default = "poly" if isinstance(col.dtype, pd.CategoricalDtype) and col.dtype.ordered else "treatment"
        f = _factor_of(col, c, contrasts.get(c, default), cache)
        if f is None or (f.expr != c and not c.isidentifier()):
            return None
        factors[c] = f
    # formulaic multiplies float32 (float16) columns in their own precision, products here are float64: a
    # product of such a column with another number goes through formulaic (rare; the numbers stay its own)
    if narrow and any(len([c for c in t if c in numeric]) > 1 and narrow.intersection(t) for t in terms):
        return None
    scoped = scoped_terms(terms, frozenset(factors))
    n = len(data)
    # per output column: formulaic name, and how to compute it
    plan: list[tuple[str, list]] = []
    for term_scopes in scoped:
        for st in term_scopes:
            if not st:
                plan.append(("Intercept", []))
                continue
            per_factor = []
            for col, reduced in st:
                if col in factors:
                    cols = factors[col].columns(reduced)
                    per_factor.append([(nm, ("f", col, coding, lv)) for nm, coding, lv in cols])
                else:
                    per_factor.append([(col, ("n", col, None, 0))])
            # formulaic: the first factor varies fastest in names and values; single-column factors are
            # multiplied together first (left to right) and that product comes last in the multiplication
            for combo in itertools.product(*reversed(per_factor)):
                combo = combo[::-1]
                name = ":".join(nm for nm, _ in combo)
                multi = [src for (nm, src), choices in zip(combo, per_factor, strict=True) if len(choices) > 1]
                solo = [src for (nm, src), choices in zip(combo, per_factor, strict=True) if len(choices) == 1]
                plan.append((name, multi + ([("solo", solo)] if solo else [])))
    fnames = [nm for nm, _ in plan]
    X = _fill(plan, fnames, data, factors, n, cache)
    levels = {f.expr: f.levels for f in factors.values()}
    names = [r_column_name(c, levels) for c in fnames]
    coded = _coded_rhs(rhs, factors)
    obj_factors = [c for c, f in factors.items() if not f.categorical]
    spec = LazySpec(coded, data, obj_factors, fnames, what)
    used = {c: f.contrast for c, f in factors.items()}
    return NativeMatrix(X=X, names=names, spec=spec, contrasts=used)


def _coded_rhs(rhs: str, factors: Mapping[str, _Factor]) -> str:
    """``rhs`` with the non-treatment factors written as formulaic's ``C(x, contr.*)``."""
    if all(f.contrast == "treatment" for f in factors.values()):
        return rhs
    from memoe.core.design.contrasts import apply_contrasts

    return apply_contrasts(rhs, {c: f.contrast for c, f in factors.items()})


def _source(src, data: pd.DataFrame, factors: Mapping[str, _Factor], memo: dict, cache: dict | None) -> np.ndarray:
    kind, col, coding, level = src
    if kind == "n":
        if col not in memo:
            power = _POWER.match(col)
            if power is not None:
                # formulaic evaluates x ** k on the column's values (int stays int), then takes floats
                base = column(data, power.group(1), cache).to_numpy()
                memo[col] = np.asarray(base ** int(power.group(2)), dtype=np.float64)
            else:
                memo[col] = np.asarray(column(data, col, cache).to_numpy(), dtype=np.float64)
        return memo[col]
    return factors[col].values(coding, level)


def _fill(plan, fnames, data, factors, n: int, cache: ColumnCache | None) -> np.ndarray:
    """The (n, p) Fortran-ordered matrix of ``plan`` (a read-only view when every column is cached)."""
    if cache is not None and fnames and all(nm in cache for nm in fnames):
        base, j0 = cache[fnames[0]]
        if all(cache[nm][0] is base and cache[nm][1] == j0 + k for k, nm in enumerate(fnames)):
            view = base[:, j0 : j0 + len(fnames)]
            # read-only: the random-effects block shares the fixed-effects matrix's memory
            view.flags.writeable = False
            return view
    X = np.empty((n, len(plan)), order="F")
    memo: dict[str, np.ndarray] = {}
    for j, (name, parts) in enumerate(plan):
        out = X[:, j]
        known = None if cache is None else cache.get(name)
        if known is not None:
            out[:] = known[0][:, known[1]]
            continue
        if not parts:
            out.fill(1.0)
        else:
            first = True
            for part in parts:
                if part[0] == "solo":
                    srcs = part[1]
                    val = _source(srcs[0], data, factors, memo, cache)
                    for s in srcs[1:]:
                        val = val * _source(s, data, factors, memo, cache)
                else:
                    val = _source(part, data, factors, memo, cache)
                if first:
                    np.copyto(out, val)
                    first = False
                else:
                    np.multiply(out, val, out=out)
        if cache is not None:
            cache[name] = (X, j)
    return X

"""The model frame: which columns a formula uses, their checks, and the missing-value policy."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from formulaic import Formula, model_matrix

from memoe.core.formula.parse import FormulaSpec
from memoe.core.frames import to_pandas
from memoe.errors import DataError, DataTypeError, FormulaError, UnknownColumnError

__all__ = ["R_FUNCTIONS", "ModelFrame", "as_data_frame", "build_frame", "check_columns_usable", "formula_variables"]

# R functions memoe evaluates in formulas (see memoe.core.design.fixed), not data columns
R_FUNCTIONS = frozenset({"factor"})


def _factor_variables(factor) -> set[str]:
    """Data variables of one formulaic factor, stateful transforms (``poly(x, 2)``, ``scale(x)``) included.

    formulaic's own ``required_variables`` asks a stateful transform for its variables by evaluating
    the call's arguments without the data, which fails (``NameError``) and leaves the set empty; so
    the expression's names are read here without treating any call as special.
    """
    from formulaic.transforms import TRANSFORMS
    from formulaic.utils.variables import Variable, get_required_variables

    own = {str(v) for v in factor.required_variables}
    expr = getattr(factor, "expr", None)
    kind = getattr(getattr(factor, "eval_method", None), "value", None)
    if own or expr is None or kind != "python":
        return own
    try:
        found = get_required_variables(expr, {})
    except Exception:  # malformed code: formulaic reports it when it evaluates the term
        return own
    # a dotted value name is an R-style column (``poly(x.y, 2)``), not an attribute of ``x``
    return {
        str(v) for v in found
        if Variable.Role.VALUE in v.roles and str(v.root) not in TRANSFORMS and not str(v).startswith("contr.")
    }


def formula_variables(rhs_or_formula: str, where: str) -> list[str]:
    """Variables a formulaic expression reads from the data (functions such as ``np.log`` excluded)."""
    try:
        return list(_formula_variables(rhs_or_formula))
    except _ParseError as exc:
        raise FormulaError(f"cannot parse {where} {rhs_or_formula!r}: {exc.args[0]}") from None


class _ParseError(Exception):
    pass


@functools.lru_cache(maxsize=512)
def _formula_variables(rhs_or_formula: str) -> tuple[str, ...]:
    # a pure function of the string, asked 5-10 times per model (frame, checks, offsets, ...); formulaic's
    # parse costs ~1 ms each, most of a small model's design time
    try:
        f = Formula(rhs_or_formula)
    except Exception as exc:  # formulaic's parse errors are varied; name the part that failed
        raise _ParseError(str(exc)) from None
    names = {str(v) for v in f.required_variables}
    parts = [f.lhs, f.rhs] if hasattr(f, "lhs") else [f]
    for part in parts:
        for term in part:
            for factor in term.factors:
                names |= _factor_variables(factor)
    return tuple(sorted(n for n in names if n not in R_FUNCTIONS))


@dataclass(frozen=True)
class ModelFrame:
    """Rows of the input kept for fitting.

    Attributes
    ----------
    data : pandas.DataFrame
        The used columns of the kept rows (original index preserved).
    row_mask : numpy.ndarray of bool, shape (n_input,)
        Which input rows were kept.
    index : pandas.Index
        The input DataFrame's index (for aligning per-row outputs).
    n_dropped : int
        Rows dropped because a used column was missing.
    dropped_by_column : dict
        Missing-value counts per used column.
    """

    data: pd.DataFrame
    row_mask: np.ndarray
    index: pd.Index
    n_dropped: int
    dropped_by_column: dict[str, int]
    # the used columns of ``data`` as Series, looked up once (empty when rows were dropped): later stages
    # read them instead of paying pandas' column lookup again (~20 us each with pandas 3's str column index)
    columns: dict[str, pd.Series] = field(default_factory=dict, repr=False, compare=False)

    def align(self, values: np.ndarray, name: str) -> pd.Series:
        """Per-row values of the kept rows on the input's index, NaN for dropped rows (R's ``na.exclude``)."""
        if self.n_dropped == 0:
            return pd.Series(values, index=self.index, name=name)
        full = np.full(len(self.index), np.nan)
        full[self.row_mask] = values
        return pd.Series(full, index=self.index, name=name)


def _check_columns(df: pd.DataFrame, names: Iterable[str], what: dict[str, str]) -> None:
    missing = [n for n in names if n not in df.columns]
    if missing:
        shown = ", ".join(repr(c) for c in list(df.columns)[:12])
        more = "" if len(df.columns) <= 12 else f", ... ({len(df.columns)} columns)"
        details = "; ".join(f"{m!r} (used in {what.get(m, 'the formula')})" for m in missing)
        raise UnknownColumnError(f"unknown column {details}; the data have {shown}{more}")


def as_data_frame(data) -> pd.DataFrame:
    """``data`` as a pandas DataFrame, or a :class:`~memoe.errors.DataTypeError` naming what was given.

    Other frame libraries (polars, pyarrow, the interchange protocol) are converted by :mod:`memoe.core.frames`.
    """
    if isinstance(data, pd.DataFrame):
        return data
    converted = to_pandas(data)  # polars, pyarrow, interchange-protocol tables; refuses the rest by name
    if isinstance(converted, pd.DataFrame):
        return converted
    raise DataTypeError(
        f"data must be a pandas DataFrame, got {type(data).__module__}.{type(data).__name__}; "
        "build one with pandas.DataFrame(...)"
    )


def _mixed_types(col: pd.Series) -> list[str]:
    """Kinds of the non-missing values of an object column when it mixes text, numbers and others."""
    values = col.dropna()
    if len(values) == 0:
        return []
    kinds = set()
    for t in values.map(type).unique():
        if issubclass(t, str):
            kinds.add("str")
        elif issubclass(t, (bool, np.bool_)):
            kinds.add("bool")
        elif issubclass(t, (int, float, np.integer, np.floating)):
            kinds.add("number")
        else:
            kinds.add(t.__name__)
    return sorted(kinds) if len(kinds) > 1 else []


def check_columns_usable(
    frame: pd.DataFrame, where: dict[str, str] | None = None, columns: dict[str, pd.Series] | None = None
) -> None:
    """Refuse column types and values that would be silently misread (R's ``model.frame`` checks).

    Complex numbers (their imaginary part would be dropped), object columns mixing types (e.g.
    numbers and text: is it a factor or a covariate?), and infinite values (R: "NA/NaN/Inf in 'x'").
    Missing values are allowed: they are dropped and counted afterwards.

    ``columns`` (name -> Series of ``frame``) spares looking the columns up again.

    Raises
    ------
    DataError
        Naming the column, its dtype and what is accepted.
    """
    where = where or {}
    for name in frame.columns:
        col = columns[name] if columns is not None and name in columns else frame[name]
        place = where.get(name, "the formula")
        kind = col.dtype.kind if isinstance(col.dtype, np.dtype) else ""
        if kind == "c":
            raise DataError(
                f"column {name!r} (used in {place}) is complex (dtype {col.dtype}); only real numbers, "
                "logicals and factors are accepted (use its .real or abs() explicitly)"
            )
        if kind == "O":
            mixed = _mixed_types(col)
            if mixed:
                raise DataError(
                    f"column {name!r} (used in {place}) has dtype object with values of mixed types "
                    f"({', '.join(mixed)}); convert it to numbers or to a categorical (factor) first"
                )
        if kind == "f":
            n_inf = int(np.isinf(col.to_numpy()).sum())
            if n_inf:
                raise DataError(
                    f"column {name!r} (used in {place}) has {n_inf} infinite value{'s' if n_inf > 1 else ''} "
                    "(NA/NaN/Inf in R's terms); only finite values or missing values (dropped) are accepted"
                )


def _check_response_not_predictor(responses: Iterable[str], spec: FormulaSpec) -> None:
    """A response that is also a predictor fits a degenerate model (R's lm warns; lme4 fails later)."""
    rhs: list[tuple[str, list[str]]] = [("the fixed effects", formula_variables(spec.fixed, "the fixed-effects part"))]
    for term in spec.random:
        rhs.append((f"random term {term.text!r}", formula_variables(term.lhs, f"random-effects term {term.text!r}")))
    for expr in responses:
        rvars = formula_variables(expr + " ~ 1", "the response")
        if len(rvars) != 1:
            continue
        v = rvars[0]
        for place, names in rhs:
            if v in names:
                raise FormulaError(
                    f"the response {expr!r} also appears on the right-hand side ({place} use {v!r}); "
                    "a variable cannot explain itself: remove it from the predictors"
                )


def build_frame(
    spec: FormulaSpec, data: pd.DataFrame, extra: Iterable[str] = (), responses: Iterable[str] | None = None
) -> ModelFrame:
    """Select the used columns, check them, and drop rows with missing values.

    Parameters
    ----------
    spec : FormulaSpec
    data : pandas.DataFrame
    extra : iterable of str
        Further columns that must be complete (e.g. gating covariates of a mixture).
    responses : iterable of str, optional
        Response expressions that must not reappear as predictors (default ``[spec.response]``;
        the GLMM passes the two parts of ``cbind(successes, failures)``).

    Raises
    ------
    DataError
        Unknown or duplicated column, unusable column type, infinite values, or no rows left.
    FormulaError
        The response is also a predictor.
    """
    data = as_data_frame(data)
    if len(data) == 0:
        raise DataError("data has 0 rows")
    where: dict[str, str] = {}
    used: list[str] = []

    def add(names: Iterable[str], place: str) -> None:
        for n in names:
            where.setdefault(n, place)
            if n not in used:
                used.append(n)

    add(formula_variables(spec.response + " ~ 1", "the response"), f"the response {spec.response!r}")
    add(formula_variables(spec.fixed, "the fixed-effects part"), "the fixed effects")
    for term in spec.random:
        add(formula_variables(term.lhs, f"random-effects term {term.text!r}"), f"random term {term.text!r}")
        add(term.group_factors, f"the grouping factor of {term.text!r}")
    add(extra, "the weights, offset or gating model")
    _check_columns(data, used, where)
    duplicated = sorted({str(c) for c in data.columns[data.columns.duplicated()] if c in used})
    if duplicated:
        raise DataError(
            f"the data have several columns named {', '.join(repr(c) for c in duplicated)} (used in the formula); "
            "column names must be unique: rename or drop the duplicates"
        )
    _check_response_not_predictor([spec.response] if responses is None else responses, spec)

    pos = [data.columns.get_loc(c) for c in used]
    # the used columns by position (pandas' list __getitem__ costs 0.15-0.3 ms of index machinery); a new
    # frame object either way, so later changes to the caller's frame do not reach the model
    if not all(isinstance(j, int) for j in pos):  # e.g. MultiIndex columns: pandas' own lookup
        frame = data[used]
    elif pos == list(range(data.shape[1])):
        frame = data.copy(deep=False)
    else:
        frame = data.take(pos, axis=1)
    columns = {c: frame[c] for c in used}
    check_columns_usable(frame, where, columns)
    # missing values counted column by column (one n-vector at a time, not an (n, k) frame); the row mask
    # is built only from the columns that have some
    dropped_by_column = {}
    for c in used:
        k = _n_missing(columns[c])
        if k:
            dropped_by_column[c] = k
    if dropped_by_column:
        mask = ~frame[list(dropped_by_column)].isna().any(axis=1).to_numpy()
    else:
        mask = np.ones(len(frame), dtype=bool)
    n_dropped = int((~mask).sum())
    if not mask.any():
        raise DataError(
            f"no rows left after removing {n_dropped} rows with missing values "
            f"(missing per column: {dropped_by_column})"
        )
    return ModelFrame(
        data=frame.loc[mask] if n_dropped else frame,
        row_mask=mask,
        index=data.index,
        n_dropped=n_dropped,
        dropped_by_column=dropped_by_column,
        columns={} if n_dropped else columns,
    )


def _n_missing(col: pd.Series) -> int:
    """Missing values of a column (``isna``), without pandas' generic machinery for the common dtypes."""
    dt = col.dtype
    if isinstance(dt, np.dtype) and dt.kind in "iub":
        return 0
    if isinstance(dt, np.dtype) and dt.kind == "f":
        return int(np.isnan(col.to_numpy()).sum())
    if isinstance(dt, pd.CategoricalDtype):
        return int((col.array.codes < 0).sum())
    return int(col.isna().sum())


def check_response_varies(y: np.ndarray, response: str) -> None:
    """Refuse a constant response: every model would fit it exactly and the scale would be zero.

    Constant up to rounding: the range is within a few ulps of the values themselves.

    Raises
    ------
    DataError
    """
    if len(y) == 0:
        return
    lo, hi = float(y.min()), float(y.max())
    if hi - lo <= 8.0 * np.finfo(float).eps * max(abs(lo), abs(hi)):
        raise DataError(
            f"response {response!r} is constant (value {lo:.10g} in all {len(y)} rows used); nothing to model"
        )


def numeric_response(frame: pd.DataFrame, response: str, columns: dict | None = None) -> np.ndarray:
    """Evaluate the response and insist it is numeric (``columns``: Series already looked up, by name)."""
    if (columns and response in columns) or response in frame.columns:
        col = columns[response] if columns and response in columns else frame[response]
        if col.dtype == bool:
            return col.to_numpy(dtype=float)
        if not pd.api.types.is_numeric_dtype(col):
            raise DataError(
                f"response {response!r} must be numeric, but column {response!r} has dtype {col.dtype} "
                f"(first value {col.iloc[0]!r})"
            )
        return col.to_numpy(dtype=float)

    try:
        mm = model_matrix(f"{response} ~ 1", frame, na_action="ignore")
        lhs = mm.lhs
    except Exception as exc:
        raise DataError(f"cannot evaluate the response {response!r}: {exc}") from None
    if lhs.shape[1] != 1:
        raise DataError(f"response {response!r} must be a single numeric column, it gives {lhs.shape[1]} columns")
    y = np.asarray(lhs, dtype=float).ravel()
    return y

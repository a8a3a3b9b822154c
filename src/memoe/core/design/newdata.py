"""New data for predictions: levels matched by value, refusals that name what is unseen, shared arguments.

Every family's ``predict`` goes through this module so that new data can never silently change
the meaning of a prediction:

* grouping levels and fixed-effect factor levels are matched **by value** (:func:`match_levels`):
  a subject id read back from a CSV file as ``308.0`` or ``"308"`` is the fitted level ``308``;
* a level not seen in the fit is refused (:class:`NewLevelError`) unless the caller asks for
  population-level predictions of those rows with ``allow_new_levels=True`` (lme4's rule); a new
  level of a fixed-effect factor is always refused (R: "factor x has new levels c");
* a missing column is refused by name; a row with a missing predictor gets NaN, a row with an
  infinite predictor gets NaN and a :class:`NonFinitePredictorWarning`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from formulaic import model_matrix

from memoe.core.formula.names import r_column_name
from memoe.core.formula.parse import parse_formula
from memoe.errors import DataError, DataTypeError, MemoeError, MemoeWarning, caller_stacklevel

__all__ = [
    "NewLevelError",
    "NonFinitePredictorWarning",
    "PredictArgumentError",
    "check_type",
    "describe_levels",
    "group_codes",
    "match_levels",
    "nonfinite_rows",
    "parse_re_form",
    "raise_new_levels",
    "replay_frame",
    "require_columns",
    "require_dataframe",
    "warn_nonfinite",
]

# codes returned by match_levels
UNSEEN = -1
MISSING = -2
# how many unseen levels a message lists
SHOW = 5


class NewLevelError(DataError):
    """New data hold a level (of a grouping factor or of a fixed-effect factor) that the fit has not seen."""


class PredictArgumentError(MemoeError, ValueError):
    """An argument of ``predict`` (``re_form``, ``type``, ``kind``, ...) has a value that is not accepted."""


class NonFinitePredictorWarning(MemoeWarning):
    """Rows whose predictors are infinite were predicted as NaN."""


# ---------------------------------------------------------------------------------------------- levels
def _is_missing(values: np.ndarray) -> np.ndarray:
    return np.asarray(pd.isna(values), dtype=bool)


def _numeric_levels(levels: pd.Index) -> np.ndarray | None:
    """The levels as float64 when every level is a number or a string that parses as one, else None.

    ``None`` also when two levels parse to the same number (``"01"`` and ``"1"``): matching by value
    would be ambiguous, so such levels are matched as strings.
    """
    if len(levels) == 0:
        return None
    if levels.dtype.kind in "iufb":
        num = levels.to_numpy(dtype=float)
    else:
        vals = levels.to_numpy(dtype=object)
        if not all(isinstance(v, (str, int, float, np.number, bool, np.bool_)) for v in vals):
            return None
        num = pd.to_numeric(pd.Series(vals, dtype=object), errors="coerce").to_numpy(dtype=float)
    if np.isnan(num).any() or len(np.unique(num)) != len(num):
        return None
    return num


def _as_label(v) -> str:
    """A new value as a level label: strings as they are, whole numbers without a trailing ``.0``."""
    if isinstance(v, str):
        return v
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _match_plain(levels: pd.Index, num_levels: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    missing = _is_missing(values)
    if num_levels is not None:
        if levels.dtype.kind in "iu" and values.dtype.kind in "iu":
            # exact integer match, no float rounding of large ids
            codes = levels.get_indexer(values)
        else:
            if values.dtype.kind in "iufb":
                num = values.astype(float)
            else:
                num = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)
            codes = pd.Index(num_levels).get_indexer(num)
            codes[np.isnan(num)] = UNSEEN
    else:
        labels = pd.Index([str(v) for v in levels.to_numpy(dtype=object)])
        new = np.array([_as_label(v) for v in values.tolist()], dtype=object) if len(values) else values
        codes = labels.get_indexer(new)
    codes = np.asarray(codes, dtype=np.int64)
    codes[missing] = MISSING
    return codes


def match_levels(fit_levels: Sequence | pd.Index, new_values) -> np.ndarray:
    """Codes of new values in the levels of a fit, matching by value across dtypes.

    Parameters
    ----------
    fit_levels : sequence or pandas.Index
        The levels of the fit, in the fit's order.
    new_values : array-like or pandas.Series
        One value per new row (a categorical Series is matched through its categories).

    Returns
    -------
    numpy.ndarray of int64
        Index into ``fit_levels`` of each value; ``-1`` for a value not among the levels, ``-2`` for a
        missing value (NaN, None, pd.NA).

    Notes
    -----
    When every fit level is numeric-like (a number, or a string that parses as a number), values
    are compared as numbers: ``308``, ``308.0``, ``"308"`` and ``np.int32(308)`` are one level.
    Otherwise levels are strings and are compared exactly (nothing is stripped); a number given for
    a string level is written without a trailing ``.0`` before the comparison. Categorical data
    match by their category values, whatever the order of the categories.
    """
    levels = fit_levels if isinstance(fit_levels, pd.Index) else pd.Index(list(fit_levels))
    num_levels = _numeric_levels(levels)
    if isinstance(new_values, pd.Series):
        series = new_values
    else:
        series = pd.Series(np.asarray(new_values) if not isinstance(new_values, pd.Categorical) else new_values)
    if isinstance(series.dtype, pd.CategoricalDtype):
        # match the categories once, then gather by code
        cats = series.cat.categories
        cat_codes = _match_plain(levels, num_levels, cats.to_numpy(dtype=None if cats.dtype.kind in "iufb" else object))
        raw = series.cat.codes.to_numpy()
        return np.where(raw >= 0, cat_codes[np.maximum(raw, 0)] if len(cat_codes) else UNSEEN, MISSING).astype(np.int64)
    values = series.to_numpy(dtype=None if series.dtype.kind in "iufb" else object)
    return _match_plain(levels, num_levels, values)


def describe_levels(values: Iterable, limit: int = SHOW) -> str:
    """``'a', 'b', ... (n in all)`` for a message."""
    vals = list(values)
    shown = ", ".join(repr(_as_label(v)) if not isinstance(v, str) else repr(v) for v in vals[:limit])
    return shown + (f", ... ({len(vals)} in all)" if len(vals) > limit else "")


def _unseen_values(new_values, codes: np.ndarray) -> list:
    vals = pd.Series(np.asarray(new_values, dtype=object))[codes == UNSEEN]
    return list(pd.unique(vals))


def raise_new_levels(what: str, new_values, codes: np.ndarray, fit_levels, hint: str) -> None:
    """Raise :class:`NewLevelError` naming ``what``, up to five unseen levels, their count and the rows."""
    unseen = _unseen_values(new_values, codes)
    nrows = int((codes == UNSEEN).sum())
    raise NewLevelError(
        f"{what} has {len(unseen)} new level{'s' if len(unseen) != 1 else ''} not seen in the fit "
        f"({nrows} row{'s' if nrows != 1 else ''}): {describe_levels(unseen)}; "
        f"the fit's levels are {describe_levels(list(fit_levels))}{hint}"
    )


def group_codes(name: str, fit_levels: pd.Index, data: pd.DataFrame, allow_new_levels: bool) -> np.ndarray:
    """Level of each row of ``data`` in a fitted grouping factor (``a`` or an interaction ``a:b``).

    Parameters
    ----------
    name : str
        lme4's name of the factor; ``"a:b"`` is the interaction of columns ``a`` and ``b``.
    fit_levels : pandas.Index
        The factor's levels in the fit (``"x:y"`` labels for an interaction).
    data : pandas.DataFrame
    allow_new_levels : bool
        False: raise :class:`NewLevelError` for levels not in the fit. True: they get code ``-1``.

    Returns
    -------
    numpy.ndarray of int64
        ``-1`` for new levels (only when allowed), ``-2`` for rows with a missing id.
    """
    columns = name.split(":")
    require_columns(data, columns, f"the grouping factor {name!r}")
    if len(columns) == 1:
        values = data[columns[0]]
        codes = match_levels(fit_levels, values)
    else:
        codes = _interaction_codes(columns, fit_levels, data)
        values = pd.Series(
            [":".join(_as_label(v) for v in row) for row in data[columns].itertuples(index=False)], index=data.index
        ) if (codes == UNSEEN).any() else None
    if not allow_new_levels and (codes == UNSEEN).any():
        raise_new_levels(
            f"grouping factor {name!r}",
            values,
            codes,
            fit_levels,
            "; pass allow_new_levels=True to predict these rows at population level (random effects 0)",
        )
    return codes


def _interaction_codes(columns: list[str], fit_levels: pd.Index, data: pd.DataFrame) -> np.ndarray:
    """Codes of an interaction factor, each component matched by value against the fit's components."""
    labels = [str(v) for v in fit_levels]
    parts = [lab.split(":") for lab in labels]
    if any(len(p) != len(columns) for p in parts):
        # a component label holds ':' itself: only an exact match of the joined labels is safe
        joined = pd.Series(
            [":".join(_as_label(v) for v in row) for row in data[columns].itertuples(index=False)], index=data.index
        )
        codes = match_levels(pd.Index(labels), joined)
        codes[data[columns].isna().any(axis=1).to_numpy()] = MISSING
        return codes
    key = np.zeros(len(data), dtype=np.int64)
    bad = np.zeros(len(data), dtype=bool)
    missing = np.zeros(len(data), dtype=bool)
    level_keys = np.zeros(len(labels), dtype=np.int64)
    for k, col in enumerate(columns):
        comp = pd.Index(pd.unique(pd.Series([p[k] for p in parts])))
        c = match_levels(comp, data[col])
        missing |= c == MISSING
        bad |= c == UNSEEN
        key = key * len(comp) + np.maximum(c, 0)
        level_keys = level_keys * len(comp) + comp.get_indexer([p[k] for p in parts])
    codes = pd.Index(level_keys).get_indexer(key).astype(np.int64)
    codes[bad] = UNSEEN
    codes[missing] = MISSING
    return codes


# ---------------------------------------------------------------------------------------------- frames
def require_dataframe(newdata) -> pd.DataFrame:
    """``newdata`` as a pandas DataFrame: polars and pyarrow tables are converted (as the ``data`` of a fit,
    so predictions on them equal those on the pandas equivalent); anything else raises a
    :class:`~memoe.errors.DataTypeError` (a :class:`DataError`) naming ``newdata``."""
    from memoe.core.frames import is_supported_table, to_pandas

    if not is_supported_table(newdata):
        raise DataTypeError(
            f"newdata must be a pandas DataFrame, got {type(newdata).__name__} "
            "(a polars DataFrame or a pyarrow Table is accepted too)"
        )
    return to_pandas(newdata, "newdata")


def require_columns(data: pd.DataFrame, columns: Iterable[str], where: str) -> None:
    """Raise :class:`DataError` naming the columns of ``columns`` that ``data`` lacks."""
    missing = [c for c in columns if c not in data.columns]
    if missing:
        have = ", ".join(repr(c) for c in list(data.columns)[:12])
        more = "" if len(data.columns) <= 12 else f", ... ({len(data.columns)} columns)"
        raise DataError(
            f"newdata lacks column{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} "
            f"used in {where}; it has {have}{more}"
        )


# context names formulaic evaluates that are not data columns
_NOT_COLUMNS = frozenset({"factor", "C", "np", "numpy", "I", "offset"})
_FACTOR_CALL = re.compile(r"^\s*(?:C|factor)\(\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?:,.*)?\)\s*$", re.DOTALL)


def replay_frame(spec, data: pd.DataFrame, where: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The columns a stored formulaic spec reads, with its factors' levels matched by value.

    Parameters
    ----------
    spec : formulaic ModelSpec
    data : pandas.DataFrame
        New data; not modified.
    where : str
        What the spec encodes, for messages (``"the fixed effects"``).

    Returns
    -------
    frame : pandas.DataFrame
        A copy of the used columns; a factor column is recoded onto the fit's levels (a Categorical
        with the fit's categories) so that formulaic encodes ``"8"`` as the level ``8``.
    missing : numpy.ndarray of bool
        Rows where a factor is missing (formulaic would encode them as the reference level).

    Raises
    ------
    DataError
        A used column is absent.
    NewLevelError
        A factor has a level the fit has not seen.
    """
    used = sorted(str(v) for v in spec.required_variables if str(v) not in _NOT_COLUMNS)
    require_columns(data, used, f"{where} ({spec.formula})")
    frame = data[used].copy()
    for name, dtype in frame.dtypes.items():
        # numpy would drop the imaginary part with only a ComplexWarning: a silently wrong prediction
        if isinstance(dtype, np.dtype) and dtype.kind == "c":
            raise DataError(
                f"column {name!r} of the new data (used in {where}) is complex (dtype {dtype}); "
                "only real numbers, logicals and factors are accepted (use its .real or abs() explicitly)"
            )
    missing = np.zeros(len(data), dtype=bool)
    state = getattr(spec, "encoder_state", {}) or {}
    numeric_exprs = [str(e) for e, (kind, _) in state.items() if getattr(kind, "value", kind) != "categorical"]
    done: set[str] = set()
    for expr, (kind, st) in state.items():
        if getattr(kind, "value", kind) != "categorical" or "categories" not in st:
            continue
        expr = str(expr)
        if expr in frame.columns:
            col = expr
        else:
            m = _FACTOR_CALL.match(expr)
            if m is None or m.group(1) not in frame.columns:
                continue  # a computed factor: formulaic replays it as is
            col = m.group(1)
        levels = pd.Index(list(st["categories"]))
        codes = match_levels(levels, frame[col])
        if (codes == UNSEEN).any():
            shown = f"factor {col!r}" if expr == col else f"factor {expr!r} (column {col!r})"
            raise_new_levels(shown + f" of {where}", frame[col], codes, levels, "")
        missing |= codes == MISSING
        if col in done:
            continue
        done.add(col)
        used_numerically = any(re.search(rf"(?<![\w.]){re.escape(col)}(?![\w.])", e) for e in numeric_exprs)
        if used_numerically:
            # the column also enters as a number: keep it numeric (matching by value parsed it already)
            if not pd.api.types.is_numeric_dtype(frame[col]):
                frame[col] = pd.to_numeric(frame[col], errors="coerce")
        else:
            frame[col] = pd.Categorical.from_codes(np.where(codes >= 0, codes, -1), categories=levels)
    return frame, missing


# ---------------------------------------------------------------------------------------------- rows
def nonfinite_rows(*arrays: np.ndarray | None) -> np.ndarray:
    """Rows where any of the (n,) or (n, k) arrays holds +-inf."""
    bad = None
    for a in arrays:
        if a is None:
            continue
        a = np.asarray(a)
        r = np.isinf(a) if a.ndim == 1 else np.isinf(a).any(axis=1)
        bad = r if bad is None else bad | r
    return bad if bad is not None else np.zeros(0, dtype=bool)


def warn_nonfinite(values: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Set rows with infinite predictors to NaN (in place) and warn how many there are."""
    n = int(bad.sum()) if bad.size else 0
    if n:
        values[bad] = np.nan
        warnings.warn(
            f"{n} row{'s' if n != 1 else ''} of newdata ha{'ve' if n != 1 else 's'} an infinite predictor "
            "value; predicted as NaN",
            NonFinitePredictorWarning,
            stacklevel=caller_stacklevel(),
        )
    return values


# ---------------------------------------------------------------------------------------------- arguments
_POPULATION = frozenset({"~0", "0", "~-1", "-1", "~0+0"})


def parse_re_form(re_form) -> str | None:
    """Normalise ``re_form``: ``"full"`` (all random effects), ``None`` (none) or a formula string.

    Accepted: ``None``, ``"~0"``, ``"0"`` -> ``None`` (population level, lme4's ``re.form = NA``);
    ``"full"`` -> ``"full"`` (lme4's default ``re.form = NULL``); a float NaN / ``pd.NA`` -> ``"full"``
    with a warning, because lme4's ``NA`` means the opposite; any other string is returned stripped
    as a formula of random-effects terms for the caller to resolve.
    """
    if re_form is None:
        return None
    if re_form is pd.NA or (isinstance(re_form, float) and math.isnan(re_form)) or (
        isinstance(re_form, str) and re_form.strip() == "NA"
    ):
        warnings.warn(
            "re_form=NA is read as 'full' (all random effects); note that lme4's re.form = NA means "
            "population level, which is re_form=None here. Pass 'full' or None to be explicit.",
            MemoeWarning,
            stacklevel=caller_stacklevel(),
        )
        return "full"
    if not isinstance(re_form, str):
        raise PredictArgumentError(
            f"re_form must be 'full', None, '~0' or a formula string of random-effects terms, got "
            f"{re_form!r} ({type(re_form).__name__})"
        )
    s = re_form.strip()
    if s == "full":
        return "full"
    if s.replace(" ", "") in _POPULATION:
        return None
    if not s:
        raise PredictArgumentError("re_form is an empty string; use 'full', None or '~0'")
    return s


def check_type(type: str, allowed: tuple[str, ...] = ("response", "link")) -> str:
    """Refuse an unknown ``type`` naming the accepted values."""
    if not isinstance(type, str) or type not in allowed:
        raise PredictArgumentError(f"type must be one of {', '.join(repr(a) for a in allowed)}, got {type!r}")
    return type


def check_allow_new_levels(allow_new_levels) -> bool:
    """``allow_new_levels`` must be a bool (numpy bools too)."""
    if not isinstance(allow_new_levels, (bool, np.bool_)):
        raise PredictArgumentError(
            f"allow_new_levels must be True or False, got {allow_new_levels!r} ({type(allow_new_levels).__name__})"
        )
    return bool(allow_new_levels)


def re_columns(re_form: str | None, design) -> list[np.ndarray]:
    """Which random-effects columns of each factor block enter a prediction.

    Parameters
    ----------
    re_form : str or None
        As returned by :func:`parse_re_form`: ``"full"``, ``None`` or a formula of random-effects
        terms such as ``"~ (1 | Subject)"``, which must be among the fit's terms (lme4's rule).
    design : memoe.core.design.Design
        The fit's design (``blocks`` and the kept rows ``frame.data``).

    Returns
    -------
    list of numpy.ndarray of bool
        One mask per block over the block's columns.

    Raises
    ------
    PredictArgumentError
        The formula has no random-effects term, or a term (or column) that is not in the fit.
    """
    blocks = design.blocks
    if re_form == "full":
        return [np.ones(b.q, dtype=bool) for b in blocks]
    masks = [np.zeros(b.q, dtype=bool) for b in blocks]
    if re_form is None:
        return masks


    text = re_form if "~" in re_form else "~ " + re_form
    try:
        spec = parse_formula("y__ " + text[text.index("~"):])
    except MemoeError as exc:
        raise PredictArgumentError(f"cannot read re_form {re_form!r}: {exc}") from None
    if not spec.random:
        raise PredictArgumentError(
            f"re_form {re_form!r} has no random-effects term; use 'full', None / '~0', or terms such as "
            f"{', '.join(repr(t.text) for t in getattr(design, 'terms', []))}"
        )
    names = [b.factor.name for b in blocks]
    for term in spec.random:
        if term.group not in names:
            raise PredictArgumentError(
                f"re_form term {term.text!r}: grouping factor {term.group!r} is not in the fit (it has {names})"
            )
        b = names.index(term.group)
        try:
            cols = model_matrix(term.lhs, design.frame.data.iloc[:1], output="numpy").model_spec.column_names
        except Exception as exc:  # formulaic's errors vary; name the term
            raise PredictArgumentError(f"cannot read re_form term {term.text!r}: {exc}") from None
        block_cols = list(blocks[b].columns)
        for c in (r_column_name(c) for c in cols):
            if c not in block_cols:
                raise PredictArgumentError(
                    f"re_form term {term.text!r}: column {c!r} is not a random effect of {term.group!r} in the fit "
                    f"(it has {block_cols})"
                )
            masks[b][block_cols.index(c)] = True
    return masks

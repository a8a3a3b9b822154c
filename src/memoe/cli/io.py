"""Reading data files and writing result tables for the command line.

Input: CSV (also ``.tsv``/``.txt`` tab- or comma-separated), Parquet and Feather, chosen by extension
(unknown extensions are read as CSV). Output: CSV, JSON, Parquet or Feather by extension. Every
failure is a :class:`~memoe.errors.DataError` or :class:`~memoe.errors.ArgumentError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memoe.errors import ArgumentError, DataError

__all__ = ["apply_factors", "parse_levels", "read_table", "records", "write_json", "write_table"]

_PARQUET = (".parquet", ".pq")
_FEATHER = (".feather", ".arrow", ".ipc")


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _PARQUET:
        return "parquet"
    if suffix in _FEATHER:
        return "feather"
    if suffix == ".tsv":
        return "tsv"
    return "csv"


def read_table(path: str | os.PathLike, option: str = "--data") -> pd.DataFrame:
    """Read a data file into a DataFrame.

    Parameters
    ----------
    path : str or path-like
    option : str
        The option that named the file, for the messages.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    DataError
        The file does not exist, is a directory, is not readable, or is not a table (binary, ragged
        rows, no columns, no rows).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{option} file '{p}' not found")
    if p.is_dir():
        raise DataError(f"{option} '{p}' is a directory, not a data file (CSV, Parquet or Feather)")
    kind = _kind(p)
    try:
        if kind == "parquet":
            df = pd.read_parquet(p)
        elif kind == "feather":
            df = pd.read_feather(p)
        else:
            df = pd.read_csv(p, sep="\t" if kind == "tsv" else ",")
    except PermissionError:
        raise DataError(f"{option} file '{p}' is not readable (permission denied)") from None
    except ImportError as exc:
        raise DataError(f"reading {kind} file '{p}' needs pyarrow: {exc}") from None
    except UnicodeDecodeError:
        raise DataError(f"{option} '{p}' is not a table: not a text CSV file (binary or not UTF-8)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.replace("Error tokenizing data. C error: ", "")
        raise DataError(f"{option} '{p}' is not a table ({kind.upper()}): {reason}") from None
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError for a non-Parquet file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{option} '{p}' is not a table ({kind}): {reason}") from None
    if kind in ("csv", "tsv") and not isinstance(df.index, pd.RangeIndex):
        # pandas turns the surplus leading fields of rows longer than the header into an index: ragged text
        raise DataError(f"{option} '{p}' is not a table ({kind.upper()}): its rows have more fields than its header "
                        f"({df.shape[1]} column{'s' if df.shape[1] != 1 else ''})")
    if df.shape[1] == 0 or df.shape[0] == 0:
        raise DataError(f"{option} '{p}' is not a table: it has {df.shape[0]} rows and {df.shape[1]} columns")
    return df


def parse_levels(specs: list[str] | None) -> dict[str, list[str]]:
    """``["Diet=1,2,3"]`` -> ``{"Diet": ["1", "2", "3"]}``.

    Raises
    ------
    ArgumentError
        A spec without ``=``, an empty column or level list, a repeated level or column.
    """
    out: dict[str, list[str]] = {}
    for spec in specs or []:
        col, sep, levels = spec.partition("=")
        col = col.strip()
        if not sep or not col:
            raise ArgumentError(f"--levels {spec!r} must be column=level1,level2,...")
        if col in out:
            raise ArgumentError(f"--levels gives column {col!r} twice")
        lv = [s.strip() for s in levels.split(",")]
        if not levels.strip() or any(not s for s in lv):
            raise ArgumentError(f"--levels {spec!r} has an empty level; write column=level1,level2,...")
        dup = sorted({s for s in lv if lv.count(s) > 1})
        if dup:
            raise ArgumentError(f"--levels {spec!r} repeats level(s) {dup}")
        out[col] = lv
    return out


def _as_text(values: pd.Series) -> pd.Series:
    """Values as the strings a user types: 1.0 read from a file with missing values still matches level '1'."""
    def one(v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return str(int(v))
        return str(v)

    return values.map(one)


def apply_factors(df: pd.DataFrame, factors: list[str] | None, levels: dict[str, list[str]]) -> pd.DataFrame:
    """Turn ``--factor`` columns into Categoricals, with ``--levels`` giving the level order.

    A ``--levels`` column is a factor too. Without ``--levels`` the levels are sorted as R's
    ``factor()``: numerically when every value is a number, else as text. String columns not named
    here stay strings (the formula treats them as factors with sorted levels).

    Raises
    ------
    DataError
        An unknown column, or values not among the ``--levels`` given.
    """
    cols = list(dict.fromkeys([*(factors or []), *levels]))
    if not cols:
        return df
    df = df.copy()
    for col in cols:
        option = "--levels" if col in levels else "--factor"
        if col not in df.columns:
            raise DataError(f"{option}: unknown column {col!r}; the data have {', '.join(map(repr, df.columns))}")
        s = df[col]
        if isinstance(s.dtype, pd.CategoricalDtype) and col not in levels:
            continue
        text = _as_text(s.astype(object))
        if col in levels:
            cats = levels[col]
            bad = sorted(set(text.dropna()) - set(cats))
            if bad:
                raise DataError(
                    f"--levels {col}: the data have value(s) {bad[:5]}{' ...' if len(bad) > 5 else ''} "
                    f"not among the levels given {cats}"
                )
        else:
            observed = s.dropna().unique()
            numeric = pd.to_numeric(pd.Series(observed, dtype=object), errors="coerce")
            if len(observed) and not numeric.isna().any():
                order = np.argsort(numeric.to_numpy(dtype=float), kind="stable")
                cats = list(dict.fromkeys(_as_text(pd.Series(observed[order], dtype=object))))
            else:
                cats = sorted(set(text.dropna()))
        df[col] = pd.Categorical(text, categories=cats)
    return df


def _clean(value: Any) -> Any:
    """A JSON-safe scalar: NaN / infinity become null (strict JSON has neither)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value) if not isinstance(value, str) else value


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as JSON-safe dicts (floats at full precision, as Python's ``repr``)."""
    cols = [str(c) for c in df.columns]
    return [dict(zip(cols, (_clean(v) for v in row), strict=True)) for row in df.itertuples(index=False, name=None)]


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as strict JSON (no NaN tokens)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, allow_nan=False)
        fh.write("\n")


def write_table(df: pd.DataFrame, path: str | os.PathLike, option: str = "--output", one_row: bool = False) -> None:
    """Write a table by the path's extension: ``.csv``, ``.tsv``, ``.json``, ``.parquet`` or ``.feather``.

    Parameters
    ----------
    df : pandas.DataFrame
    path : str or path-like
    option : str
        The option that named the file, for the messages.
    one_row : bool
        Write JSON as one object rather than a list of records (glance).

    Raises
    ------
    ArgumentError
        An unsupported extension or a directory that does not exist.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if p.parent and not p.parent.exists():
        raise ArgumentError(f"{option} '{p}': directory '{p.parent}' does not exist")
    try:
        if suffix == ".csv":
            df.to_csv(p, index=False)
        elif suffix == ".tsv":
            df.to_csv(p, index=False, sep="\t")
        elif suffix == ".json":
            rows = records(df)
            write_json(rows[0] if one_row and len(rows) == 1 else rows, p)
        elif suffix in _PARQUET:
            df.to_parquet(p, index=False)
        elif suffix in _FEATHER:
            df.reset_index(drop=True).to_feather(p)
        else:
            raise ArgumentError(f"{option} '{p}': unknown file type {suffix or '(none)'!r}; use .csv, .tsv, .json, "
                                ".parquet or .feather")
    except (PermissionError, IsADirectoryError) as exc:
        raise ArgumentError(f"{option} '{p}' cannot be written: {exc.strerror}") from None

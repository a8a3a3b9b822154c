"""Columns, indexes and DataFrames as JSON specs plus plain numpy arrays (no object arrays, no pickle).

* numeric, boolean and datetime columns with a numpy dtype: the array itself (exact bits);
* categoricals: integer codes (array) and the categories (encoded the same way) with ``ordered``;
* strings, Python objects and other pandas extension dtypes (``str``, ``Int64``, ``boolean``): a JSON
  list of scalars plus the dtype name, restored with that dtype.

Each encoder returns a JSON-able spec and puts its arrays into a shared dict under keys derived
from ``key``; the decoders read them back.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.core.persist.archive import PersistenceError

__all__ = ["decode_frame", "decode_index", "decode_values", "encode_frame", "encode_index", "encode_values"]

# numpy dtype kinds stored as arrays: bool, int, uint, float, complex, timedelta, datetime
_ARRAY_KINDS = "biufcmM"
# dtypes a "json" column may name in a file: pandas resolves a dtype string through its registry of
# extension types, so a file gets only the plain ones a DataFrame column of JSON scalars can have
_JSON_DTYPES = frozenset({
    "object", "str", "string", "string[python]", "string[pyarrow]", "boolean", "Int8", "Int16", "Int32", "Int64",
    "UInt8", "UInt16", "UInt32", "UInt64", "Float32", "Float64",
})


def _json_scalar(v, where: str):
    """A JSON-representable copy of one cell; lists (e.g. the ``empty`` column of a starts table) recurse."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool | int | float | str):
        # NaN stays NaN (Python's JSON writes and reads it): the missing value of str and object columns
        return v
    if isinstance(v, list | tuple):
        return [_json_scalar(x, where) for x in v]
    raise PersistenceError(
        f"{where} holds a value of type {type(v).__name__} ({v!r}); only numbers, strings, booleans, "
        "datetimes with a numpy dtype and categoricals can be saved"
    )


def encode_values(values: pd.Series | pd.Index, key: str, arrays: dict[str, np.ndarray], where: str) -> dict:
    """Spec of a 1-d column or index; arrays go to ``arrays`` under keys starting with ``key``."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        cat = pd.Categorical(values)
        arrays[f"{key}.codes"] = np.asarray(cat.codes)
        return {
            "kind": "categorical",
            "ordered": bool(dtype.ordered),
            "categories": encode_values(dtype.categories, f"{key}.cat", arrays, f"the categories of {where}"),
        }
    if isinstance(dtype, np.dtype) and dtype.kind in _ARRAY_KINDS:
        arrays[key] = np.asarray(values)
        return {"kind": "array"}
    items = [_json_scalar(v, where) for v in values.tolist()]
    return {"kind": "json", "dtype": str(dtype), "values": items}


def decode_values(spec: dict, key: str, arrays: dict[str, np.ndarray]):
    """Array-like (numpy array, Categorical or pandas array) for a spec of :func:`encode_values`."""
    kind = spec["kind"]
    if kind == "array":
        return arrays[key]
    if kind == "categorical":
        categories = _index_of(spec["categories"], f"{key}.cat", arrays)
        dtype = pd.CategoricalDtype(categories=categories, ordered=spec["ordered"])
        return pd.Categorical.from_codes(arrays[f"{key}.codes"], dtype=dtype)
    if kind == "json":
        if spec["dtype"] not in _JSON_DTYPES:
            allowed = sorted(_JSON_DTYPES)
            raise PersistenceError(f"a saved column has the dtype {spec['dtype']!r}; a file may use {allowed}")
        if not isinstance(spec["values"], list):
            raise PersistenceError(f"a saved column's values are a {type(spec['values']).__name__}, not a list")
        if spec["dtype"] == "object":
            # element by element: pandas would turn a list of lists into a 2-d array
            out = np.empty(len(spec["values"]), dtype=object)
            for i, v in enumerate(spec["values"]):
                out[i] = v
            return out
        return pd.array(spec["values"], dtype=spec["dtype"])
    raise PersistenceError(f"unknown column encoding {kind!r}")


def _object_dtype(spec: dict):
    """``object`` for an object column: pandas would otherwise infer its "str" dtype from strings."""
    return object if spec["kind"] == "json" and spec["dtype"] == "object" else None


def _index_of(spec: dict, key: str, arrays: dict[str, np.ndarray], name=None) -> pd.Index:
    """``pd.Index`` of decoded values with the saved dtype."""
    return pd.Index(decode_values(spec, key, arrays), dtype=_object_dtype(spec), name=name)


def encode_index(index: pd.Index, key: str, arrays: dict[str, np.ndarray]) -> dict:
    """Spec of a DataFrame index (RangeIndex compactly, MultiIndex level by level)."""
    if isinstance(index, pd.RangeIndex):
        return {
            "kind": "range", "start": index.start, "stop": index.stop, "step": index.step,
            "name": _json_scalar(index.name, "the index name"),
        }
    if isinstance(index, pd.MultiIndex):
        levels = [
            encode_values(index.get_level_values(i), f"{key}.{i}", arrays, f"index level {i}")
            for i in range(index.nlevels)
        ]
        return {"kind": "multi", "names": [_json_scalar(n, "an index name") for n in index.names], "levels": levels}
    return {
        "kind": "index", "name": _json_scalar(index.name, "the index name"),
        "values": encode_values(index, key, arrays, "the index"),
    }


def decode_index(spec: dict, key: str, arrays: dict[str, np.ndarray]) -> pd.Index:
    """The index described by a spec of :func:`encode_index`."""
    kind = spec["kind"]
    if kind == "range":
        return pd.RangeIndex(spec["start"], spec["stop"], spec["step"], name=spec["name"])
    if kind == "multi":
        levels = [_index_of(s, f"{key}.{i}", arrays) for i, s in enumerate(spec["levels"])]
        return pd.MultiIndex.from_arrays(levels, names=spec["names"])
    if kind == "index":
        return _index_of(spec["values"], key, arrays, name=spec["name"])
    raise PersistenceError(f"unknown index encoding {kind!r}")


def encode_frame(df: pd.DataFrame, key: str, arrays: dict[str, np.ndarray], what: str) -> dict:
    """Spec of a DataFrame: its index and each column by position (names may be any JSON scalar)."""
    if not df.columns.is_unique:
        raise PersistenceError(f"{what} has duplicated column names {list(df.columns)}")
    columns = []
    for i, name in enumerate(df.columns):
        where = f"column {name!r} of {what}"
        spec = encode_values(df.iloc[:, i], f"{key}.{i}", arrays, where)
        columns.append({"name": _json_scalar(name, where), **spec})
    return {"index": encode_index(df.index, f"{key}.index", arrays), "columns": columns}


def decode_frame(spec: dict, key: str, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """The DataFrame described by a spec of :func:`encode_frame`."""
    index = decode_index(spec["index"], f"{key}.index", arrays)
    data = {
        c["name"]: pd.Series(decode_values(c, f"{key}.{i}", arrays), index=index, dtype=_object_dtype(c), copy=False)
        for i, c in enumerate(spec["columns"])
    }
    return pd.DataFrame(data, index=index, columns=[c["name"] for c in spec["columns"]])

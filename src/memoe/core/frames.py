"""The one place where user data enters memoe: pandas, polars and pyarrow tables become pandas.

Every model family calls :func:`to_pandas` on its ``data`` argument, so a polars DataFrame or a pyarrow
Table gives exactly the numbers of the equivalent pandas DataFrame without the user converting it.
Categorical columns keep their level order (polars ``Enum``/``Categorical`` and arrow dictionary columns
become pandas Categoricals; an ordered arrow dictionary stays ordered).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from memoe.errors import DataError, DataTypeError

__all__ = ["is_supported_table", "to_pandas"]


def _module_of(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def is_supported_table(data: Any) -> bool:
    """True for the table types :func:`to_pandas` accepts."""
    return isinstance(data, pd.DataFrame) or _module_of(data) in {"polars", "pyarrow"} or hasattr(data, "__dataframe__")


def to_pandas(data: Any, argument: str = "data") -> pd.DataFrame:
    """The user's table as a pandas DataFrame (the same object when it already is one).

    Parameters
    ----------
    data : pandas.DataFrame, polars.DataFrame, polars.LazyFrame, pyarrow.Table or any object with the
        dataframe interchange protocol (``__dataframe__``).
    argument : str
        The argument's name, for the error message.

    Returns
    -------
    pandas.DataFrame
        Not copied when ``data`` is already pandas; callers never mutate it.

    Raises
    ------
    DataTypeError
        ``data`` is not a table (also an ArgumentTypeError and a DataError) (a dict, list, array, None, ...).
    DataError
        The table cannot be converted (the message says why).
    """
    if isinstance(data, pd.DataFrame):
        return data
    module = _module_of(data)
    try:
        if module == "polars":
            if type(data).__name__ == "LazyFrame":
                data = data.collect()
            if type(data).__name__ == "DataFrame":
                return data.to_pandas()
        elif module == "pyarrow":
            if type(data).__name__ in {"Table", "RecordBatch"}:
                return data.to_pandas()
        elif hasattr(data, "__dataframe__"):
            return pd.api.interchange.from_dataframe(data)
    except Exception as exc:  # the converters raise their own types; the user gets one memoe error
        raise DataError(f"{argument}: cannot convert the {type(data).__name__} to pandas: {exc}") from exc
    raise DataTypeError(
        f"{argument} must be a table (pandas or polars DataFrame, pyarrow Table), got {type(data).__name__}"
    )

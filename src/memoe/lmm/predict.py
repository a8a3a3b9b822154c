"""Predictions from a fitted LMM on new data, replaying the stored formula encodings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.core.design.fixed import evaluate_matrix
from memoe.errors import DataError

__all__ = ["group_codes_for", "predict_lmm"]


def group_codes_for(block, data: pd.DataFrame) -> np.ndarray:
    """Level index of each row of ``data`` in a fitted factor block; -1 for levels not seen in the fit."""
    names = block.factor.name.split(":")
    missing = [c for c in names if c not in data.columns]
    if missing:
        raise DataError(f"new data lack grouping column(s) {missing} of factor {block.factor.name!r}")
    labels = data[names[0]].astype(str)
    for c in names[1:]:
        labels = labels + ":" + data[c].astype(str)
    known = pd.Index([str(v) for v in block.factor.levels])
    return known.get_indexer(labels.to_numpy())


def block_matrix_for(block, data: pd.DataFrame) -> np.ndarray:
    """The raw random-effects columns of a block evaluated on new data."""
    parts = [evaluate_matrix(spec, data)[:, idx] for spec, idx in block.specs]
    return np.column_stack(parts) if len(parts) > 1 else parts[0]


def predict_lmm(fit, newdata: pd.DataFrame | None = None, re_form: str | None = "full") -> pd.Series:
    """Predicted means.

    Parameters
    ----------
    fit : LmmResult
    newdata : pandas.DataFrame, optional
        Defaults to the data of the fit (then ``re_form="full"`` gives the fitted values).
    re_form : {"full", None}
        ``"full"``: ``X beta + Z b`` with the BLUPs (new levels contribute 0, as lme4's
        ``allow.new.levels = TRUE``); ``None``: population level ``X beta`` (lme4's ``re.form = NA``).

    Returns
    -------
    pandas.Series
        Indexed like ``newdata``; NaN where a needed value is missing.
    """
    if re_form not in ("full", None):
        raise ValueError("re_form must be 'full' or None")
    if newdata is None:
        if re_form == "full":
            return fit.fitted
        d = fit.design
        return fit._align(d.X @ fit.fixef.to_numpy(), "predicted")
    if not isinstance(newdata, pd.DataFrame):
        raise DataError(f"newdata must be a pandas DataFrame, got {type(newdata).__name__}")
    d = fit.design
    X = d.fixed.matrix_for(newdata)
    eta = X @ fit.fixef.to_numpy()
    if re_form == "full":
        for blk, b in zip(d.blocks, fit.state.b, strict=True):
            codes = group_codes_for(blk, newdata)
            Z = block_matrix_for(blk, newdata)
            seen = codes >= 0
            contrib = np.zeros(len(newdata))
            contrib[seen] = np.einsum("nq,nq->n", Z[seen], b[codes[seen]])
            eta = eta + contrib
    return pd.Series(eta, index=newdata.index, name="predicted")

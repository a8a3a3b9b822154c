"""Predictions from a fitted GLMM on new data (lme4's ``predict.merMod``), replaying the stored encodings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.core.design.frame import numeric_response
from memoe.errors import DataError, MemoeError
from memoe.lmm.predict import block_matrix_for, group_codes_for

__all__ = ["predict_glmm"]


def _offset_for(fit, newdata: pd.DataFrame, offset) -> np.ndarray:
    """The formula's ``offset(...)`` terms evaluated on ``newdata`` plus an explicit ``offset``."""
    from memoe.glmm.design import _as_expr

    out = np.zeros(len(newdata))
    for expr in fit.model.gdesign.offset_terms:
        out = out + numeric_response(newdata, _as_expr(expr))
    if offset is None:
        return out
    if isinstance(offset, str):
        if offset not in newdata.columns:
            raise DataError(f"offset column {offset!r} is not in newdata")
        return out + newdata[offset].to_numpy(dtype=float)
    arr = np.asarray(offset, dtype=float).ravel()
    if arr.shape not in ((1,), (len(newdata),)):
        raise DataError(f"offset must have one value per row of newdata ({len(newdata)}), got shape {arr.shape}")
    return out + arr


def predict_glmm(fit, newdata: pd.DataFrame | None = None, re_form: str | None = "full", type: str = "response",
                 offset=None) -> pd.Series:
    """Predicted linear predictors or means.

    Parameters
    ----------
    fit : GlmmResult
    newdata : pandas.DataFrame, optional
        Defaults to the data of the fit (with the fit's offset).
    re_form : {"full", None}
        ``"full"``: with the conditional modes (levels not seen in the fit contribute 0, lme4's
        ``allow.new.levels = TRUE``); ``None``: population level (lme4's ``re.form = NA``).
    type : {"response", "link"}
        Mean scale (``linkinv(eta)``) or linear-predictor scale.
    offset : str or array-like, optional
        For ``newdata``: an offset column or values, added to the formula's ``offset(...)`` terms
        (the ``offset=`` argument of the fit is not replayed on new data).

    Returns
    -------
    pandas.Series
        Indexed like ``newdata`` (or the fit's input rows, NaN where a row was dropped).
    """
    if re_form not in ("full", None):
        raise MemoeError("re_form must be 'full' or None")
    if type not in ("response", "link"):
        raise MemoeError("type must be 'response' or 'link'")
    d = fit.design
    beta = fit.fixef.to_numpy()
    if newdata is None:
        problem = fit.model.problem
        eta = fit.state.eta if re_form == "full" else problem.offset + problem.X @ beta
        values = eta if type == "link" else fit.family.linkinv(eta)
        return fit._align(values, "predicted")
    if not isinstance(newdata, pd.DataFrame):
        raise DataError(f"newdata must be a pandas DataFrame, got {newdata.__class__.__name__}")
    eta = d.fixed.matrix_for(newdata) @ beta + _offset_for(fit, newdata, offset)
    if re_form == "full":
        for blk, (_, b) in zip(d.blocks, fit.ranef.items(), strict=True):
            codes = group_codes_for(blk, newdata)
            Z = block_matrix_for(blk, newdata)
            seen = codes >= 0
            contrib = np.zeros(len(newdata))
            contrib[seen] = np.einsum("nq,nq->n", Z[seen], b.to_numpy()[codes[seen]])
            eta = eta + contrib
    values = eta if type == "link" else fit.family.linkinv(eta)
    return pd.Series(values, index=newdata.index, name="predicted")

"""Predictions from a fitted LMM on new data, replaying the stored formula encodings.

The pieces shared with the GLMM and ``lme`` predictions live here too: the random-effects part of the
linear predictor on new data (:func:`random_part`), with grouping levels matched by value and new
levels refused unless ``allow_new_levels=True`` (see :mod:`memoe.core.design.newdata`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from memoe.core.design.fixed import evaluate_matrix
from memoe.core.design.newdata import (
    MISSING,
    check_allow_new_levels,
    check_type,
    group_codes,
    nonfinite_rows,
    parse_re_form,
    re_columns,
    require_dataframe,
    warn_nonfinite,
)
from memoe.core.design.prior import newdata_offset
from memoe.inference.prediction import pls_prediction_variance

__all__ = [
    "block_matrix_for",
    "group_codes_for",
    "predict_interval_lmm",
    "predict_lmm",
    "random_part",
    "subject_model_lmm",
]


def group_codes_for(block, data: pd.DataFrame, allow_new_levels: bool = True) -> np.ndarray:
    """Level index of each row of ``data`` in a fitted factor block, matched by value.

    ``-1`` for levels not seen in the fit (:class:`~memoe.core.design.newdata.NewLevelError` unless
    ``allow_new_levels``), ``-2`` for a missing id.
    """
    return group_codes(block.factor.name, pd.Index(block.factor.levels), data, allow_new_levels)


def block_matrix_for(block, data: pd.DataFrame) -> np.ndarray:
    """The raw random-effects columns of a block evaluated on new data."""
    where = f"the random effects of {block.factor.name!r}"
    parts = [evaluate_matrix(spec, data, where)[:, idx] for spec, idx in block.specs]
    return np.column_stack(parts) if len(parts) > 1 else parts[0]


def random_part(
    blocks: Sequence, b: Sequence[np.ndarray], masks: Sequence[np.ndarray], data: pd.DataFrame | None,
    allow_new_levels: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``Z b`` summed over the selected columns of every block.

    Parameters
    ----------
    blocks : sequence of FactorBlock
        The fit's factor blocks.
    b : sequence of numpy.ndarray, shape (nlevels, q) each
        Conditional modes per block.
    masks : sequence of numpy.ndarray of bool
        Selected columns per block (:func:`memoe.core.design.newdata.re_columns`).
    data : pandas.DataFrame or None
        New data; ``None`` uses the fit's own rows (the stored codes and Z).
    allow_new_levels : bool

    Returns
    -------
    contrib : numpy.ndarray, shape (n,)
        NaN where a needed grouping id or random-effects covariate is missing.
    bad : numpy.ndarray of bool, shape (n,)
        Rows with an infinite random-effects covariate.
    """
    n = blocks[0].Z.shape[0] if data is None else len(data)
    contrib = np.zeros(n)
    bad = np.zeros(n, dtype=bool)
    for blk, bb, mask in zip(blocks, b, masks, strict=True):
        if not mask.any():
            continue  # the grouping column is not needed when its block does not enter
        if data is None:
            codes, Z = blk.factor.codes, blk.Z
        else:
            codes = group_codes_for(blk, data, allow_new_levels)
            Z = block_matrix_for(blk, data)
            bad |= nonfinite_rows(Z[:, mask])
        seen = codes >= 0
        part = np.zeros(n)
        part[seen] = np.einsum("nq,nq->n", Z[seen][:, mask], np.asarray(bb)[codes[seen]][:, mask])
        part[codes == MISSING] = np.nan
        # a missing covariate of a new level still makes the row unknown
        part[~seen & np.isnan(Z[:, mask]).any(axis=1)] = np.nan
        contrib += part
    return contrib, bad


def predict_lmm(
    fit,
    newdata: pd.DataFrame | None = None,
    re_form: str | None = "full",
    type: str = "response",
    allow_new_levels: bool = False,
) -> pd.Series:
    """Predicted means.

    Parameters
    ----------
    fit : LmmResult
    newdata : pandas.DataFrame, optional
        Defaults to the data of the fit (then ``re_form="full"`` gives the fitted values). Grouping
        ids and factor levels are matched by value (``308``, ``308.0`` and ``"308"`` are one level).
    re_form : {"full", None, "~0"} or str
        ``"full"``: ``X beta + Z b`` with the BLUPs (lme4's ``re.form = NULL``); ``None`` or ``"~0"``:
        population level ``X beta`` (lme4's ``re.form = NA``); a formula of some of the fit's
        random-effects terms, e.g. ``"~ (1 | Subject)"``, uses only those.
    type : {"response", "link"}
        The same for a linear mixed model (identity link).
    allow_new_levels : bool
        ``False`` (lme4's default): a grouping level not in the fit raises
        :class:`~memoe.core.design.newdata.NewLevelError`. ``True``: such rows get random effects 0.

    Returns
    -------
    pandas.Series
        Indexed like ``newdata`` (like the fit's input rows when ``newdata`` is None); NaN where a
        needed value is missing or infinite (the latter with a warning).
    """
    rf = parse_re_form(re_form)
    check_type(type)
    allow = check_allow_new_levels(allow_new_levels)
    d = fit.design
    masks = re_columns(rf, d)
    beta = fit.fixef.to_numpy()
    if newdata is None:
        if rf == "full":
            return fit.fitted.rename("predicted")
        eta = d.X @ beta if d.p else np.zeros(d.n)
        if any(m.any() for m in masks):
            eta = eta + random_part(d.blocks, fit.state.b, masks, None, allow)[0]
        # the working rows carry sqrt(w); the offset is part of every prediction (lme4's mu)
        return fit._align(fit._data_scale(eta), "predicted")
    newdata = require_dataframe(newdata)
    X = d.fixed.matrix_for(newdata)
    eta = X @ beta if X.shape[1] else np.zeros(len(newdata))
    # lme4 evaluates the formula's offset(...) terms on new data; the offset= argument is not replayed
    eta = eta + newdata_offset(d, newdata)
    bad = nonfinite_rows(X)
    if any(m.any() for m in masks):
        contrib, bad_z = random_part(d.blocks, fit.state.b, masks, newdata, allow)
        eta = eta + contrib
        bad = bad | bad_z
    return pd.Series(warn_nonfinite(eta, bad), index=newdata.index, name="predicted")


def _rows(fit, newdata: pd.DataFrame | None, allow: bool, masks):
    """Fixed-effects rows, per-block codes and raw Z of the rows to predict.

    A block that does not enter the prediction is not matched (its grouping column may be absent or
    hold new levels, as for the point prediction); its codes are -1 (a new level).
    """
    d = fit.design
    if newdata is None:
        # the data's rows, not the working sqrt(w)-scaled ones
        raw = getattr(d, "raw_rows", lambda v: v)
        X = raw(d.X)
        codes = [blk.factor.codes for blk in d.blocks]
        Z = [raw(blk.Z) for blk in d.blocks]
    else:
        X = d.fixed.matrix_for(newdata)
        n = len(newdata)
        codes = [
            group_codes_for(blk, newdata, allow) if m.any() else np.full(n, -1, dtype=np.int64)
            for blk, m in zip(d.blocks, masks, strict=True)
        ]
        Z = [block_matrix_for(blk, newdata) for blk in d.blocks]
    return X, codes, [np.nan_to_num(z.reshape(len(X), -1)) for z in Z]


def fixed_variance(X: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``x' V x`` per row."""
    if not X.shape[1]:
        return np.zeros(X.shape[0])
    return np.einsum("ij,jk,ik->i", X, V, X)


def prior_variance(Z: np.ndarray, lam: np.ndarray, scale2: float) -> np.ndarray:
    """``scale2 * z' Lambda Lambda' z`` per row: the unconditional variance of ``z' b``."""
    a = Z @ lam
    return scale2 * np.einsum("ij,ij->i", a, a)


def pls_interval_parts(fit, solution, problem, sigma2: float, V_beta: np.ndarray, newdata, rf, allow: bool):
    """Variances of the predicted linear predictor (``se_fit^2``) and what a prediction interval adds.

    Shared by the LMM (``solution`` of the fit) and the GLMM (the weighted PLS problem at the
    estimates, ``sigma2 = 1``).
    """
    d = fit.design
    masks = re_columns(rf, d)
    X, codes, Z = _rows(fit, newdata, allow, masks)
    lambdas = solution.factor.lambdas
    extra = np.zeros(len(X))
    if any(m.any() for m in masks):
        Zm = [z * m[None, :] for z, m in zip(Z, masks, strict=True)]
        var = sigma2 * pls_prediction_variance(solution.factor, problem, np.nan_to_num(X), codes, Zm)
        for k, (c, zm) in enumerate(zip(codes, Zm, strict=True)):
            # a new level's random effect is independent of the data: its prior variance adds exactly
            unseen = c < 0
            if unseen.any():
                var[unseen] += prior_variance(zm[unseen], lambdas[k], sigma2)
    else:
        var = fixed_variance(X, V_beta)
    for k, (z, m) in enumerate(zip(Z, masks, strict=True)):
        if (~m).any():
            # columns left out of the prediction enter a prediction interval by their prior variance
            extra += prior_variance(z * (~m)[None, :], lambdas[k], sigma2)
    return var, extra


def predict_interval_lmm(
    fit,
    newdata: pd.DataFrame | None,
    re_form: str | None,
    interval: str,
    level: float,
    allow_new_levels: bool,
) -> pd.DataFrame:
    """``fit, se_fit, lower, upper`` of an LMM prediction (see :meth:`LmmResult.predict`)."""
    from memoe.inference.prediction import interval_frame

    pred = predict_lmm(fit, newdata, re_form=re_form, allow_new_levels=allow_new_levels)
    rf = parse_re_form(re_form)
    allow = check_allow_new_levels(allow_new_levels)
    var, extra = pls_interval_parts(
        fit, fit.state.solution, fit.model.problem, fit.sigma**2, fit.vcov().to_numpy(), newdata, rf, allow
    )
    if interval == "prediction":
        # a new observation has variance sigma^2 / w: the prior weights of the fitted rows, 1 for new data
        w = fit.design.prior_weights if newdata is None else None
        extra = extra + (fit.sigma**2 if w is None else fit.sigma**2 / w)
    else:
        extra = 0.0 * extra
    if newdata is None:
        var, extra = fit._align(var, "v").to_numpy(), fit._align(extra, "e").to_numpy()
    values = pred.to_numpy(dtype=float)
    se = np.where(np.isfinite(values), np.sqrt(var), np.nan)
    out = interval_frame(values, se, pred.index, level, extra_var=extra)
    out.attrs["interval"] = interval
    return out


def subject_model_lmm(fit):
    """The :class:`~memoe.inference.prediction.SubjectModel` of an LMM with one grouping factor."""
    from memoe.errors import MemoeError
    from memoe.inference.prediction import SubjectModel

    d = fit.design
    if len(d.blocks) != 1:
        names = [b.factor.name for b in d.blocks]
        raise MemoeError(
            f"predict_subject needs a single grouping factor of subjects; this fit has {names}. "
            "Use predict() for crossed or nested designs."
        )
    blk = d.blocks[0]
    lam = fit.relative_factors()[0]
    s2 = fit.sigma**2
    return SubjectModel(
        group=blk.factor.name,
        response=d.spec.response,
        beta=fit.fixef.to_numpy(),
        G=s2 * lam @ lam.T,
        sigma2=s2,
        fixed=d.fixed.matrix_for,
        zmat=lambda frame: block_matrix_for(blk, frame).reshape(len(frame), -1),
        nugget=1.0,
    )

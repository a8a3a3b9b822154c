"""Predictions from a fitted GLMM on new data (lme4's ``predict.merMod``), replaying the stored encodings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.core.design.frame import formula_variables, numeric_response
from memoe.core.design.newdata import (
    check_allow_new_levels,
    check_type,
    nonfinite_rows,
    parse_re_form,
    re_columns,
    require_columns,
    require_dataframe,
    warn_nonfinite,
)
from memoe.core.design.prior import as_expression
from memoe.errors import DataError
from memoe.lmm.predict import random_part

__all__ = ["predict_glmm", "predict_interval_glmm"]


def _offset_for(fit, newdata: pd.DataFrame, offset) -> np.ndarray:
    """The formula's ``offset(...)`` terms evaluated on ``newdata`` plus an explicit ``offset``."""

    out = np.zeros(len(newdata))
    for expr in fit.model.gdesign.offset_terms:
        require_columns(newdata, formula_variables(as_expression(expr) + " ~ 1", "the offset"), f"offset({expr})")
        out = out + numeric_response(newdata, as_expression(expr))
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


def predict_glmm(
    fit,
    newdata: pd.DataFrame | None = None,
    re_form: str | None = "full",
    type: str = "response",
    allow_new_levels: bool = False,
    offset=None,
) -> pd.Series:
    """Predicted linear predictors or means.

    Parameters
    ----------
    fit : GlmmResult
    newdata : pandas.DataFrame, optional
        Defaults to the data of the fit (with the fit's offset). Grouping ids and factor levels are
        matched by value (``308``, ``308.0`` and ``"308"`` are one level).
    re_form : {"full", None, "~0"} or str
        ``"full"``: with the conditional modes (lme4's ``re.form = NULL``); ``None`` or ``"~0"``:
        population level (lme4's ``re.form = NA``); a formula of some of the fit's random-effects
        terms, e.g. ``"~ (1 | herd)"``, uses only those.
    type : {"response", "link"}
        Mean scale (``linkinv(eta)``) or linear-predictor scale.
    allow_new_levels : bool
        ``False`` (lme4's default): a grouping level not in the fit raises
        :class:`~memoe.core.design.newdata.NewLevelError`; ``True``: such rows get random effects 0.
    offset : str or array-like, optional
        For ``newdata``: an offset column or values, added to the formula's ``offset(...)`` terms
        (the ``offset=`` argument of the fit is not replayed on new data).

    Returns
    -------
    pandas.Series
        Indexed like ``newdata`` (or the fit's input rows, NaN where a row was dropped); NaN where a
        needed value is missing or infinite (the latter with a warning).
    """
    rf = parse_re_form(re_form)
    check_type(type)
    allow = check_allow_new_levels(allow_new_levels)
    d = fit.design
    masks = re_columns(rf, d)
    beta = fit.fixef.to_numpy()
    b = [frame.to_numpy() for frame in fit.ranef.values()]
    if newdata is None:
        problem = fit.model.problem
        if rf == "full":
            eta = fit.state.eta
        else:
            eta = problem.offset + problem.X @ beta
            if any(m.any() for m in masks):
                eta = eta + random_part(d.blocks, b, masks, None, allow)[0]
        values = eta if type == "link" else fit.response_family.linkinv(eta)
        return fit._align(values, "predicted")
    newdata = require_dataframe(newdata)
    X = d.fixed.matrix_for(newdata)
    off = _offset_for(fit, newdata, offset)
    eta = X @ beta + off
    bad = nonfinite_rows(X, off)
    if any(m.any() for m in masks):
        contrib, bad_z = random_part(d.blocks, b, masks, newdata, allow)
        eta = eta + contrib
        bad = bad | bad_z
    eta = warn_nonfinite(eta, bad)
    values = eta if type == "link" else fit.response_family.linkinv(eta)
    return pd.Series(values, index=newdata.index, name="predicted")


def predict_interval_glmm(
    fit,
    newdata: pd.DataFrame | None,
    re_form: str | None,
    type: str,
    interval: str,
    level: float,
    allow_new_levels: bool,
    offset=None,
) -> pd.DataFrame:
    """``fit, se_fit, lower, upper`` of a GLMM prediction (see :meth:`GlmmResult.predict`).

    The interval is built on the link scale (normal quantiles) and mapped through the inverse link
    for ``type="response"``; ``se_fit`` is always the link-scale standard error. Population level:
    ``se_fit^2 = x' V_beta x`` with :meth:`vcov` (lme4's Hessian-based default). Conditional: the
    joint prediction-error covariance of ``(beta, b)`` from the weighted PLS factor at the estimates
    (the Laplace approximation's Gaussian; its beta block is :attr:`vcov_rx`). ``"prediction"`` adds
    the prior variance ``z' G z`` of the random effects the prediction leaves out (a new group's mean);
    there is no observation-level term: the interval is for the conditional mean, not for a count or
    a proportion of a new observation.
    """
    from memoe.inference.prediction import interval_frame
    from memoe.lmm.predict import pls_interval_parts

    eta = predict_glmm(fit, newdata, re_form=re_form, type="link", allow_new_levels=allow_new_levels, offset=offset)
    rf = parse_re_form(re_form)
    allow = check_allow_new_levels(allow_new_levels)
    st, problem = fit.state.pirls, fit.model.problem
    # the working response of the last PIRLS step: its weighted PLS system is the Laplace Gaussian
    z = st.eta - problem.offset + (problem.y - st.mu) / problem.family.mu_eta(st.eta)
    pls = problem.wls_problem(st.w, z, with_beta=True)
    sol = pls.solve(fit.state.theta, reml=False)
    var, extra = pls_interval_parts(fit, sol, pls, 1.0, fit.vcov().to_numpy(), newdata, rf, allow)
    if interval == "confidence":
        extra = np.zeros_like(extra)
    if newdata is None:
        var, extra = fit._align(var, "v").to_numpy(), fit._align(extra, "e").to_numpy()
    values = eta.to_numpy(dtype=float)
    se = np.where(np.isfinite(values), np.sqrt(var), np.nan)
    linkinv = None if type == "link" else fit.response_family.linkinv
    out = interval_frame(values, se, eta.index, level, extra_var=extra, linkinv=linkinv)
    out.attrs.update({"interval": interval, "scale": type})
    return out

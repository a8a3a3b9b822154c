"""Predictions of ``gls`` / ``lme`` fits: point predictions, intervals and dynamic (subject) prediction.

The marginal model of a group is ``y_i ~ N(X_i beta, sigma^2 W_i)`` with ``W_i = Z_i D Z_i' + S_i C_i S_i``
(:mod:`memoe.marginal.problem`). Intervals of ``predict`` use, for the conditional (BLUP) predictions of
``lme``, the exact prediction-error variance with the residual structure (Henderson's ``C^-1`` written
per group):

    Var(x'(beta_hat - beta) + z'(b_hat_i - b_i))
        = (x - K_i z)' V_beta (x - K_i z) + sigma^2 z' (D - D Z_i' W_i^-1 Z_i D) z,
    K_i = X_i' W_i^-1 Z_i D,

batched over the groups of one size. :func:`subject_model` describes the fit for
:func:`memoe.inference.prediction.predict_subject` (the conditional normal of future rows given a
subject's observed rows, with the residual correlation and nugget: seed 001's ``E[Omega_i(t) | Y_i]``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.core.design.newdata import (
    PredictArgumentError,
    check_allow_new_levels,
    check_type,
    match_levels,
    nonfinite_rows,
    parse_re_form,
    re_columns,
    require_dataframe,
    warn_nonfinite,
)
from memoe.core.linalg.batched import batched_cholesky, batched_forward_solve
from memoe.errors import DataError, MemoeError
from memoe.lmm.predict import block_matrix_for, fixed_variance, group_codes_for, random_part
from memoe.marginal.arma import ARMA
from memoe.marginal.spatial import Spatial

__all__ = ["predict_interval_marginal", "predict_marginal", "residual_ratios", "subject_model"]


def _resolve_level(re_form, level):
    if level is not None:
        if isinstance(level, bool) or level not in (0, 1):
            raise PredictArgumentError(
                f"level must be 0 (population) or 1 (with the BLUPs), or a coverage strictly between 0 and 1 "
                f"together with interval=, got {level!r}"
            )
        if re_form != "full":
            raise PredictArgumentError("give either level= (nlme's name) or re_form=, not both")
        re_form = None if level == 0 else "full"
    return re_form


def predict_marginal(
    fit,
    newdata: pd.DataFrame | None = None,
    re_form: str | None = "full",
    type: str = "response",
    allow_new_levels: bool = False,
    level: int | None = None,
) -> pd.Series:
    """Point predictions (see :meth:`memoe.marginal.result.MarginalResult.predict`)."""
    re_form = _resolve_level(re_form, level)
    rf = parse_re_form(re_form)
    check_type(type)
    allow = check_allow_new_levels(allow_new_levels)
    d = fit.design
    masks = re_columns(rf, d)
    s = fit._s
    b = [s.b] if d.blocks else []
    use_re = any(m.any() for m in masks)
    if newdata is None:
        if rf == "full":
            return fit.fitted.rename("predicted")
        eta = np.array(s.fitted_marginal, dtype=float)
        if use_re:
            eta = eta + random_part(d.blocks, b, masks, None, allow)[0]
        return fit._align(eta, "predicted")
    newdata = require_dataframe(newdata)
    X = d.fixed.matrix_for(newdata)
    eta = X @ s.beta if X.shape[1] else np.zeros(len(newdata))
    bad = nonfinite_rows(X)
    if use_re:
        contrib, bad_z = random_part(d.blocks, b, masks, newdata, allow)
        eta = eta + contrib
        bad = bad | bad_z
    return pd.Series(warn_nonfinite(eta, bad), index=newdata.index, name="predicted")


def residual_ratios(fit, frame: pd.DataFrame | None) -> np.ndarray:
    """Residual SD ratio (variance function) of each row; the fit's own rows for ``frame=None``."""
    P = fit.model.problem
    if frame is None:
        return np.asarray(fit._s.ratios, dtype=float)
    if P.var is None:
        return np.ones(len(frame))
    _, _, v = P.split(fit._s.params)
    return P.var.ratios_for(v, frame)


def _group_terms(fit) -> tuple[np.ndarray, np.ndarray]:
    """Per group ``K_i = X_i' W_i^-1 Z_i D`` (ngroups, p, q) and ``D - D Z_i' W_i^-1 Z_i D`` (ngroups, q, q)."""
    P = fit.model.problem
    lay = fit.model.layout
    D = fit._s.D
    p, q = fit.design.p, D.shape[0]
    K = np.zeros((lay.ngroups, p, q))
    S = np.zeros((lay.ngroups, q, q))
    for k, (bucket, W) in enumerate(zip(lay.buckets, P.covariances(fit._s.params), strict=True)):
        L = batched_cholesky(np.ascontiguousarray(W))
        M = batched_forward_solve(L, np.ascontiguousarray(P._Z[k] @ D))
        H = batched_forward_solve(L, np.ascontiguousarray(P._XY[k][:, :, :p]))
        K[bucket.groups] = np.swapaxes(H, 1, 2) @ M
        S[bucket.groups] = D[None] - np.swapaxes(M, 1, 2) @ M
    return K, S


def predict_interval_marginal(
    fit,
    newdata: pd.DataFrame | None,
    re_form: str | None,
    interval: str,
    level: float,
    allow_new_levels: bool,
) -> pd.DataFrame:
    """``fit, se_fit, lower, upper`` (see :meth:`memoe.marginal.result.MarginalResult.predict`)."""
    from memoe.inference.prediction import interval_frame

    pred = predict_marginal(fit, newdata, re_form=re_form, allow_new_levels=allow_new_levels)
    rf = parse_re_form(re_form)
    allow = check_allow_new_levels(allow_new_levels)
    d = fit.design
    s2 = fit.sigma**2
    Vb = fit.vcov().to_numpy()
    masks = re_columns(rf, d)
    if newdata is None:
        X = d.X
        codes = d.blocks[0].factor.codes if d.blocks else None
        Z = d.blocks[0].Z if d.blocks else None
    else:
        X = d.fixed.matrix_for(newdata)
        codes = group_codes_for(d.blocks[0], newdata, allow) if d.blocks else None
        Z = block_matrix_for(d.blocks[0], newdata).reshape(len(X), -1) if d.blocks else None
    X = np.nan_to_num(X)
    extra = np.zeros(len(X))
    if d.blocks:
        D = fit._s.D
        Z = np.nan_to_num(Z)
        mask = masks[0]
        Zm, Zu = Z * mask[None, :], Z * (~mask)[None, :]
        if mask.any():
            K, S = _group_terms(fit)
            seen = codes >= 0
            c = np.where(seen, codes, 0)
            a = X - np.where(seen[:, None], np.einsum("npq,nq->np", K[c], Zm), 0.0)
            Sr = np.where(seen[:, None, None], S[c], D[None])
            var = fixed_variance(a, Vb) + s2 * np.einsum("ni,nij,nj->n", Zm, Sr, Zm)
        else:
            var = fixed_variance(X, Vb)
        extra += s2 * np.einsum("ni,ij,nj->n", Zu, D, Zu)
    else:
        var = fixed_variance(X, Vb)
    if interval == "prediction":
        # a new observation's residual: sigma^2 s^2 (its correlation with the observed residuals of the
        # group is what predict_subject uses)
        extra = extra + s2 * residual_ratios(fit, newdata) ** 2
    else:
        extra = np.zeros(len(X))
    if newdata is None:
        var, extra = fit._align(var, "v").to_numpy(), fit._align(extra, "e").to_numpy()
    values = pred.to_numpy(dtype=float)
    se = np.where(np.isfinite(values), np.sqrt(var), np.nan)
    out = interval_frame(values, se, pred.index, level, extra_var=extra)
    out.attrs["interval"] = interval
    return out


def subject_model(fit):
    """The :class:`~memoe.inference.prediction.SubjectModel` of a ``gls`` / ``lme`` fit."""
    from memoe.inference.prediction import SubjectModel
    from memoe.marginal.correlation import AR1, CAR1, CompSymm, Exp, Symm, _visit_codes

    P = fit.model.problem
    lay = fit.model.layout
    d = fit.design
    if lay.name is None:
        raise MemoeError(
            "predict_subject needs groups of correlated rows (subjects): this gls fit has independent residuals "
            "or one group for the whole data, so a history carries no information beyond X beta; use predict()"
        )
    s2 = fit.sigma**2
    cor = P.cor
    coord = corr = None
    nugget = 1.0
    time = None
    if cor is not None:
        st = cor.structure
        _, u, _ = P.split(fit._s.params)
        m = cor.m
        time = getattr(st, "time", None) or getattr(st, "visit", None)
        if isinstance(st, Spatial) and len(st.covariates) > 1:
            raise MemoeError(
                f"predict_subject supports one position column; {type(st).__name__} uses {list(st.covariates)}"
            )
        if isinstance(st, (CAR1, Exp, Spatial)) or (isinstance(st, (AR1, ARMA)) and st.visit is not None):
            col = st.time if isinstance(st, (CAR1, Exp, Spatial)) else st.visit

            def coord(frame, col=col):
                if col not in frame.columns:
                    raise DataError(f"the data have no column {col!r} (the coordinate of the correlation structure)")
                return pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)

        elif isinstance(st, Symm) and st.visit is not None:
            values = _visit_codes(d.frame.data, st.visit, "visit of Symm")[1]

            def coord(frame, col=st.visit, values=values):
                if col not in frame.columns:
                    raise DataError(f"the data have no column {col!r} (the visit of Symm)")
                c = match_levels(values, frame[col]).astype(float)
                if np.any(c == -1):
                    raise DataError(
                        f"column {col!r} (the visit of Symm) has a value that is not a visit of the fit; "
                        f"the visits are {list(values)[:12]}"
                    )
                c[c < 0] = np.nan
                return c

        if isinstance(st, Symm):

            def corr(c, st=st, u=u, m=m):
                if np.nanmax(c) >= m:
                    raise DataError(
                        f"Symm has {m} visit positions; a subject's history and target rows together go beyond them"
                    )
                return st.correlation(u, np.nan_to_num(c).astype(np.int64), m)

        else:

            def corr(c, st=st, u=u, m=m):
                return st.correlation(u, np.abs(c[:, :, None] - c[:, None, :]), m)

        nat = st.natural(u, m)
        if isinstance(st, (Exp, Spatial)) and st.nugget:
            nugget = float(nat[1])
        elif isinstance(st, CompSymm):
            nugget = float(1.0 - nat[0])
        else:
            nugget = 0.0
    blk = d.blocks[0] if d.blocks else None
    return SubjectModel(
        group=lay.name,
        response=d.spec.response,
        beta=fit._s.beta,
        G=s2 * fit._s.D if blk is not None else np.zeros((0, 0)),
        sigma2=s2,
        fixed=d.fixed.matrix_for,
        zmat=None if blk is None else (lambda frame: block_matrix_for(blk, frame).reshape(len(frame), -1)),
        ratios=None if P.var is None else (lambda frame: residual_ratios(fit, frame)),
        coord=coord,
        corr=corr,
        nugget=nugget,
        time=time,
    )

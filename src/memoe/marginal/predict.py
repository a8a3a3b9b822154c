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

__all__ = [
    "check_level_number",
    "level_cross_terms",
    "level_terms",
    "predict_interval_marginal",
    "predict_marginal",
    "residual_ratios",
    "subject_model",
]


def check_level_number(level, nlevels: int) -> int:
    """nlme's grouping level: an int from 0 (population) to ``nlevels`` (innermost)."""
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= int(level) <= max(nlevels, 1):
        top = max(nlevels, 1)
        raise PredictArgumentError(
            f"level must be 0 (population) to {top} (a grouping level: with the BLUPs of levels 1..{top}), "
            f"or a coverage strictly between 0 and 1 together with interval=, got {level!r}"
        )
    return int(level)


def _resolve_level(re_form, level, nlevels: int = 1) -> tuple[str | None, int | None]:
    """(re_form, deepest level kept) from nlme's ``level=`` or lme4's ``re_form=``.

    ``level=0`` is ``re_form=None``; ``level=k >= 1`` keeps the random effects of grouping levels
    1..k (outermost first), ``level=nlevels`` all of them (``re_form="full"``).
    """
    if level is None:
        return re_form, None
    k = check_level_number(level, nlevels)
    if re_form != "full":
        raise PredictArgumentError("give either level= (nlme's name) or re_form=, not both")
    if k == 0:
        return None, None
    return "full", (k if k < nlevels else None)


def _level_masks(fit, rf, keep: int | None) -> list[np.ndarray]:
    """:func:`re_columns` with the blocks of the levels deeper than ``keep`` switched off."""
    masks = re_columns(rf, fit.design)
    if keep is not None:
        for k in fit.model.level_blocks[keep:]:
            masks[k] = np.zeros_like(masks[k])
    return masks


def _blups_by_block(fit) -> list[np.ndarray]:
    """The BLUPs of each factor block in ``design.blocks`` order (the solution stores them by level)."""
    out: list[np.ndarray] = [np.zeros((0, 0))] * len(fit.design.blocks)
    for k, b in zip(fit.model.level_blocks, fit._s.bs, strict=True):
        out[k] = b
    return out


def predict_marginal(
    fit,
    newdata: pd.DataFrame | None = None,
    re_form: str | None = "full",
    type: str = "response",
    allow_new_levels: bool = False,
    level: int | None = None,
) -> pd.Series:
    """Point predictions (see :meth:`memoe.marginal.result.MarginalResult.predict`)."""
    d = fit.design
    re_form, keep = _resolve_level(re_form, level, len(fit.level_names))
    rf = parse_re_form(re_form)
    check_type(type)
    allow = check_allow_new_levels(allow_new_levels)
    masks = _level_masks(fit, rf, keep)
    s = fit._s
    b = _blups_by_block(fit)
    use_re = any(m.any() for m in masks)
    if newdata is None:
        if rf == "full" and keep is None:
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


def level_terms(fit) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per grouping level (outermost first), per group j of the level within outer group i:
    ``K_j = X_i' W_i^-1 Z_j D`` (ngroups, p, q) and ``S_j = D - D Z_j' W_i^-1 Z_j D`` (ngroups, q, q).

    Z_j is the level's design restricted to the rows of group j (zero elsewhere in group i). With
    ``U = M_q * W_i^-1`` (M_q the same-group mask of the level, all ones for the outermost level),
    ``Z_j' W_i^-1 Z_j = sum_{a in j} z_a (U z)_a'`` and ``X_i' W_i^-1 Z_j = sum_{b in j} (W_i^-1 X_i)_b z_b'``:
    row-wise outer products summed per group with one ``bincount`` per entry, batched over the outer
    groups of one size.
    """
    P = fit.model.problem
    lay = fit.model.layout
    p = fit.design.p
    out = []
    sums = [(np.zeros((lv.nlevels, p * lv.q)), np.zeros((lv.nlevels, lv.q * lv.q))) for lv in P.levels]
    for k, (bucket, W) in enumerate(zip(lay.buckets, P.covariances(fit._s.params), strict=True)):
        L = batched_cholesky(np.ascontiguousarray(W))
        Linv = batched_forward_solve(L, np.ascontiguousarray(np.broadcast_to(np.eye(bucket.n), W.shape)))
        Winv = np.swapaxes(Linv, 1, 2) @ Linv
        WX = Winv @ P._XY[k][:, :, :p]  # (G, n, p)
        for q, lv in enumerate(P.levels):
            Z = P._Zq[q][k]  # (G, n, q)
            mask = P._mask[q]
            U = (Winv if mask is None else Winv * mask[k]) @ Z  # (G, n, q)
            codes = lv.codes[bucket.rows].ravel()
            kx = np.einsum("gnp,gnq->gnpq", WX, Z).reshape(-1, p * lv.q)
            zz = np.einsum("gna,gnb->gnab", Z, U).reshape(-1, lv.q * lv.q)
            Ksum, Psum = sums[q]
            for j in range(kx.shape[1]):
                Ksum[:, j] += np.bincount(codes, weights=kx[:, j], minlength=lv.nlevels)
            for j in range(zz.shape[1]):
                Psum[:, j] += np.bincount(codes, weights=zz[:, j], minlength=lv.nlevels)
    for lv, D, (Ksum, Psum) in zip(P.levels, fit._s.Ds, sums, strict=True):
        K = Ksum.reshape(-1, p, lv.q) @ D
        Pm = Psum.reshape(-1, lv.q, lv.q)
        Pm = 0.5 * (Pm + np.swapaxes(Pm, 1, 2))
        out.append((K, D[None] - D[None] @ Pm @ D[None]))
    return out


def level_cross_terms(fit) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Cross terms of nested levels q < r: per group g of level r, ``-D_q Z_a' W_i^-1 Z_g D_r``
    (ngroups_r, q_q, q_r) with a the level-q group containing g, and the code of a (ngroups_r,).

    ``Z_a' W_i^-1 Z_g = sum_{b in g} t_b z_b'`` with ``t = (M_q * W_i^-1) Z_q`` (M_q the level-q
    same-group mask; all ones for the outermost level), summed per group with ``bincount``.
    """
    P = fit.model.problem
    lay = fit.model.layout
    nl = len(P.levels)
    pairs = [(q, r) for r in range(nl) for q in range(r)]
    sums = {(q, r): np.zeros((P.levels[r].nlevels, P.levels[q].q * P.levels[r].q)) for q, r in pairs}
    for k, (bucket, W) in enumerate(zip(lay.buckets, P.covariances(fit._s.params), strict=True)):
        L = batched_cholesky(np.ascontiguousarray(W))
        Linv = batched_forward_solve(L, np.ascontiguousarray(np.broadcast_to(np.eye(bucket.n), W.shape)))
        Winv = np.swapaxes(Linv, 1, 2) @ Linv
        for q, r in pairs:
            mask = P._mask[q]
            t = (Winv if mask is None else Winv * mask[k]) @ P._Zq[q][k]  # (G, n, q_q)
            prod = np.einsum("gna,gnb->gnab", t, P._Zq[r][k]).reshape(-1, P.levels[q].q * P.levels[r].q)
            codes = P.levels[r].codes[bucket.rows].ravel()
            acc = sums[(q, r)]
            for j in range(prod.shape[1]):
                acc[:, j] += np.bincount(codes, weights=prod[:, j], minlength=P.levels[r].nlevels)
    out = {}
    for q, r in pairs:
        lq, lr = P.levels[q], P.levels[r]
        first = np.zeros(lr.nlevels, dtype=np.int64)
        first[lr.codes[::-1]] = np.arange(len(lr.codes))[::-1]
        C = sums[(q, r)].reshape(-1, lq.q, lr.q)
        out[(q, r)] = (-(fit._s.Ds[q][None] @ C @ fit._s.Ds[r][None]), lq.codes[first])
    return out


def _group_terms(fit) -> tuple[np.ndarray, np.ndarray]:
    """Per group ``K_i = X_i' W_i^-1 Z_i D`` (ngroups, p, q) and ``D - D Z_i' W_i^-1 Z_i D`` (ngroups, q, q)."""
    return level_terms(fit)[0]


def predict_interval_marginal(
    fit,
    newdata: pd.DataFrame | None,
    re_form: str | None,
    interval: str,
    level: float,
    allow_new_levels: bool,
    keep: int | None = None,
) -> pd.DataFrame:
    """``fit, se_fit, lower, upper`` (see :meth:`memoe.marginal.result.MarginalResult.predict`).

    ``keep``: with nested levels, the deepest grouping level whose BLUPs enter (None: all).
    """
    from memoe.inference.prediction import interval_frame

    if keep is None:
        pred = predict_marginal(fit, newdata, re_form=re_form, allow_new_levels=allow_new_levels)
    else:
        pred = predict_marginal(fit, newdata, allow_new_levels=allow_new_levels, level=keep)

    rf = parse_re_form(re_form)
    allow = check_allow_new_levels(allow_new_levels)
    d = fit.design
    s2 = fit.sigma**2
    Vb = fit.vcov().to_numpy()
    masks = _level_masks(fit, rf, keep)
    X = d.X if newdata is None else d.fixed.matrix_for(newdata)
    X = np.nan_to_num(X)
    extra = np.zeros(len(X))
    # per grouping level (outermost first): group codes of the rows, the used and the left-out columns of z
    per = []
    for k in fit.model.level_blocks:
        blk = d.blocks[k]
        if newdata is None:
            codes, Z = blk.factor.codes, blk.Z
        else:
            codes = group_codes_for(blk, newdata, allow)
            Z = block_matrix_for(blk, newdata).reshape(len(X), -1)
        Z = np.nan_to_num(Z)
        per.append((codes, Z * masks[k][None, :], Z * (~masks[k])[None, :]))
    Ds = fit._s.Ds
    if any(masks[k].any() for k in fit.model.level_blocks):
        a = X.copy()
        re_var = np.zeros(len(X))
        for (codes, Zm, _), (K, S), D in zip(per, level_terms(fit), Ds, strict=True):
            seen = codes >= 0
            c = np.where(seen, codes, 0)
            a -= np.where(seen[:, None], np.einsum("npq,nq->np", K[c], Zm), 0.0)
            Sr = np.where(seen[:, None, None], S[c], D[None])
            re_var += np.einsum("ni,nij,nj->n", Zm, Sr, Zm)
        # nested levels: the BLUPs of a group and of the groups containing it are correlated given y
        for (q, r), (Cqr, anc) in (level_cross_terms(fit) if len(per) > 1 else {}).items():
            cq, cr = per[q][0], per[r][0]
            both = (cq >= 0) & (cr >= 0)
            wrong = both & (anc[np.maximum(cr, 0)] != cq)
            if np.any(wrong):
                bad = int(np.flatnonzero(wrong)[0])
                label = d.blocks[fit.model.level_blocks[r]].factor.levels[cr[bad]]
                raise DataError(
                    f"row {bad} of newdata names the group {label!r} of {fit.level_names[r]!r}, which lies in another "
                    f"{fit.level_names[q]!r} group than the row's; nested groups must keep their outer group"
                )
            Cr = Cqr[np.where(both, cr, 0)]
            re_var += 2.0 * np.where(both, np.einsum("ni,nij,nj->n", per[q][1], Cr, per[r][1]), 0.0)
        var = fixed_variance(a, Vb) + s2 * re_var
    else:
        var = fixed_variance(X, Vb)
    for (_, _, Zu), D in zip(per, Ds, strict=True):
        # random effects left out of the prediction (re_form, level=): their variance in a new observation
        extra += s2 * np.einsum("ni,ij,nj->n", Zu, D, Zu)
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
    from memoe.marginal.correlation import AR1, CAR1, CompSymm, Symm, _visit_codes
    from memoe.marginal.spatial import Exp

    P = fit.model.problem
    lay = fit.model.layout
    d = fit.design
    if fit.nested:
        raise MemoeError(
            f"predict_subject conditions on a subject's rows under one grouping factor; this lme has nested levels "
            f"{fit.level_names}; use predict(newdata, level=...) for the BLUP predictions at each level"
        )
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

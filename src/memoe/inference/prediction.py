"""Shared mathematics of prediction intervals and dynamic (subject-level) prediction.

Two pieces are family-independent and live here:

* the prediction-error variance of ``x' beta_hat + z' b_hat`` from the blocked Cholesky factor of the
  penalised least-squares (PLS) system (:func:`pls_prediction_variance`). With ``u`` the spherical
  random effects (``b = Lambda u``) the PLS system of ``(u, beta)`` is Henderson's mixed-model
  equations, and ``sigma^2 (L L')^-1`` is the joint covariance of the errors
  ``(u_hat - u, beta_hat - beta)``: for a row with ``a = (Lambda' z, x)``,
  ``Var(x'(beta_hat - beta) + z'(b_hat - b)) = sigma^2 ||L^-1 a||^2``. One forward substitution per row,
  batched: the first factor's blocks are per level, the rest is one dense triangular solve.
* the conditional normal of future rows given the observed rows of a subject
  (:func:`conditional_normal`), batched over subjects that share their numbers of observed and
  future rows (seed 001's ``E[Omega_i(t) | Y_i]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp
from scipy import stats

from memoe.core.design.newdata import PredictArgumentError
from memoe.core.linalg.batched import batched_cholesky, batched_forward_solve
from memoe.core.result import check_level
from memoe.errors import DataError, DataTypeError

__all__ = [
    "INTERVALS",
    "SubjectModel",
    "check_interval",
    "conditional_normal",
    "interval_frame",
    "pls_prediction_variance",
    "predict_subject",
    "subject_patterns",
]

INTERVALS = ("confidence", "prediction")
# rows per chunk of the dense part of the PLS solve (rows x (m_z + p) doubles stay below ~32 MiB)
_ROW_CHUNK_ENTRIES = 2**22
# entries of the (G, n, n) covariance stack processed together in the conditional normal
_SUBJECT_CHUNK_ENTRIES = 2**22


def check_interval(interval, level) -> tuple[str | None, float]:
    """Validate ``interval`` (None, "confidence", "prediction") and ``level``."""
    if interval is not None and (not isinstance(interval, str) or interval not in INTERVALS):
        raise PredictArgumentError(
            f"interval must be None, 'confidence' or 'prediction', got {interval!r}"
        )
    return interval, check_level(level)


def interval_frame(
    fit: np.ndarray,
    se: np.ndarray,
    index: pd.Index,
    level: float,
    extra_var: np.ndarray | float = 0.0,
    linkinv=None,
) -> pd.DataFrame:
    """``fit, se_fit, lower, upper`` with normal quantiles.

    Parameters
    ----------
    fit, se : numpy.ndarray
        Point prediction and its standard error on the linear-predictor scale.
    extra_var : numpy.ndarray or float
        Variance added for a prediction interval (new observation, new group); ``se_fit`` excludes it.
    linkinv : callable, optional
        Inverse link: the interval's ends (and ``fit``) are mapped through it, ``se_fit`` stays on the
        link scale (the ends of a monotone transform of a normal interval keep their coverage).
    """
    z = stats.norm.ppf(0.5 + level / 2.0)
    half = z * np.sqrt(se**2 + extra_var)
    lower, upper = fit - half, fit + half
    if linkinv is not None:
        fit, lower, upper = linkinv(fit), linkinv(lower), linkinv(upper)
        # a decreasing inverse link (e.g. inverse for Gamma) swaps the ends
        lower, upper = np.minimum(lower, upper), np.maximum(lower, upper)
    out = pd.DataFrame({"fit": fit, "se_fit": se, "lower": lower, "upper": upper}, index=index)
    out.attrs.update({"level": level})
    return out


def pls_prediction_variance(
    factor,
    problem,
    X: np.ndarray | None,
    codes: Sequence[np.ndarray],
    Z: Sequence[np.ndarray],
) -> np.ndarray:
    """``||L^-1 a||^2`` per row: the unscaled prediction-error variance of ``x' beta_hat + z' b_hat``.

    Parameters
    ----------
    factor : memoe.lmm.objective.Factorization
        The blocked factor of the PLS system at the estimates (original, unscaled columns).
    problem : memoe.lmm.objective.PLSProblem
        For the block sizes (``q``, ``nlevels``, ``mz``, ``p``, ``rest_offsets``).
    X : numpy.ndarray, shape (n, p), or None
        Fixed-effects rows (None: the fixed effects are not part of the predicted quantity).
    codes : sequence of numpy.ndarray of int, shape (n,) each
        Level of each row per block; rows with a negative code (new level) contribute no random-effect
        term for that block (the caller adds the prior variance).
    Z : sequence of numpy.ndarray, shape (n, q_k) each
        Random-effects columns per block, with the columns that do not enter the prediction zeroed.

    Returns
    -------
    numpy.ndarray, shape (n,)
        Multiply by sigma^2 for the variance.
    """
    f = factor
    n = len(codes[0]) if codes else (0 if X is None else X.shape[0])
    q1, l1 = problem.q[0], problem.nlevels[0]
    mz, p = problem.mz, problem.p
    c1 = np.asarray(codes[0])
    seen1 = c1 >= 0
    a1 = np.where(seen1[:, None], Z[0] @ f.lambdas[0], 0.0)  # rows of z' Lambda_1 = (Lambda_1' z)'
    cc = np.where(seen1, c1, 0)
    L1 = f.L1[cc]
    if q1 == 1:
        w1 = a1 / L1[:, 0, :]
    else:
        w1 = batched_forward_solve(np.ascontiguousarray(L1), a1[:, :, None])[:, :, 0]
    var = np.einsum("ij,ij->i", w1, w1)
    m = mz + p
    if m == 0:
        return var
    Lr = f.Lr[:m, :m] if f.sparse is None else None
    chunk = max(256, _ROW_CHUNK_ENTRIES // max(m, 1))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        rhs = np.zeros((e - s, m))
        if mz:
            for k in range(1, len(problem.q)):
                ck = np.asarray(codes[k][s:e])
                ok = ck >= 0
                ak = np.where(ok[:, None], Z[k][s:e] @ f.lambdas[k], 0.0)
                qk = problem.q[k]
                cols = problem.rest_offsets[k - 1] + np.where(ok, ck, 0)[:, None] * qk + np.arange(qk)[None, :]
                np.add.at(rhs, (np.arange(e - s)[:, None], cols), ak)
            # the Z_rest rows of L below the first block are G': subtract G' w1 (w1 is one level's block)
            rows = np.repeat(np.arange(e - s), q1)
            colz = (cc[s:e, None] * q1 + np.arange(q1)[None, :]).ravel()
            W1 = sp.csr_matrix((w1[s:e].ravel(), (rows, colz)), shape=(e - s, l1 * q1))
            rhs[:, :mz] -= np.asarray((W1 @ f.G).todense()) if sp.issparse(f.G) else W1 @ f.G
        if p:
            if X is not None:
                rhs[:, mz:] = X[s:e]
            # the X rows of L below the first block are C_j'[:p]
            rhs[:, mz:] -= np.einsum("nqp,nq->np", f.C[cc[s:e], :, :p], w1[s:e])
        if f.sparse is not None:
            # sparse path (Lr is the [X y] corner):
            # ||L^-1 r||^2 = r_z' M_zz^-1 r_z + ||Lxy^-1 (r_x - M_xz M_zz^-1 r_z)||^2
            a = f.sparse.solve(rhs[:, :mz].T)
            var[s:e] += np.einsum("ij,ij->j", rhs[:, :mz].T, a)
            if p:
                rx = rhs[:, mz:].T - f.sparse.Mzxy[:, :p].T @ a
                w2 = sla.solve_triangular(f.Lr[:p, :p], rx, lower=True, check_finite=False)
                var[s:e] += np.einsum("ij,ij->j", w2, w2)
            continue
        w2 = sla.solve_triangular(Lr, rhs.T, lower=True, check_finite=False)
        var[s:e] += np.einsum("ij,ij->j", w2, w2)
    return var


def subject_patterns(codes_h: np.ndarray, codes_t: np.ndarray, nsub: int):
    """Group subjects by (number of observed rows, number of target rows).

    Yields ``(rows_h, rows_t, subjects)`` per pattern: ``rows_h`` (G, n_h) and ``rows_t`` (G, n_t)
    are row indices of the history and target frames, in their order within each subject.
    """
    order_h = np.argsort(codes_h, kind="stable")
    order_t = np.argsort(codes_t, kind="stable")
    cnt_h = np.bincount(codes_h, minlength=nsub)
    cnt_t = np.bincount(codes_t, minlength=nsub)
    start_h = np.concatenate(([0], np.cumsum(cnt_h)[:-1]))
    start_t = np.concatenate(([0], np.cumsum(cnt_t)[:-1]))
    key = cnt_h * (int(cnt_t.max(initial=0)) + 1) + cnt_t
    for k in np.unique(key[cnt_t > 0]):
        subj = np.flatnonzero(key == k)
        nh, nt = int(cnt_h[subj[0]]), int(cnt_t[subj[0]])
        rows_h = order_h[start_h[subj][:, None] + np.arange(nh)[None, :]]
        rows_t = order_t[start_t[subj][:, None] + np.arange(nt)[None, :]]
        yield rows_h, rows_t, subj


def conditional_normal(
    resid_h: np.ndarray, cov_fn, nh: int, nt: int, G: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean shift and variance of the target rows given the observed rows, for a stack of subjects.

    Parameters
    ----------
    resid_h : numpy.ndarray, shape (G, n_h)
        Observed ``y - X beta`` of each subject.
    cov_fn : callable
        ``cov_fn(sl)`` returns the joint covariance of ``[history rows, target rows]`` of the subjects
        ``sl`` (a slice), shape (g, n_h + n_t, n_h + n_t) -- built chunk by chunk so that memory stays
        bounded for 10^5 subjects.
    nh, nt, G : int

    Returns
    -------
    shift : numpy.ndarray, shape (G, n_t)
        ``Sigma_th Sigma_hh^-1 (y_h - X_h beta)``.
    var : numpy.ndarray, shape (G, n_t)
        ``diag(Sigma_tt - Sigma_th Sigma_hh^-1 Sigma_ht)``.
    """
    n = nh + nt
    shift = np.zeros((G, nt))
    var = np.empty((G, nt))
    chunk = max(1, _SUBJECT_CHUNK_ENTRIES // (n * n))
    for s in range(0, G, chunk):
        sl = slice(s, min(G, s + chunk))
        S = cov_fn(sl)
        vt = np.diagonal(S[:, nh:, nh:], axis1=1, axis2=2).copy()
        if nh:
            L = batched_cholesky(np.ascontiguousarray(S[:, :nh, :nh]))
            rhs = np.concatenate([S[:, :nh, nh:], resid_h[sl][:, :, None]], axis=2)
            W = batched_forward_solve(L, np.ascontiguousarray(rhs))
            A, r = W[:, :, :nt], W[:, :, nt]
            shift[sl] = np.einsum("gkt,gk->gt", A, r)
            vt -= np.einsum("gkt,gkt->gt", A, A)
        var[sl] = np.maximum(vt, 0.0)  # rounding can leave -1e-17 where the target is an observed row
    return shift, var


# ---------------------------------------------------------------------------------------------- dynamic prediction
@dataclass(frozen=True)
class SubjectModel:
    """What dynamic prediction needs of a fitted Gaussian model with one grouping of subjects.

    The marginal model of a subject's rows is ``y ~ N(X beta, Z G Z' + R)`` with
    ``R = sigma^2 S C S`` (``S`` the variance function's SD ratios, ``C`` the residual correlation;
    ``C = I`` without a structure).

    Attributes
    ----------
    group, response : str
        Grouping (subject) column and response column.
    beta : numpy.ndarray, shape (p,)
    G : numpy.ndarray, shape (q, q)
        Random-effects covariance (absolute scale; (0, 0) without random effects).
    sigma2 : float
    fixed : callable
        ``fixed(frame) -> (n, p)`` fixed-effects rows.
    zmat : callable or None
        ``zmat(frame) -> (n, q)`` random-effects rows.
    ratios : callable or None
        ``ratios(frame) -> (n,)`` residual SD ratios.
    coord : callable or None
        ``coord(frame) -> (n,)`` the residual structure's coordinate of each row (time, visit); None:
        the position of the row within its subject (history rows first, then the target rows).
    corr : callable or None
        ``corr(coords (g, n)) -> (g, n, n)`` residual correlation; None: independent residuals.
    nugget : float
        Fraction of the residual variance that is independent measurement error (1 without a
        correlation structure, nlme's nugget for ``Exp(nugget=True)``, 0 for a serial process alone).
    time : str or None
        Column reported as ``time`` in the output (and set by an array of ``times``).
    """

    group: str
    response: str
    beta: np.ndarray
    G: np.ndarray
    sigma2: float
    fixed: Callable[[pd.DataFrame], np.ndarray]
    zmat: Callable[[pd.DataFrame], np.ndarray] | None = None
    ratios: Callable[[pd.DataFrame], np.ndarray] | None = None
    coord: Callable[[pd.DataFrame], np.ndarray] | None = None
    corr: Callable[[np.ndarray], np.ndarray] | None = None
    nugget: float = 1.0
    time: str | None = None


def _target_frame(history: pd.DataFrame, times, group: str, time: str | None) -> pd.DataFrame:
    """``times`` as a frame of target rows: itself, or each subject's last history row at each time."""
    if isinstance(times, pd.DataFrame):
        if group not in times.columns:
            raise DataError(
                f"times has no column {group!r} (the grouping of the subjects); it has {list(times.columns)[:12]}"
            )
        return times
    if time is None:
        raise PredictArgumentError(
            "times must be a DataFrame of the future rows (with the grouping column and the covariates), or an "
            "array of times together with time='<column>' (the model has no single time variable)"
        )
    try:
        tv = np.asarray(times, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise PredictArgumentError(
            f"times must be a DataFrame or an array of numbers, got {type(times).__name__}"
        ) from exc
    if tv.size == 0 or not np.all(np.isfinite(tv)):
        raise PredictArgumentError("times must hold at least one finite time")
    if time not in history.columns:
        raise DataError(f"history has no column {time!r} (the time variable)")
    last = history.groupby(group, sort=False, dropna=True).tail(1)
    out = last.loc[last.index.repeat(tv.size)].reset_index(drop=True)
    out[time] = np.tile(tv, len(last))
    return out


def _positions(codes: np.ndarray, nsub: int, start: np.ndarray | None = None) -> np.ndarray:
    """0-based position of each row within its subject (data order), plus ``start[subject]``."""
    order = np.argsort(codes, kind="stable")
    cnt = np.bincount(codes, minlength=nsub)
    first = np.concatenate(([0], np.cumsum(cnt)[:-1]))
    pos = np.empty(len(codes), dtype=float)
    pos[order] = np.arange(len(codes)) - np.repeat(first, cnt)
    return pos if start is None else pos + start[codes]


def predict_subject(
    model: SubjectModel,
    history: pd.DataFrame,
    times,
    interval: str = "prediction",
    level: float = 0.95,
    time: str | None = None,
) -> pd.DataFrame:
    """Dynamic prediction: the conditional normal of each subject's target rows given its history.

    See :meth:`memoe.lmm.LmmResult.predict_subject` for the arguments and the output.
    """
    from memoe.core.design.newdata import match_levels

    if interval not in INTERVALS:
        raise PredictArgumentError(f"interval must be 'confidence' or 'prediction', got {interval!r}")
    level = check_level(level)
    if not isinstance(history, pd.DataFrame):
        raise DataTypeError(f"history must be a pandas DataFrame of observed rows, got {type(history).__name__}")
    g, resp = model.group, model.response
    for col, what in ((g, "the grouping of the subjects"), (resp, "the response")):
        if col not in history.columns:
            raise DataError(f"history has no column {col!r} ({what}); it has {list(history.columns)[:12]}")
    time = time if time is not None else model.time
    target = _target_frame(history, times, g, time)
    nt_rows = len(target)
    # history rows that are not complete observations carry no information: dropped
    Xh = model.fixed(history)
    yh = pd.to_numeric(history[resp], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(yh) & np.all(np.isfinite(Xh), axis=1) & history[g].notna().to_numpy()
    Zh = model.zmat(history) if model.zmat is not None else None
    if Zh is not None:
        ok &= np.all(np.isfinite(Zh), axis=1)
    sh = model.ratios(history) if model.ratios is not None else None
    ch = model.coord(history) if model.coord is not None else None
    if ch is not None:
        ok &= np.isfinite(ch)
    levels = pd.Index(pd.unique(history[g][ok]))
    codes_h = match_levels(levels, history[g])[ok]
    Xh, yh = Xh[ok], yh[ok]
    Zh = None if Zh is None else Zh[ok]
    sh = None if sh is None else sh[ok]
    ch = None if ch is None else ch[ok]
    # target rows: subjects with a history keep its code, others (no usable history) get new codes
    codes_t = match_levels(levels, target[g])
    if np.any(codes_t == -2):
        raise DataError(f"times has missing values in {g!r} (the grouping of the subjects)")
    new = codes_t == -1
    nsub = len(levels)
    if new.any():
        extra, uniq = pd.factorize(target[g][new])
        codes_t = codes_t.copy()
        codes_t[new] = nsub + extra
        nsub += len(uniq)
    Xt = model.fixed(target)
    Zt = model.zmat(target) if model.zmat is not None else None
    st = model.ratios(target) if model.ratios is not None else None
    if model.coord is not None:
        ct = model.coord(target)
    else:
        ch = _positions(codes_h, nsub)
        ct = _positions(codes_t, nsub, start=np.bincount(codes_h, minlength=nsub).astype(float))
    mu_t = Xt @ model.beta if Xt.shape[1] else np.zeros(nt_rows)
    resid = yh - (Xh @ model.beta if Xh.shape[1] else 0.0)
    s2 = model.sigma2
    fit = np.full(nt_rows, np.nan)
    var = np.full(nt_rows, np.nan)
    tau2 = np.full(nt_rows, np.nan)
    for rows_h, rows_t, _subj in subject_patterns(codes_h, codes_t, nsub):
        nh, nt = rows_h.shape[1], rows_t.shape[1]
        Gn = rows_h.shape[0]

        def cov_fn(sl, rows_h=rows_h, rows_t=rows_t, nh=nh):
            rh, rt = rows_h[sl], rows_t[sl]
            n = nh + rt.shape[1]
            if sh is None:
                s = np.ones((rh.shape[0], n))
            else:
                s = np.concatenate([sh[rh], st[rt]], axis=1)
            if model.corr is None:
                S = np.zeros((rh.shape[0], n, n))
                idx = np.arange(n)
                S[:, idx, idx] = s2 * s * s
            else:
                c = np.concatenate([ch[rh], ct[rt]], axis=1)
                S = s2 * s[:, :, None] * model.corr(c) * s[:, None, :]
            if Zh is not None and model.G.size:
                Zs = np.concatenate([Zh[rh], Zt[rt]], axis=1)
                S = S + Zs @ model.G @ np.swapaxes(Zs, 1, 2)
            return S

        shift, v = conditional_normal(resid[rows_h], cov_fn, nh, nt, Gn)
        fit[rows_t] = mu_t[rows_t] + shift
        var[rows_t] = v
        sr = np.ones_like(v) if st is None else st[rows_t] ** 2
        tau2[rows_t] = model.nugget * s2 * sr
    bad = ~np.isfinite(fit)
    if interval == "confidence":
        # the latent trajectory mu(t) + Omega_i(t): the measurement error of a new row is left out
        var = np.maximum(var - tau2, 0.0)
    sd = np.sqrt(var)
    sd[bad] = np.nan
    z = stats.norm.ppf(0.5 + level / 2.0)
    out = pd.DataFrame({g: target[g].to_numpy()}, index=target.index)
    if time is not None and time in target.columns:
        out[time] = target[time].to_numpy()
    out["fit"] = fit
    out["sd"] = sd
    out["lower"] = fit - z * sd
    out["upper"] = fit + z * sd
    out.attrs.update({"level": level, "interval": interval})
    return out

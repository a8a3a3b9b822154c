"""Predictions from a MEMoE fit: gate-weighted population means and posterior-weighted subject predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.core.design.fixed import evaluate_matrix
from memoe.core.design.frame import numeric_response
from memoe.errors import DataError
from memoe.moe.data import check_constant_within, gating_matrix, subject_stats
from memoe.moe.experts import GaussianExpert
from memoe.moe.gating import gate_log_probs
from memoe.moe.kernels import logsumexp_rows

__all__ = ["predict_memoe"]

KINDS = ("auto", "population", "subject", "class")


def _new_design(fit, data: pd.DataFrame):
    md = fit.model.mdesign
    X = md.design.fixed.matrix_for(data)
    if md.design.blocks:
        blk = md.design.blocks[0]
        Z = np.column_stack([evaluate_matrix(spec, data)[:, idx] for spec, idx in blk.specs])
    else:
        Z = np.zeros((len(data), 0))
    if md.group not in data.columns:
        raise DataError(f"newdata needs the subject column {md.group!r}")
    codes, labels = pd.factorize(data[md.group], sort=False)
    if np.any(codes < 0):
        raise DataError(f"newdata has missing values in the subject column {md.group!r}")
    first = np.zeros(len(labels), dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    missing = [v for v in md.gating_vars if v not in data.columns]
    if missing:
        raise DataError(f"newdata lacks the gating covariate(s) {missing}")
    check_constant_within(data, codes, pd.Index(labels), md.gating_vars)
    W = gating_matrix(md, data.iloc[first])
    return X, Z, codes.astype(np.int64), pd.Index(labels, name=md.group), W


def predict_memoe(fit, newdata: pd.DataFrame | None = None, kind: str = "auto") -> pd.Series | pd.DataFrame:
    """Predict the response.

    Parameters
    ----------
    fit : MEMoEResult
    newdata : pandas.DataFrame, optional
        Rows to predict (default: the fitted data). Needs the fixed- and random-effects covariates,
        the subject column and the gating covariates.
    kind : {"auto", "population", "subject", "class"}
        ``"population"``: ``sum_k pi_k(w_i) X_ij beta_k``, the gate-weighted mean of a new subject;
        ``"subject"``: ``sum_k tau_ik (X_ij beta_k + Z_ij b_ik)``, posterior-weighted predictions given
        the subject's observed history (rows of ``newdata`` with the response present; rows with a
        missing response, e.g. future visits, are predicted from that history);
        ``"class"``: per-expert population means ``X_ij beta_k`` as a DataFrame (rows x K);
        ``"auto"``: ``"subject"`` when the response column is present, else ``"population"``.

    Returns
    -------
    pandas.Series aligned to the rows of ``newdata`` (DataFrame for ``"class"``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    md = fit.model.mdesign
    data = md.data if newdata is None else newdata
    X, Z, codes, labels, W = _new_design(fit, data)
    params = fit.params
    K = fit.k
    means = X @ params.beta.T  # (n, K)
    response = md.design.spec.response
    if kind == "auto":
        kind = "subject" if response in data.columns else "population"
    if kind == "class":
        return pd.DataFrame(means, index=data.index, columns=pd.Index(range(1, K + 1), name="expert"))
    log_gate = gate_log_probs(W, params.gamma)
    if kind == "population":
        pred = (np.exp(log_gate)[codes] * means).sum(axis=1)
        return pd.Series(pred, index=data.index, name="predicted")
    if response not in data.columns:
        raise DataError(f"subject predictions need the response {response!r} in newdata (the observed history)")
    y = numeric_response(data, response) if data[response].notna().all() else data[response].to_numpy(float)
    seen = np.isfinite(y) & np.all(np.isfinite(X), axis=1) & np.all(np.isfinite(Z), axis=1)
    N = len(labels)
    stats = subject_stats(y[seen], X[seen], Z[seen], codes[seen], N)
    expert = GaussianExpert(stats, None, None)
    problem = fit.model.problem
    ll = np.column_stack([expert.subject_loglik(problem.expert_params(params, k)) for k in range(K)])
    a = log_gate + ll
    tau = np.exp(a - logsumexp_rows(a)[:, None])
    pred = np.zeros(len(data))
    for k in range(K):
        b = expert.blup(problem.expert_params(params, k))  # zero for subjects without history
        pred += tau[codes, k] * (means[:, k] + np.einsum("nq,nq->n", Z, b[codes]))
    return pd.Series(pred, index=data.index, name="predicted")

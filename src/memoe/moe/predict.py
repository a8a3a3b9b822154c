"""Predictions from a MEMoE fit: gate-weighted population means and posterior-weighted subject predictions.

Subjects of new data are matched to the fit's subjects by value (``7``, ``7.0`` and ``"7"`` are one
subject; see :func:`memoe.core.design.newdata.match_levels`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.core.design.fixed import evaluate_matrix
from memoe.core.design.frame import numeric_response
from memoe.core.design.newdata import (
    PredictArgumentError,
    check_allow_new_levels,
    check_type,
    match_levels,
    nonfinite_rows,
    parse_re_form,
    raise_new_levels,
    require_columns,
    require_dataframe,
    warn_nonfinite,
)
from memoe.core.linalg.batched import batched_cholesky, batched_forward_solve
from memoe.moe.data import check_constant_within, gating_matrix, subject_stats
from memoe.moe.experts import GaussianExpert
from memoe.moe.gating import gate_log_probs
from memoe.moe.kernels import congruence, logsumexp_rows
from memoe.moe.laplace import LaplaceExpert
from memoe.moe.structured import history_expert

__all__ = ["fit_blup_condsd", "fit_blups", "fitted_memoe", "predict_memoe"]

KINDS = ("auto", "population", "subject", "class")


def _new_design(fit, data: pd.DataFrame):
    """Expert and gating designs of new data; subjects numbered in order of appearance (-1: missing id)."""
    md = fit.model.mdesign
    require_columns(data, [md.group, *md.gating_vars], "the subject / gating model")
    X = md.design.fixed.matrix_for(data)
    if md.design.blocks:
        blk = md.design.blocks[0]
        where = f"the random effects of {blk.factor.name!r}"
        Z = np.column_stack([evaluate_matrix(spec, data, where)[:, idx] for spec, idx in blk.specs])
    else:
        Z = np.zeros((len(data), 0))
    codes, labels = pd.factorize(data[md.group], sort=False)
    codes = codes.astype(np.int64)
    has_id = codes >= 0
    first = np.zeros(len(labels), dtype=np.int64)
    first[codes[has_id][::-1]] = np.flatnonzero(has_id)[::-1]
    if md.gating_vars and has_id.any():
        check_constant_within(data.loc[has_id], codes[has_id], pd.Index(labels), md.gating_vars)
    W = gating_matrix(md, data.iloc[first]) if len(labels) else np.zeros((0, md.W.shape[1]))
    return X, Z, codes, pd.Index(labels, name=md.group), W


def _nongaussian(fit) -> bool:
    return getattr(fit.model, "response_family", None) is not None


def _inverse_link(fit, type: str):
    """eta -> the prediction scale: the response mean ``g^-1(eta)`` or eta itself (``type="link"``)."""
    if type == "link" or not _nongaussian(fit):
        return lambda eta: eta
    return fit.model.response_family.linkinv


def fit_blups(fit) -> list[np.ndarray]:
    """BLUPs ``b_ik = E(b_i | y_i, z_i = k)`` of the fit's subjects under each expert, (N, q) each.

    Non-Gaussian experts: the conditional modes (glmer's ``ranef``), from the Laplace E-step.
    """
    if _nongaussian(fit):
        return list(fit.model.problem.expert.modes(fit.estimates))
    if getattr(fit.model, "structured", False):  # BLUPs under each expert's residual structure
        problem = fit.model.problem
        return [problem.expert.blup(problem.expert_params(fit.estimates, k)) for k in range(fit.k)]
    md = fit.model.mdesign
    expert = GaussianExpert(md.stats, None, None)
    problem = fit.model.problem
    return [expert.blup(problem.expert_params(fit.estimates, k)) for k in range(fit.k)]


def fit_blup_condsd(fit) -> list[np.ndarray]:
    """Conditional SDs ``sqrt(diag Var(b_i | y_i, z_i = k))`` of the fit's subjects under each expert, (N, q) each.

    Notes
    -----
    ``Var(b_i | y_i, z_i = k) = sigma_k^2 Lambda_k S_ik^-1 Lambda_k'`` (lme4's ``condVar``) with
    ``Lambda_k = L_k / sigma_k`` and ``S_ik = I + Lambda_k' Z_i'Z_i Lambda_k = C C'``; its diagonal is the
    column sums of squares of ``C^-1 Lambda_k'``, batched over subjects.
    """
    if _nongaussian(fit):
        return list(fit.model.problem.expert.conditional_sd(fit.estimates))
    if getattr(fit.model, "structured", False):
        problem = fit.model.problem
        return [problem.expert.blup_condsd(problem.expert_params(fit.estimates, k)) for k in range(fit.k)]
    st = fit.model.mdesign.stats
    idx = np.arange(st.q)
    out = []
    for k in range(fit.k):
        lam = fit.estimates.relative_factor(k)
        S = congruence(st.ZZ, lam)
        S[:, idx, idx] += 1.0
        C = batched_cholesky(S)
        M = batched_forward_solve(C, np.ascontiguousarray(np.broadcast_to(lam.T, (st.N, st.q, st.q))))
        out.append(float(fit.estimates.sigma[k]) * np.sqrt(np.einsum("naj,naj->nj", M, M)))
    return out


def fitted_memoe(fit, type: str = "response") -> pd.Series:
    """Posterior-weighted fitted values ``sum_k tau_ik g^-1(X_ij beta_k + Z_ij b_ik)`` of the fit's rows.

    Indexed like the rows used in the fit; ``predict_memoe(fit, data)`` on the fitted data gives
    the same values. ``type="link"`` weights the linear predictors instead (the same for Gaussian experts).
    """
    md = fit.model.mdesign
    means = md.design.X @ fit.estimates.beta.T
    tau = fit._estep.tau
    inv = _inverse_link(fit, type)
    pred = np.zeros(md.design.n)
    for k, b in enumerate(fit_blups(fit)):
        pred += tau[md.codes, k] * inv(means[:, k] + np.einsum("nq,nq->n", md.Z, b[md.codes]))
    return pd.Series(pred, index=md.data.index, name="predicted")


def _history(fit, y, X, Z, codes, N, seen, log_gate, data=None):
    """Posterior ``tau`` (N, K) and per-expert random effects (list of (N, q)) of new subjects given their
    observed rows ``seen``; subjects without history get zeros (their tau is replaced by the caller)."""
    params = fit.estimates
    K = fit.k
    problem = fit.model.problem
    if not _nongaussian(fit):
        if getattr(fit.model, "structured", False):
            expert = history_expert(fit, data, y, X, Z, codes, N, seen)
        else:
            stats = subject_stats(y[seen], X[seen], Z[seen], codes[seen], N)
            expert = GaussianExpert(stats, None, None)
        ll = np.column_stack([expert.subject_loglik(problem.expert_params(params, k)) for k in range(K)])
        a = log_gate + ll
        tau = np.exp(a - logsumexp_rows(a)[:, None])
        return tau, [expert.blup(problem.expert_params(params, k)) for k in range(K)]
    fam = fit.model.response_family
    ys = y[seen]
    if fam.name == "binomial" and np.any((ys < 0) | (ys > 1)):
        bad = ys[(ys < 0) | (ys > 1)][0]
        raise PredictArgumentError(f"binomial response history in newdata must be in [0, 1], found {bad:g}")
    if fam.name == "poisson" and np.any(ys < 0):
        raise PredictArgumentError("Poisson response history in newdata must be non-negative counts")
    tau = np.exp(log_gate)
    blups = [np.zeros((N, Z.shape[1])) for _ in range(K)]
    has = np.bincount(codes[seen], minlength=N) > 0
    if not has.any():
        return tau, blups
    which = np.flatnonzero(has)
    remap = np.full(N, -1)
    remap[which] = np.arange(len(which))
    c = remap[codes[seen]]
    # the fit's family and nAGQ on the history rows (subjects with history only, renumbered)
    sub = LaplaceExpert(ys, X[seen], Z[seen], c, len(which), fam, None, nAGQ=fit.model.problem.expert.nAGQ)
    ll = sub.loglik_all(params)
    a = log_gate[which] + ll
    tau[which] = np.exp(a - logsumexp_rows(a)[:, None])
    modes = sub.modes(params)
    for k in range(K):
        blups[k][which] = modes[k]
    return tau, blups


def predict_memoe(
    fit,
    newdata: pd.DataFrame | None = None,
    kind: str = "auto",
    re_form: str | None = "full",
    type: str = "response",
    allow_new_levels: bool = False,
) -> pd.Series | pd.DataFrame:
    """Predict the response.

    Parameters
    ----------
    fit : MEMoEResult
    newdata : pandas.DataFrame, optional
        Rows to predict (default: the fitted data). Needs the fixed- and random-effects covariates,
        the subject column and the gating covariates; the response is optional (the observed history).
    kind : {"auto", "population", "subject", "class"}
        ``"auto"`` (default) follows ``re_form``: with ``re_form="full"`` each subject's prediction
        ``sum_k tau_ik (X_ij beta_k + Z_ij b_ik)`` conditions on what is known about the subject: its
        observed responses in ``newdata`` when it has any (rows with a missing response, e.g. future
        visits, are predicted from that history), else the fit's posterior ``tau_ik`` and BLUPs
        ``b_ik`` of that subject; with ``re_form=None`` it is ``"population"``.
        ``"population"``: ``sum_k pi_k(w_i) X_ij beta_k``, the gate-weighted mean of a new subject;
        ``"subject"``: conditional on the history in ``newdata`` only, whether or not the subject was in
        the fit (subjects without history get the gate-weighted mean);
        ``"class"``: per-expert population means ``X_ij beta_k`` as a DataFrame (rows x K).
    re_form : {"full", None, "~0"}
        ``"full"``: with the subject's random effects and posterior (lme4's default); ``None`` /
        ``"~0"``: population level (the same as ``kind="population"``).
    type : {"response", "link"}
        Non-Gaussian experts: ``"response"`` mixes the experts' means ``g^-1(eta_ijk)`` (probabilities,
        rates), ``"link"`` their linear predictors ``eta_ijk``; the same for Gaussian experts (identity
        link). Population level uses ``g^-1(X_ij beta_k)`` per expert, as glmer's ``re.form = NA``.
    allow_new_levels : bool
        For ``kind="auto"``, ``re_form="full"``: a subject not in the fit raises
        :class:`~memoe.core.design.newdata.NewLevelError` unless True; then it is predicted from its
        history in ``newdata`` when it has one, else at population level (lme4's rule).

    Returns
    -------
    pandas.Series aligned to the rows of ``newdata`` (DataFrame for ``"class"``); NaN where a needed
    value (covariate, subject id) is missing or infinite (the latter with a warning).
    """
    if kind not in KINDS:
        raise PredictArgumentError(f"kind must be one of {', '.join(repr(k) for k in KINDS)}, got {kind!r}")
    rf = parse_re_form(re_form)
    if rf not in ("full", None):
        raise PredictArgumentError(
            f"re_form {re_form!r}: a mixture of experts predicts with all of its random effects ('full') or "
            "none (None / '~0')"
        )
    check_type(type)
    allow = check_allow_new_levels(allow_new_levels)
    if rf is None:
        if kind == "subject":
            raise PredictArgumentError("kind='subject' conditions on the random effects; it needs re_form='full'")
        if kind == "auto":
            kind = "population"
    md = fit.model.mdesign
    inv = _inverse_link(fit, type)
    if newdata is None and kind == "auto":
        return fitted_memoe(fit, type)
    data = md.data if newdata is None else require_dataframe(newdata)
    X, Z, codes, labels, W = _new_design(fit, data)
    params = fit.estimates
    K = fit.k
    means = X @ params.beta.T  # (n, K)
    has_id = codes >= 0
    safe = np.where(has_id, codes, 0)
    bad = nonfinite_rows(X, Z, W[safe] if len(W) else None)
    if kind == "class":
        means = inv(means)
        means[~has_id] = np.nan
        means[bad] = np.nan
        warn_nonfinite(np.zeros(len(data)), bad)
        return pd.DataFrame(means, index=data.index, columns=pd.Index(range(1, K + 1), name="expert"))
    log_gate = gate_log_probs(W, params.gamma) if len(W) else np.zeros((0, K))
    gate = np.exp(log_gate)
    population = (gate[safe] * inv(means)).sum(axis=1)
    if kind == "population":
        pred = population
    else:
        response = md.design.spec.response
        if kind == "subject" and response not in data.columns:
            raise PredictArgumentError(
                f"kind='subject' needs the response {response!r} in newdata (the observed history)"
            )
        N = len(labels)
        if response in data.columns:
            col = data[response]
            y = numeric_response(data, response) if col.notna().all() else col.to_numpy(dtype=float)
        else:
            y = np.full(len(data), np.nan)
        seen = has_id & np.isfinite(y) & np.all(np.isfinite(X), axis=1) & np.all(np.isfinite(Z), axis=1)
        has_hist = np.bincount(codes[seen], minlength=N) > 0
        # per new subject: k-th expert's posterior and BLUPs (modes) from its history in newdata
        tau, blups = _history(fit, y, X, Z, codes, N, seen, log_gate, data)  # zero random effects without history
        src = safe
        if kind == "auto":
            fit_idx = match_levels(md.subjects, labels.to_numpy())
            new_subject = fit_idx < 0
            if not allow and new_subject.any():
                raise_new_levels(
                    f"subject factor {md.group!r}",
                    labels.to_numpy(),
                    np.where(new_subject, -1, 0),
                    md.subjects,
                    "; pass allow_new_levels=True to predict new subjects from their history in newdata "
                    "(or at population level when they have none)",
                )
            stored = ~has_hist & ~new_subject
            if stored.any():
                # subjects without history in newdata: the fit's posterior and BLUPs
                fit_tau = fit._estep.tau
                tau = np.where(stored[:, None], fit_tau[np.maximum(fit_idx, 0)], tau)
                fit_b = fit_blups(fit)
                blups = [np.where(stored[:, None], fb[np.maximum(fit_idx, 0)], b) for fb, b in zip(fit_b, blups,
                                                                                                    strict=True)]
            pop_only = ~has_hist & new_subject
            tau = np.where(pop_only[:, None], gate, tau)
        pred = np.zeros(len(data))
        for k in range(K):
            pred += tau[src, k] * inv(means[:, k] + np.einsum("nq,nq->n", Z, blups[k][src]))
    pred = np.array(pred, dtype=float)
    pred[~has_id] = np.nan
    return pd.Series(warn_nonfinite(pred, bad), index=data.index, name="predicted")

"""Per-partition work of the Dask MEMoE (memoe.dask.moe): order-free hashed starts, each partition's
subject statistics and gating rows (:class:`MoEPart`) and the functions the workers run on them
(ECM sums, scores, posteriors, predictions). Kept apart from the client loop so the result class
(memoe.dask.moe_result) can use them without importing the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.errors import DataError
from memoe.moe.ecm import ecm_sums
from memoe.moe.params import MoEParams
from memoe.moe.structure import Structure

__all__ = ["MoEPart", "hash_tau", "hash_uniforms", "part_moe"]

_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------- starts
def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic on arrays, no overflow warnings)."""
    x = x.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def hash_uniforms(subjects: pd.Index, seed: int, start: int, K: int) -> np.ndarray:
    """Uniforms in (0, 1), shape (N, K), a function of (seed, start, subject id, k) only.

    The same subject gets the same numbers whatever partition it lives in and in whatever row order
    the data arrive, which makes the random starts of a Dask fit reproducible across partitionings.
    """
    h = pd.util.hash_pandas_object(pd.Series(subjects), index=False).to_numpy().astype(np.uint64)
    out = np.empty((len(h), K))
    for k in range(K):
        salt = np.array([(seed * 0x9E3779B97F4A7C15 + start * 0x632BE59BD9B4E019 + k * 0xD6E8FEB86659FD93) & _MASK64],
                        dtype=np.uint64)
        x = _splitmix(h ^ _splitmix(salt))
        out[:, k] = ((x >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return out


def hash_tau(subjects: pd.Index, seed: int, start: int, K: int) -> np.ndarray:
    """Flat-Dirichlet soft assignments (as :func:`memoe.moe.init.random_tau`) from :func:`hash_uniforms`."""
    e = -np.log(hash_uniforms(subjects, seed, start, K))  # exponentials; normalised they are Dirichlet(1)
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------- control
@dataclass
class MoEPart:
    """One partition's subjects as a small in-memory mixture problem (lives on a worker).

    Attributes
    ----------
    problem : MoEProblem or None
        The partition's subject statistics and gating rows (None without complete rows).
    subjects : pandas.Index
        The partition's subjects (sorted), in the order of the statistics.
    n, n_dropped : int
        Rows used and rows dropped for a missing value.
    gram : numpy.ndarray
        ``[X y]'[X y]`` over the partition's rows (aliasing check, residual SD floor).
    """

    problem: object
    subjects: pd.Index
    n: int
    n_dropped: int
    gram: np.ndarray


def part_moe(pdf: pd.DataFrame, design, gate, structure: Structure | None, kept: bool) -> MoEPart:
    """Build a partition's :class:`MoEPart` from its rows (``structure=None``: only the counts and Gram)."""
    from memoe.core.design.fixed import evaluate_matrix
    from memoe.dask.spec import partition_arrays
    from memoe.moe.data import check_constant_within, subject_stats
    from memoe.moe.experts import GaussianExpert
    from memoe.moe.problem import MoEProblem

    n_in = len(pdf)
    gvars = gate["vars"]
    if gvars:  # rows without a gating covariate are dropped first, as build_moe_design does
        pdf = pdf.loc[pdf[gvars].notna().all(axis=1)]
    n_gate_dropped = n_in - len(pdf)
    y, X, Z, codes, levels, n_dropped, index = partition_arrays(pdf, design, kept=kept)
    p = X.shape[1]
    XY = np.column_stack([X, y]) if len(y) else np.zeros((0, p + 1))
    gram = XY.T @ XY
    if len(y) == 0:
        return MoEPart(None, pd.Index([]), 0, n_dropped + n_gate_dropped, gram)
    N = len(levels)
    frame = pdf.loc[index]
    check_constant_within(frame, codes, levels, gvars)
    if structure is None:
        return MoEPart(None, pd.Index(levels), len(y), n_dropped + n_gate_dropped, gram)
    first = np.zeros(N, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]  # first row of each subject
    if gate["spec"] is None:
        W = np.ones((N, 1))
    else:
        W = evaluate_matrix(gate["spec"], _with_levels(frame.iloc[first], gate["levels"]), "the gating design")
    stats = subject_stats(y, X, Z, codes, N)
    expert = GaussianExpert(stats, None, design.theta_map)
    return MoEPart(MoEProblem(W, expert, structure), pd.Index(levels, name=design.group), len(y),
                   n_dropped + n_gate_dropped, gram)


def _with_levels(frame: pd.DataFrame, levels: dict) -> pd.DataFrame:
    if not levels:
        return frame
    frame = frame.copy()
    for c, (lv, ordered) in levels.items():
        frame[c] = pd.Categorical(frame[c], categories=lv, ordered=ordered)
    return frame


def part_counts(s: MoEPart) -> np.ndarray:
    return np.array([s.n, s.n_dropped, len(s.subjects)], dtype=np.int64)


def part_gram(s: MoEPart) -> np.ndarray:
    return s.gram


def part_ww(s: MoEPart) -> np.ndarray:
    W = s.problem.W if s.problem is not None else None
    return W.T @ W if W is not None else None


def _single_thread(fn):
    from memoe.core.linalg.threads import blas_threads
    from memoe.dask.stats import tune_malloc

    tune_malloc()
    # one BLAS thread: worker processes share the cores (see memoe.dask.stats)
    with blas_threads(1):
        return fn()


def part_init(s: MoEPart, seed: int, starts: list[int], K: int, size: int) -> np.ndarray:
    """Weighted least-squares sums (``ecm_sums(moments=False)``) at each start's hashed assignments, (S, size)."""
    if s.problem is None:
        return np.zeros((len(starts), size))
    pr = s.problem

    def run():
        out = np.empty((len(starts), size))
        zero = np.zeros(pr.N)
        for j, st in enumerate(starts):  # a handful of starts; each a batched pass over the subjects
            tau = hash_tau(s.subjects, seed, st, K)
            out[j] = ecm_sums(pr.expert, pr.W, None, tau, np.log(np.full_like(tau, 1.0 / K)), zero, moments=False)
        return out

    return _single_thread(run)


def part_ecm(s: MoEPart, params_list: list[MoEParams], size: int) -> np.ndarray:
    """E-step and ECM sums of the partition at every parameter value in ``params_list``, shape (S, size)."""
    if s.problem is None:
        return np.zeros((len(params_list), size))
    pr = s.problem

    def run():
        out = np.empty((len(params_list), size))
        for j, params in enumerate(params_list):
            e = pr.e_step(params)
            out[j] = ecm_sums(pr.expert, pr.W, params, e.tau, e.log_gate, e.subject_loglik)
        return out

    return _single_thread(run)


def _steps(psi: np.ndarray, rel: float) -> np.ndarray:
    """Central-difference steps of :func:`memoe.moe.inference._jacobian` (``rel * max(1, |x|)``)."""
    return rel * np.maximum(1.0, np.abs(psi))


def part_newton(s: MoEPart, psi: np.ndarray, rel: float, central: bool = True) -> np.ndarray:
    """``[loglik, score (d), scores at psi +- h_j e_j (2d x d), sum_i s_i s_i' (d x d)]`` of the partition, flat.

    ``central=False``: forward differences only (the rows at ``psi - h_j e_j`` hold the score at psi), half
    the cost, for the Newton steps' information, where O(h) accuracy is enough.
    """
    d = len(psi)
    if s.problem is None:
        return np.zeros(1 + d + 2 * d * d + d * d)
    pr = s.problem

    def run():
        st = pr.structure
        params = st.unpack(psi)
        e = pr.e_step(params)
        S = pr.subject_scores(params, e)
        g = S.sum(axis=0)
        h = _steps(psi, rel)
        pert = np.empty((2 * d, d))
        for j in range(d):  # the information's differences, all in this one pass
            for sgn, row in ((1.0, 2 * j), (-1.0, 2 * j + 1)):
                if sgn < 0 and not central:
                    pert[row] = g
                    continue
                x = psi.copy()
                x[j] += sgn * h[j]
                pert[row] = pr.score_psi(x)
        return np.concatenate([[e.loglik], g, pert.ravel(), (S.T @ S).ravel()])

    return _single_thread(run)


def part_score(s: MoEPart, psi: np.ndarray) -> np.ndarray:
    """``[loglik, total score (d)]`` of the partition at ``psi``."""
    if s.problem is None:
        return np.zeros(1 + len(psi))

    def run():
        ll, g = s.problem.loglik_and_score(psi)
        return np.concatenate([[ll], g])

    return _single_thread(run)


def part_summary(s: MoEPart, params: MoEParams) -> np.ndarray:
    """``[mass (K), sum tau log tau, sum max_k tau (K: by MAP class), MAP counts (K)]`` of the partition."""
    K = params.K
    if s.problem is None:
        return np.zeros(3 * K + 1)
    e = s.problem.e_step(params)
    tau = e.tau
    cls = tau.argmax(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = float(np.sum(np.where(tau > 0, tau * np.log(tau), 0.0)))
    return np.concatenate([tau.sum(axis=0), [ent], np.bincount(cls, weights=tau.max(axis=1), minlength=K),
                           np.bincount(cls, minlength=K).astype(float)])


def part_posterior(s: MoEPart, params: MoEParams, what: str, group: str) -> pd.DataFrame:
    """Per-subject frame of the partition: posterior, prior, MAP class or each expert's BLUPs."""
    K = params.K
    cols = list(range(1, K + 1))
    if s.problem is None:
        return _empty_posterior(what, K, group, s)
    pr = s.problem
    idx = pd.Index(s.subjects, name=group)
    if what == "blup":
        from memoe.moe.ecm import expert_moments

        blocks = []
        for k in range(K):
            b, _ = expert_moments(pr.expert, params.beta[k], params.L[k], params.sigma[k])
            blocks.append(b)
        return pd.DataFrame(np.hstack(blocks), index=idx)
    e = pr.e_step(params)
    if what == "posterior":
        return pd.DataFrame(e.tau, index=idx, columns=cols)
    if what == "prior":
        return pd.DataFrame(np.exp(e.log_gate), index=idx, columns=cols)
    return pd.DataFrame({"expert": e.tau.argmax(axis=1) + 1}, index=idx)


def _empty_posterior(what: str, K: int, group: str, s: MoEPart) -> pd.DataFrame:
    idx = pd.Index([], name=group)
    if what == "class":
        return pd.DataFrame({"expert": pd.Series(dtype=np.int64)}, index=idx)
    return pd.DataFrame({c: pd.Series(dtype=float) for c in range(1, K + 1)}, index=idx)


def part_predict(pdf: pd.DataFrame, s: MoEPart, design, gate, params: MoEParams, level: str) -> pd.Series:
    """Fitted values of the partition's rows: posterior-weighted expert means (``level="subject"``: with the
    experts' BLUPs, as :meth:`MEMoEResult.fitted`; ``"population"``: the gate-weighted fixed part)."""
    from memoe.dask.spec import partition_arrays
    from memoe.moe.ecm import expert_moments

    out = pd.Series(np.nan, index=pdf.index, name="fitted")
    gvars = gate["vars"]
    sub = pdf.loc[pdf[gvars].notna().all(axis=1)] if gvars else pdf
    y, X, Z, codes, _, _, index = partition_arrays(sub, design)
    if len(y) == 0 or s.problem is None:
        return out
    pr = s.problem
    e = pr.e_step(params)
    w = e.tau if level == "subject" else np.exp(e.log_gate)
    # the rows and the statistics list the partition's subjects in the same sorted order
    eta = np.zeros(len(y))
    for k in range(params.K):
        mu = X @ params.beta[k]
        if level == "subject" and Z.shape[1]:
            b, _ = expert_moments(pr.expert, params.beta[k], params.L[k], params.sigma[k])
            mu = mu + np.einsum("nq,nq->n", Z, b[codes])
        eta += w[codes, k] * mu
    out.loc[index] = eta
    return out


def part_population(pdf: pd.DataFrame, design, gate, params: MoEParams) -> pd.Series:
    """Gate-weighted population means ``sum_k pi_k(w) x'beta_k`` of any rows (no response or history needed);
    NaN where a fixed-effect or gating covariate is missing."""
    from memoe.core.design.fixed import evaluate_matrix
    from memoe.core.design.frame import formula_variables
    from memoe.moe.gating import gate_log_probs

    out = pd.Series(np.nan, index=pdf.index, name="fitted")
    cols = [*formula_variables(design.spec.fixed, "the fixed-effects part"), *gate["vars"]]
    missing = [c for c in cols if c not in pdf.columns]
    if missing:
        raise DataError(f"newdata lacks column(s) {missing} that the fixed effects or the gate use")
    mask = pdf[cols].notna().all(axis=1).to_numpy() if cols else np.ones(len(pdf), dtype=bool)
    frame = pdf.loc[mask]
    if len(frame) == 0:
        return out
    X = evaluate_matrix(design.fixed_spec, frame, "the fixed effects")[:, design.kept]
    if gate["spec"] is None:
        W = np.ones((len(frame), 1))
    else:
        W = evaluate_matrix(gate["spec"], _with_levels(frame, gate["levels"]), "the gating design")
    pi = np.exp(gate_log_probs(W, params.gamma))
    out.loc[frame.index] = np.einsum("nk,nk->n", pi, X @ params.beta.T)
    return out


# ---------------------------------------------------------------------------------------------- the model

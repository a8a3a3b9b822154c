"""Multi-start EM: short runs from many starts, the best ones run to convergence, labels made canonical."""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from memoe.core.arguments import check_bool, check_int, check_seed
from memoe.core.linalg.threads import blas_threads
from memoe.errors import ArgumentError, ArgumentTypeError, EmptyExpertWarning, caller_stacklevel
from memoe.moe.em import EMControl, EMRun, polish, run_em
from memoe.moe.experts import MStepControl
from memoe.moe.init import kmeans_tau, random_tau, split_tau, start_plan, two_stage_features
from memoe.moe.params import MoEParams
from memoe.moe.problem import MoEProblem

__all__ = ["MultiStartControl", "MultiStartResult", "canonical_order", "fit_multistart", "partition_agreement"]

ORDER_RULES = ("intercept", "size", None)
# Laplace experts: EM iterations and relative tolerance of a continued run before the quasi-Newton finish
JOINT_EM_ITER = 10
JOINT_EM_TOL = 1e-6
# pruning of exploratory runs: iterations before a run may be judged, and the factor on its projected gain
PRUNE_MIN_ITER = 3
PRUNE_SAFETY = 4.0


@dataclass(frozen=True)
class MultiStartControl:
    """Settings of the multi-start search.

    Attributes
    ----------
    short_iter : int
        EM iterations of each exploratory run.
    short_tol : float
        Relative log-likelihood change that ends an exploratory run early.
    short_mstep : MStepControl
        Coarse M-step of the exploratory runs: by default one Fisher-scoring step per expert (two deviance
        evaluations) and one Newton step of the gate, a generalised EM step that increases the Q-function.
    n_polish : int
        Exploratory runs (best first) continued to convergence.
    at_best_tol : float
        A start "reached the best log-likelihood" when its final value is within this (absolute).
    em : EMControl
        Stopping rule of the runs to convergence.
    same_partition : float
        MAP agreement with the best run above which a start counts as finding the same solution.
    prune : bool
        Stop an exploratory run early when it is clearly dominated: once ``n_polish`` runs have
        finished, a run whose log-likelihood plus ``PRUNE_SAFETY`` times its largest recent increase
        per remaining iteration stays below the ``n_polish``-th best finished run cannot be among the
        runs continued to convergence, so its remaining iterations are skipped (``starts.pruned``).
        The runs continued, hence the optimum, are those of the unpruned search whenever the run's
        increases keep shrinking (as EM's do away from saddle points).
    polish : bool
        Finish each run to convergence with BFGS on the observed log-likelihood (see
        :func:`memoe.moe.em.polish`); EM alone converges linearly, slowly when classes overlap.
    """

    short_iter: int = 10
    short_tol: float = 1e-7
    short_mstep: MStepControl = field(
        default_factory=lambda: MStepControl(maxeval=2, ftol_abs=1e-6, xtol_abs=1e-4, gate_iter=1)
    )
    n_polish: int = 3
    at_best_tol: float = 1e-3
    em: EMControl = field(default_factory=lambda: EMControl(tol=1e-8, tol_par=1e-4))
    polish: bool = True
    same_partition: float = 0.99
    prune: bool = True

    def __post_init__(self) -> None:
        check_int(self.short_iter, "MultiStartControl.short_iter", minimum=1)
        check_int(self.n_polish, "MultiStartControl.n_polish", minimum=1)
        check_bool(self.polish, "MultiStartControl.polish")
        check_bool(self.prune, "MultiStartControl.prune")
        for name in ("short_tol", "at_best_tol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 <= float(v) < np.inf):
                raise ArgumentError(f"MultiStartControl.{name} must be a non-negative finite number, got {v!r}")
        sp = self.same_partition
        if isinstance(sp, bool) or not isinstance(sp, numbers.Real) or not (0 < float(sp) <= 1):
            raise ArgumentError(f"MultiStartControl.same_partition must be in (0, 1], got {sp!r}")
        if not isinstance(self.short_mstep, MStepControl):
            raise ArgumentTypeError(
                f"MultiStartControl.short_mstep must be an MStepControl, got {type(self.short_mstep).__name__}"
            )
        if not isinstance(self.em, EMControl):
            raise ArgumentTypeError(f"MultiStartControl.em must be an EMControl, got {type(self.em).__name__}")


@dataclass
class MultiStartResult:
    """The best run and a record of every start.

    Attributes
    ----------
    best : EMRun
    starts : pandas.DataFrame
        One row per start: ``strategy``, ``short_loglik``, ``short_iter``, ``polished``, ``loglik``
        (final), ``n_iter`` (total), ``converged``, ``empty`` (experts lost, 1-based), ``gap`` (best
        log-likelihood minus this start's; exploratory runs that were not continued keep their
        short-run value, so a small gap marks a start heading for the same optimum).
    n_at_best : int
        Starts whose final log-likelihood is within ``at_best_tol`` of the best.
    n_empty : int
        Starts discarded because an expert emptied.
    n_polished : int
        Starts continued to convergence (only these can be compared with the best by log-likelihood).
    n_same_partition : int
        Starts whose MAP classification (at the end of their own run, short or continued) agrees with
        the best run's on at least ``same_partition`` of the subjects, after matching labels: starts
        heading for the same solution, whether or not they were continued.
    """

    best: EMRun
    starts: pd.DataFrame
    n_at_best: int
    n_empty: int
    n_polished: int = 0
    n_same_partition: int = 0


def partition_agreement(tau: np.ndarray, reference: np.ndarray) -> float:
    """Share of subjects with the same MAP class in ``tau`` and ``reference`` under the best label matching."""
    a, b = np.argmax(tau, axis=1), np.argmax(reference, axis=1)
    K = max(tau.shape[1], reference.shape[1])
    table = np.zeros((K, K))
    np.add.at(table, (a, b), 1.0)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / max(len(a), 1))


def _start_tau(problem: MoEProblem, strategy: str, rng, features, previous_tau) -> np.ndarray:
    N, K = problem.N, problem.K
    if strategy == "single":
        return np.ones((N, 1))
    if strategy == "kmeans":
        return kmeans_tau(features, K, rng)
    if strategy.startswith("split"):
        return split_tau(previous_tau, features, int(strategy[5:]))
    return random_tau(N, K, rng)


def _dominated(it: int, trace: list[float], done: list[EMRun], n_keep: int, max_iter: int) -> bool:
    """True when an exploratory run cannot reach the ``n_keep`` best finished runs (see ``MultiStartControl.prune``).

    The bound projects the largest of the last two increases over every remaining iteration, times
    ``PRUNE_SAFETY``; EM's increases shrink as a run settles, so the projection overstates its gain.
    """
    if it < PRUNE_MIN_ITER or len(trace) < 3:
        return False
    finished = sorted((r.loglik for r in done if not r.empty and np.isfinite(r.loglik)), reverse=True)
    if len(finished) < n_keep:
        return False
    step = max(trace[-1] - trace[-2], trace[-2] - trace[-3], 0.0)
    return trace[-1] + PRUNE_SAFETY * step * (max_iter - it) < finished[n_keep - 1]


def fit_multistart(
    problem: MoEProblem,
    n_starts: int,
    seed: int | None,
    control: MultiStartControl | None = None,
    previous_tau: np.ndarray | None = None,
    start_params: MoEParams | None = None,
    progress: bool | None = False,
) -> MultiStartResult:
    """Multi-start EM.

    Parameters
    ----------
    problem : MoEProblem
    n_starts : int
    seed : int or None
        Seeds the ``numpy.random.Generator`` of every random choice (deterministic for an int).
    control : MultiStartControl, optional
    previous_tau : numpy.ndarray, shape (N, K - 1), optional
        Posterior of a (K-1)-expert fit: adds one "split" start per expert.
    start_params : MoEParams, optional
        A user start, run as an additional start.
    progress : bool or None
        Show tqdm progress bars (starts, then runs to convergence); None: when stderr is a terminal.
    """
    n_starts = check_int(n_starts, "n_starts", minimum=1)
    # every BLAS call of the EM has a tiny inner dimension ((N, r) x (r, K) gate products, weighted sums
    # over subjects): a second OpenBLAS thread only adds hand-off and, on a busy machine, spinning
    # (measured at N = 100,000: W @ gamma' 1.5 ms with one thread, 14-33 ms with two)
    with blas_threads(1):
        return _fit_multistart(problem, n_starts, seed, control, previous_tau, start_params, progress)


def _fit_multistart(
    problem: MoEProblem,
    n_starts: int,
    seed: int | None,
    control: MultiStartControl | None,
    previous_tau: np.ndarray | None,
    start_params: MoEParams | None,
    progress: bool | None,
) -> MultiStartResult:
    ctl = control or MultiStartControl()
    joint = problem.joint
    rng = np.random.default_rng(check_seed(seed))
    plan = start_plan(n_starts, problem.K, previous_tau is not None)
    features = two_stage_features(problem.expert.stats) if problem.K > 1 else None
    short = EMControl(
        max_iter=ctl.short_iter, tol=ctl.short_tol, tol_par=0.0, min_mass=ctl.em.min_mass, mstep=ctl.short_mstep
    )
    if problem.K == 1:
        short = ctl.em
    runs: list[EMRun] = []
    strategies: list[str] = []
    bar = _bar(len(plan) + (start_params is not None), progress, "EM starts")
    stop = None
    if ctl.prune and problem.K > 1:

        def stop(it: int, trace: list[float]) -> bool:
            return _dominated(it, trace, runs, ctl.n_polish, short.max_iter)

    for strategy in plan:
        tau = _start_tau(problem, strategy, rng, features, previous_tau)
        runs.append(run_em(problem, problem.initial_params(tau, short.mstep), short, stop))
        strategies.append(strategy)
        bar.update(1)
    if start_params is not None:
        runs.append(run_em(problem, start_params, short, stop))
        strategies.append("user")
        bar.update(1)
    bar.close()
    short_ll = [r.loglik for r in runs]
    short_it = [r.n_iter for r in runs]
    ok = [i for i, r in enumerate(runs) if not r.empty and np.isfinite(r.loglik)]
    pool = ok if ok else list(range(len(runs)))
    chosen = sorted(pool, key=lambda i: -runs[i].loglik)[: max(1, ctl.n_polish)]
    polished = np.zeros(len(runs), dtype=bool)
    bar = _bar(len(chosen), progress if problem.K > 1 else False, "EM to convergence")
    for i in chosen:
        r0 = runs[i]
        if not r0.converged and not r0.empty:
            # Laplace experts: EM only approaches the optimum (each iteration costs a quasi-Newton M-step),
            # the preconditioned quasi-Newton finish converges
            em_ctl = dataclasses.replace(ctl.em, max_iter=min(ctl.em.max_iter, JOINT_EM_ITER),
                                         tol=max(ctl.em.tol, JOINT_EM_TOL)) if joint else ctl.em
            r = run_em(problem, r0.params, em_ctl)
            r.n_iter += r0.n_iter
            r.trace = r0.trace + r.trace[1:]
            r.max_decrease = max(r.max_decrease, r0.max_decrease)
            runs[i] = r
        if ctl.polish and not runs[i].empty and problem.K > 1:
            runs[i] = polish(problem, runs[i], precondition=joint)
            if joint:
                runs[i].converged = bool(runs[i].converged or runs[i].polish_converged)
        polished[i] = True
        bar.update(1)
    bar.close()
    cand = [i for i in chosen if not runs[i].empty] or chosen
    best_i = max(cand, key=lambda i: runs[i].loglik)
    best = runs[best_i]
    final = np.array([r.loglik for r in runs])
    n_at_best = int(np.sum([(abs(final[i] - best.loglik) <= ctl.at_best_tol) and not runs[i].empty for i in ok]))
    n_empty = sum(1 for r in runs if r.empty)
    agree = np.array([partition_agreement(r.estep.tau, best.estep.tau) for r in runs])
    n_same = int(np.sum([agree[i] >= ctl.same_partition and not runs[i].empty for i in ok]))
    starts = pd.DataFrame(
        {
            "strategy": strategies,
            "short_loglik": short_ll,
            "short_iter": short_it,
            "pruned": [r.stopped for r in runs],
            "polished": polished,
            "loglik": final,
            "n_iter": [r.n_iter for r in runs],
            "converged": [r.converged for r in runs],
            "empty": [[k + 1 for k in r.empty] for r in runs],
            "gap": best.loglik - final,
            "agreement": agree,
        }
    )
    if n_empty:
        min_mass = ctl.em.min_mass if ctl.em.min_mass is not None else max(2.0, float(problem.structure.p))
        msg = (
            f"{n_empty} of {len(runs)} EM start(s) lost an expert (posterior mass below {min_mass:g} subjects' "
            "worth)"
        )
        if best.empty:
            mass = best.estep.mass
            lost = ", ".join(f"expert {k + 1} (mass {mass[k]:.3g})" for k in best.empty)
            msg += (
                f"; the selected fit has empty expert(s): {lost} of {problem.N} subjects (numbered as estimated, "
                "see fit.empty_experts for the reported order): consider fewer experts"
            )
        else:
            msg += " and were discarded"
        warnings.warn(msg, EmptyExpertWarning, stacklevel=caller_stacklevel())
    return MultiStartResult(
        best=best,
        starts=starts,
        n_at_best=n_at_best,
        n_empty=n_empty,
        n_polished=int(polished.sum()),
        n_same_partition=n_same,
    )


def canonical_order(params: MoEParams, mass: np.ndarray, rule: str | None, specific: np.ndarray) -> np.ndarray:
    """Order of the experts that resolves label switching.

    Parameters
    ----------
    params : MoEParams
    mass : numpy.ndarray, shape (K,)
        Posterior mass of each expert.
    rule : {"intercept", "size", None}
        ``"intercept"``: increasing first class-specific fixed effect (the intercept when it is
        class-specific), falling back on ``"size"`` when no fixed effect is class-specific;
        ``"size"``: decreasing posterior mass; None: as estimated.
    specific : numpy.ndarray of bool, shape (p,)

    Returns
    -------
    numpy.ndarray of int, shape (K,)
        New expert j is old expert ``order[j]``.
    """
    K = len(mass)
    if rule is None or K == 1:
        return np.arange(K)
    if rule == "intercept" and np.any(specific):
        j0 = int(np.flatnonzero(specific)[0])
        return np.lexsort((-mass, params.beta[:, j0]))
    if rule in ("intercept", "size"):
        return np.argsort(-mass, kind="stable")
    raise ValueError(f"order must be one of {ORDER_RULES}, got {rule!r}")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, show: bool | None, desc: str):
    """A tqdm bar; ``show=None`` lets tqdm decide (shown when stderr is a terminal, so tests and CI print nothing)."""
    if show is False:
        return _NoBar()
    # deferred: tqdm.auto probes for Jupyter widgets when imported; pay that only when a bar is shown
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=None if show is None else False)

"""Parametric bootstrap of a linear mixed model (lme4's ``bootMer`` with percentile intervals).

Each replicate simulates a response from the fitted model, ``y* = X beta + Z b* + e*`` with
``b* = sigma Lambda u*``, ``u* ~ N(0, I)`` and ``e* ~ N(0, sigma^2 I)``, refits it by the fit's criterion
(REML or ML) starting from the fitted theta, and records the parameters on lme4's sd/cor scale plus the
fixed effects.

Reproducibility: replicate ``k`` draws from its own generator, seeded by the ``k``-th child of
``numpy.random.SeedSequence(seed)``, so results do not depend on the number of worker processes or on
the order in which chunks finish.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from memoe.core.arguments import check_int, check_optional_bool, check_seed
from memoe.core.covariance import ThetaMap
from memoe.core.optim import minimize_bounded
from memoe.core.replicates import run_replicates
from memoe.core.rformat import percent_labels
from memoe.errors import ArgumentTypeError, MemoeError, MemoeWarning, caller_stacklevel
from memoe.inference.varpar import VarParSpace
from memoe.lmm.objective import PLSProblem

__all__ = ["BootstrapResult", "bootstrap"]


@dataclass(frozen=True)
class _Task:
    """Everything a worker process needs to simulate and refit (plain arrays; picklable)."""

    mean: np.ndarray  # (n,) X beta
    X: np.ndarray
    Z: list[np.ndarray]
    codes: list[np.ndarray]
    nlevels: list[int]
    theta_map: ThetaMap
    theta: np.ndarray
    sigma: float
    reml: bool
    space: VarParSpace


def _simulate(task: _Task, lambdas: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    y = task.mean.copy()
    for Zk, ck, lk, lam in zip(task.Z, task.codes, task.nlevels, lambdas, strict=True):
        b = task.sigma * (rng.standard_normal((lk, lam.shape[0])) @ lam.T)
        y += np.einsum("nq,nq->n", Zk, b[ck])
    return y + task.sigma * rng.standard_normal(len(y))


def _refit(task: _Task, y: np.ndarray) -> np.ndarray:
    problem = PLSProblem(y=y, X=task.X, codes=task.codes, nlevels=task.nlevels, Z=task.Z, theta_map=task.theta_map)
    opt = minimize_bounded(
        lambda t: problem.deviance(t, task.reml), task.theta, task.theta_map.lower_bounds, ftol_abs=1e-10
    )
    sol = problem.solve(opt.x, task.reml)
    return np.concatenate([task.space.phi(opt.x, sol.sigma), sol.beta])


def _run_chunk(task: _Task, start: int, seeds: list[np.random.SeedSequence]) -> tuple[int, np.ndarray]:
    """Simulate and refit the replicates ``start, start + 1, ...`` (a module-level function: picklable)."""
    lambdas = task.theta_map.lambdas(task.theta)
    out = np.full((len(seeds), task.space.size + task.X.shape[1]), np.nan)
    for k, ss in enumerate(seeds):
        rng = np.random.default_rng(ss)
        # a failed refit stays NaN and is counted by the caller
        with contextlib.suppress(MemoeError, np.linalg.LinAlgError, ValueError, FloatingPointError):
            out[k] = _refit(task, _simulate(task, lambdas, rng))
    return start, out


@dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap replicates of a fit's parameters.

    Attributes
    ----------
    estimates : pandas.Series
        The fit's parameters (sd/cor/sigma, fixed effects), lme4's names.
    replicates : pandas.DataFrame, shape (nsim, n_parameters)
        One row per replicate (NaN where the refit failed).
    seed : int or None
    n_failed : int
    """

    estimates: pd.Series
    replicates: pd.DataFrame
    seed: int | None
    n_failed: int = 0
    method: str = field(default="parametric")

    @property
    def nsim(self) -> int:
        return len(self.replicates)

    def confint(self, level: float = 0.95) -> pd.DataFrame:
        """Percentile intervals (quantiles with linear interpolation, R's type 7), failed replicates dropped."""
        a = (1 - level) / 2
        lo, hi = percent_labels(level)
        reps = self.replicates.to_numpy()
        q = np.nanquantile(reps, [a, 1 - a], axis=0) if len(reps) else np.full((2, reps.shape[1]), np.nan)
        return pd.DataFrame(q.T, index=self.replicates.columns, columns=[lo, hi])

    def std_errors(self) -> pd.Series:
        """Bootstrap standard deviations of the parameters."""
        return self.replicates.std(ddof=1)


def bootstrap(
    fit,
    nsim: int = 500,
    seed: int | None = None,
    n_jobs: int | None = 2,
    progress: bool | None = None,
    chunksize: int | None = None,
) -> BootstrapResult:
    """Parametric bootstrap of a linear mixed model.

    Parameters
    ----------
    fit : LmmResult
    nsim : int, default 500
        Number of simulated data sets.
    seed : int >= 0 or numpy.random.SeedSequence, optional
        Seed of the ``SeedSequence`` that seeds every replicate (None: fresh entropy, not reproducible).
    n_jobs : int >= 1 or None, default 2
        Worker processes; 1 runs in this process, None uses all CPUs.
    progress : bool, optional
        Show a tqdm progress bar; None (default): when stderr is a terminal.
    chunksize : int >= 1, optional
        Replicates per task sent to a worker (default: about 4 tasks per worker).

    Returns
    -------
    BootstrapResult

    Raises
    ------
    ArgumentError, ArgumentTypeError
        An argument of the wrong type or out of range, or ``fit`` not a linear mixed model fit.
    """
    # deferred: tqdm.auto probes for Jupyter widgets when imported; pay that only when a bar is shown
    from tqdm.auto import tqdm

    nsim = check_int(nsim, "nsim", minimum=1)
    if isinstance(seed, np.random.Generator):
        raise ArgumentTypeError(
            "seed must be None, a non-negative integer or a numpy SeedSequence (a Generator cannot seed the "
            "per-replicate SeedSequence children that make results independent of the workers)"
        )
    seed = check_seed(seed)
    if n_jobs is not None:
        n_jobs = check_int(n_jobs, "n_jobs", minimum=1)
    if chunksize is not None:
        chunksize = check_int(chunksize, "chunksize", minimum=1)
    progress = check_optional_bool(progress, "progress")
    if getattr(fit, "family", None) != "lmm":
        raise ArgumentTypeError(
            f"bootstrap takes a linear mixed model fit (memoe.lmm(...).fit()), got {type(fit).__name__}"
        )
    d = fit.design
    space = VarParSpace.from_design(d)
    task = _Task(
        mean=d.X @ fit.state.beta if d.p else np.zeros(d.n),
        X=d.X,
        Z=[b.Z for b in d.blocks],
        codes=[b.factor.codes for b in d.blocks],
        nlevels=[b.nlevels for b in d.blocks],
        theta_map=d.theta_map,
        theta=np.asarray(fit.state.theta, dtype=float),
        sigma=float(fit.sigma),
        reml=bool(fit.reml),
        space=space,
    )
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    seeds = root.spawn(nsim)
    names = list(space.names) + list(d.fixef_names)
    reps = np.full((nsim, len(names)), np.nan)
    # disable=None: tqdm shows the bar only when stderr is a terminal (so tests and CI print nothing)
    with tqdm(total=nsim, disable=None if progress is None else not progress, desc="bootstrap", unit="fit") as bar:
        run_replicates(_run_chunk, task, seeds, reps, n_jobs, chunksize, on_done=bar.update)
    n_failed = int(np.sum(np.any(np.isnan(reps), axis=1)))
    if n_failed:
        warnings.warn(
            f"{n_failed} of {nsim} bootstrap refits failed; they are left out", MemoeWarning,
            stacklevel=caller_stacklevel(),
        )
    estimates = pd.Series(
        np.concatenate([space.phi(fit.state.theta, fit.sigma), fit.state.beta]), index=names, name="estimate"
    )
    return BootstrapResult(
        estimates=estimates, replicates=pd.DataFrame(reps, columns=names), seed=seed, n_failed=n_failed
    )

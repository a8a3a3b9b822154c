"""Parametric bootstrap likelihood-ratio test for the number of experts (McLachlan 1987).

The LRT of K against K' > K experts is non-regular (see :mod:`memoe.inference.compare_mixtures`), so
its null distribution is simulated: draw ``nsim`` data sets from the smaller fit (its gate and experts,
the same subjects, covariates and visits; :func:`memoe.moe.simulate.simulate_response`), refit both
models to each, and compare the observed statistic ``T = 2 (logLik_large - logLik_small)`` with the
simulated ones: ``p = (1 + #{T* >= T}) / (nsim + 1)``.

Reproducibility: replicate ``b`` draws its data and its fits' seeds from the ``b``-th child of
``numpy.random.SeedSequence(seed)``, so the result does not depend on ``n_jobs`` or on the order in
which the workers finish.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from memoe.core.arguments import check_int, check_optional_bool, check_seed
from memoe.core.replicates import run_replicates
from memoe.errors import ArgumentTypeError, MemoeError, MemoeWarning, ModelComparisonError, caller_stacklevel
from memoe.inference.compare_mixtures import REFIT_MESSAGE, check_same_data, is_mixture
from memoe.moe.em import EMControl
from memoe.moe.multistart import MultiStartControl, _bar
from memoe.moe.simulate import simulate_response

__all__ = ["BOOTSTRAP_CONTROL", "BootstrapLRT", "bootstrap_lrt"]

# a K = 1 MEMoE refit of an LMM must reproduce its ML log-likelihood to the optimisers' precision (both stop at
# relative changes near 1e-10; 1e-6 relative leaves room for flat optima); a larger gap means the LMM is not the
# one-expert version of the larger mixture (another formula or data)
_LMM_MATCH_TOL = 1e-6
_SIM_COLUMN = "memoe_simulated_response"

#: refits of the replicates: the two best exploratory runs are continued, by EM to a loose rule and then by the
#: BFGS polish on the observed log-likelihood (which reaches the optimum to ~1e-5 in logLik). Under H0 the extra
#: expert is spurious and EM alone creeps (hundreds of iterations; 5-30x slower for the same maximum on memoe_sim2);
#: continuing only the best run missed the best maximum in 1 of 4 replicates there, two runs did not.
BOOTSTRAP_CONTROL = MultiStartControl(n_polish=2, em=EMControl(tol=1e-6, tol_par=1e-2, max_iter=100))


@dataclass(frozen=True)
class _Spec:
    """How to rebuild a model on new data (picklable: plain values)."""

    cls: str  # "MEMoE" or "MoE"
    formula: str
    gating: str | None
    k: int
    options: dict

    def build(self, data: pd.DataFrame):
        from memoe.moe.model import MEMoE, MoE

        cls = MoE if self.cls == "MoE" else MEMoE
        return cls(self.formula, gating=self.gating, k=self.k, data=data, **self.options)


def _spec(model, k: int | None = None, formula: str | None = None) -> _Spec:
    options = {
        "mixture": model.mixture,
        "random_cov": model.random_cov,
        "sigma": model.sigma_option,
        "order": model.order,
        "mstep": model.problem.expert.control,
        "contrasts": dict(model.contrasts) or None,
    }
    if type(model).__name__ == "MoE" or "|" not in model.formula:
        options["group"] = model.mdesign.group
    if getattr(model, "structured", False):  # residual structures (plain dataclasses: picklable)
        options.update(correlation=model.correlation, weights=model.weights)
    return _Spec(type(model).__name__, formula or model.formula, model.gating, model.k if k is None else k, options)


@dataclass(frozen=True)
class _Task:
    """Everything a worker needs (plain arrays and specs; picklable)."""

    data: pd.DataFrame  # the rows the fits used, the response column to be replaced
    response: str  # column that receives the simulated response
    small: _Spec
    large: _Spec
    X: np.ndarray
    Z: np.ndarray
    W: np.ndarray
    codes: np.ndarray
    params: object  # MoEParams of the smaller fit
    n_starts: int
    control: MultiStartControl | None


class _Design:
    """The parts of a model :func:`simulate_response` reads, from the task's arrays."""

    def __init__(self, task: _Task) -> None:
        from types import SimpleNamespace

        self.mdesign = SimpleNamespace(design=SimpleNamespace(X=task.X), Z=task.Z, W=task.W, codes=task.codes)
        if "correlation" in task.small.options or "weights" in task.small.options:
            # structured experts simulate their residuals from the structures bound to the data (one build)
            self.problem = task.small.build(task.data).problem


def _one(task: _Task, design: _Design, ss: np.random.SeedSequence) -> tuple[float, float]:
    """Simulate one data set from the smaller fit and refit both models: (logLik_small, logLik_large)."""
    from memoe.moe.model import MEMoE

    rng = np.random.default_rng(ss)
    y, _ = simulate_response(design, task.params, rng)
    seed_small, seed_large = (int(v) for v in rng.integers(0, 2**31 - 1, size=2))
    data = task.data.copy()
    data[task.response] = y
    kw = {"progress": False, "se": False, "control": task.control}
    small = task.small.build(data).fit(n_starts=task.n_starts, seed=seed_small, **kw)
    large_model = task.large.build(data)
    # starts that split the smaller fit's classes (when K' = K + 1) keep the larger fit at least as good
    previous = small if task.large.k == task.small.k + 1 and isinstance(large_model, MEMoE) else None
    large = large_model.fit(n_starts=task.n_starts, seed=seed_large, previous=previous, **kw)
    return float(small.loglik), float(large.loglik)


def _run_chunk(task: _Task, start: int, seeds: list[np.random.SeedSequence]) -> tuple[int, np.ndarray]:
    """Replicates ``start, start + 1, ...`` (module level: picklable for the worker processes)."""
    design = _Design(task)
    out = np.full((len(seeds), 2), np.nan)
    for b, ss in enumerate(seeds):
        with warnings.catch_warnings():
            # convergence and empty-expert warnings of single replicates would flood the user's screen
            warnings.simplefilter("ignore")
            # a failed replicate stays NaN and is counted by the caller
            with contextlib.suppress(MemoeError, np.linalg.LinAlgError, ValueError, FloatingPointError):
                out[b] = _one(task, design, ss)
    return start, out


@dataclass(frozen=True)
class BootstrapLRT:
    """Result of :func:`bootstrap_lrt`.

    Attributes
    ----------
    statistic : float
        Observed ``2 (logLik_large - logLik_small)``.
    p_value : float
        ``(1 + #{T* >= statistic}) / (n_ok + 1)`` over the successful replicates.
    null : numpy.ndarray
        Simulated statistics ``T*`` of the successful replicates, in replicate order.
    replicates : pandas.DataFrame
        One row per replicate: ``loglik_small``, ``loglik_large``, ``statistic`` (NaN where a refit failed).
    k_small, k_large : int
    loglik_small, loglik_large : float
    nsim : int
        Replicates requested.
    n_failed : int
        Replicates whose refit failed (left out of the p-value).
    seed : int or None
    n_starts : int
        Starts of each refit.

    Examples
    --------
    >>> import memoe
    >>> sim = memoe.datasets.load("memoe_sim2")
    >>> f1 = memoe.lmm("y ~ time + x + (time | id)", sim).fit(reml=False)  # doctest: +SKIP
    >>> f2 = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=sim).fit(seed=1)  # doctest: +SKIP
    >>> res = memoe.bootstrap_lrt(f1, f2, nsim=19, seed=1)  # doctest: +SKIP
    >>> res.k_small, res.k_large, res.nsim  # doctest: +SKIP
    (1, 2, 19)
    """

    statistic: float
    p_value: float
    null: np.ndarray
    replicates: pd.DataFrame
    k_small: int
    k_large: int
    loglik_small: float
    loglik_large: float
    nsim: int
    n_failed: int
    seed: int | None
    n_starts: int
    notes: list[str] = field(default_factory=list)

    @property
    def n_ok(self) -> int:
        """Replicates that entered the p-value."""
        return self.nsim - self.n_failed

    def null_quantiles(self, probs=(0.5, 0.9, 0.95, 0.99)) -> pd.Series:
        """Quantiles of the simulated null distribution (R's type 7)."""
        q = np.quantile(self.null, probs) if len(self.null) else np.full(len(probs), np.nan)
        return pd.Series(q, index=[f"{100 * p:g}%" for p in probs], name="T*")

    def summary(self) -> str:
        """A printable report: hypotheses, statistic, p-value, null quantiles, replicates used."""
        q = self.null_quantiles()
        lines = [
            "Parametric bootstrap likelihood-ratio test for the number of experts (McLachlan 1987)",
            f"H0: k = {self.k_small} experts   H1: k = {self.k_large} experts",
            f"logLik: {self.loglik_small:.4f} (k = {self.k_small}), {self.loglik_large:.4f} (k = {self.k_large})",
            f"LRT statistic 2 x (logLik_{self.k_large} - logLik_{self.k_small}) = {self.statistic:.4f}",
            f"bootstrap p-value = {self.p_value:.4g}   ({self.n_ok} replicates"
            + (f", {self.n_failed} failed" if self.n_failed else "")
            + f"; smallest attainable p = {1 / (self.n_ok + 1):.3g})",
            "null distribution of T*: " + ", ".join(f"{k} {v:.3f}" for k, v in q.items()),
            f"each replicate: data simulated from the k = {self.k_small} fit, both models refitted "
            f"({self.n_starts} starts); seed {self.seed}",
        ]
        lines.extend(f"Note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"BootstrapLRT(k {self.k_small} vs {self.k_large}: statistic {self.statistic:.4f}, "
            f"p = {self.p_value:.4g}, {self.n_ok} replicates)"
        )

    def __str__(self) -> str:
        return self.summary()


def _as_mixture_pair(fit_small, fit_large, control):
    """The two fits as mixtures: an LMM small fit becomes the K = 1 MEMoE with the larger fit's options."""
    notes: list[str] = []
    if not is_mixture(fit_large):
        raise ModelComparisonError(
            f"fit_large must be a MEMoE / MoE fit (the model with more experts), got {type(fit_large).__name__}"
        )
    if is_mixture(fit_small):
        return fit_small, notes
    if getattr(fit_small, "family", None) != "lmm":
        raise ModelComparisonError(
            f"fit_small must be a MEMoE / MoE fit or an LMM fit (memoe.lmm, one expert), got {type(fit_small).__name__}"
        )
    if bool(fit_small.reml):
        warnings.warn(REFIT_MESSAGE, MemoeWarning, stacklevel=caller_stacklevel())
        fit_small = fit_small.model.fit(reml=False)
        notes.append(REFIT_MESSAGE)
    spec = _spec(fit_large.model, k=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            one = spec.build(fit_large.model.mdesign.data).fit(n_starts=1, seed=0, progress=False, se=False,
                                                               control=control)
        except MemoeError as exc:
            raise ModelComparisonError(f"the one-expert version of fit_large cannot be fitted: {exc}") from exc
    gap = abs(float(one.loglik) - float(fit_small.loglik))
    if gap > _LMM_MATCH_TOL * max(1.0, abs(float(fit_small.loglik))):
        raise ModelComparisonError(
            f"fit_small (an LMM, {fit_small.model.formula!r}, logLik {float(fit_small.loglik):.4f}) is not the "
            f"one-expert version of fit_large ({fit_large.model.formula!r}: k = 1 gives logLik "
            f"{float(one.loglik):.4f}); "
            "fit the LMM with the same formula to the same rows"
        )
    notes.append(f"the LMM is the one-expert mixture {spec.cls}(k = 1) (logLik agrees to {gap:.1e})")
    return one, notes


def _check_nested(small, large) -> None:
    ms, ml = small.model, large.model
    if small.k >= large.k:
        raise ModelComparisonError(
            f"fit_small must have fewer experts than fit_large; they have k = {small.k} and k = {large.k}"
        )
    if type(ms).__name__ != type(ml).__name__:
        raise ModelComparisonError(
            f"fit_small is a {type(ms).__name__} and fit_large a {type(ml).__name__}: the bootstrap LRT compares "
            "the same kind of mixture with different numbers of experts"
        )
    if (getattr(ms, "correlation", None), getattr(ms, "weights", None)) != (
        getattr(ml, "correlation", None), getattr(ml, "weights", None)
    ):
        raise ModelComparisonError(
            f"fit_small and fit_large differ in their residual structures (correlation={ms.correlation!r}, "
            f"weights={ms.weights!r} and correlation={ml.correlation!r}, weights={ml.weights!r}): the bootstrap "
            "LRT tests only the number of experts; fit both with the same structures"
        )
    what = {"formula": (ms.formula, ml.formula), "mixture": (ms.mixture, ml.mixture)}
    if small.k > 1:
        what.update(gating=(ms.gating, ml.gating), random_cov=(ms.random_cov, ml.random_cov),
                    sigma=(ms.sigma_option, ml.sigma_option))
    for name, (a, b) in what.items():
        if a != b:
            raise ModelComparisonError(
                f"fit_small and fit_large differ in {name} ({a!r} and {b!r}): the bootstrap LRT tests only the "
                "number of experts; fit both with the same options"
            )


def bootstrap_lrt(
    fit_small,
    fit_large,
    nsim: int = 99,
    seed: int | None = 1,
    *,
    n_starts: int = 3,
    control: MultiStartControl | None = None,
    n_jobs: int | None = None,
    progress: bool | None = None,
    chunksize: int | None = None,
) -> BootstrapLRT:
    """Parametric bootstrap LRT of K against K' > K experts (McLachlan 1987).

    Parameters
    ----------
    fit_small : MEMoEResult or LmmResult
        The fit with fewer experts (the null model). An LMM fit (``memoe.lmm(...).fit()``) is the
        K = 1 mixture: it is replaced by the one-expert MEMoE with ``fit_large``'s formula (which must
        reproduce its ML log-likelihood); a REML fit is refitted by ML first (with a warning).
    fit_large : MEMoEResult
        The fit with more experts: same kind (MEMoE / MoE), formula, data and options.
    nsim : int, default 99
        Simulated data sets; the smallest attainable p-value is ``1 / (nsim + 1)``.
    seed : int >= 0 or numpy.random.SeedSequence, default 1
        Seed of the ``SeedSequence`` whose children seed the replicates (None: not reproducible).
    n_starts : int, default 3
        Starts of each refit (the larger model also starts from splits of the smaller refit's classes
        when K' = K + 1, so that its log-likelihood is not below the smaller one's).
    control : MultiStartControl, optional
        Multi-start and EM settings of the refits. Default :data:`BOOTSTRAP_CONTROL`: the two best starts are
        continued, by EM to a relative change of 1e-6 (at most 100 iterations) and then by the BFGS polish
        that ``fit()`` also ends with, so each refit reaches the same maximum much faster.
    n_jobs : int >= 1 or None
        Worker processes; None (default): all CPUs; 1 runs in this process.
    progress : bool, optional
        tqdm progress bar over the replicates; None (default): shown when stderr is a terminal.
    chunksize : int >= 1, optional
        Replicates per task sent to a worker (default: about 4 tasks per worker).

    Returns
    -------
    BootstrapLRT
        ``statistic``, ``p_value``, ``null`` (the simulated statistics), ``replicates``, ``n_failed``;
        ``print(result)`` shows the report.

    Raises
    ------
    ModelComparisonError
        Fits to different data, not the same model with fewer and more experts, or an LMM that is not
        the one-expert version of ``fit_large``.
    ArgumentError, ArgumentTypeError
        A bad ``nsim``, ``seed``, ``n_starts``, ``n_jobs``, ``chunksize`` or ``progress``.

    Examples
    --------
    >>> import memoe
    >>> sim = memoe.datasets.load("memoe_sim2")
    >>> f1 = memoe.lmm("y ~ time + x + (time | id)", sim).fit(reml=False)  # doctest: +SKIP
    >>> f2 = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=sim).fit(seed=1)  # doctest: +SKIP
    >>> memoe.bootstrap_lrt(f1, f2, nsim=19, seed=1).p_value  # doctest: +SKIP
    0.05

    Notes
    -----
    R has no function for mixtures of mixed models; this is the procedure of ``mclust::mclustBootstrapLRT``
    (McLachlan 1987; McLachlan & Peel 2000, section 6.6) applied to MEMoE: the statistic is
    ``T = 2 (l_{K'} - l_K)``, the p-value ``(1 + #{b: T*_b >= T}) / (B + 1)`` with B the successful replicates.
    """
    nsim = check_int(nsim, "nsim", minimum=1)
    if isinstance(seed, np.random.Generator):
        raise ArgumentTypeError(
            "seed must be None, a non-negative integer or a numpy SeedSequence (a Generator cannot seed the "
            "per-replicate SeedSequence children that make results independent of n_jobs)"
        )
    seed = check_seed(seed)
    n_starts = check_int(n_starts, "n_starts", minimum=1)
    if n_jobs is not None:
        n_jobs = check_int(n_jobs, "n_jobs", minimum=1)
    if chunksize is not None:
        chunksize = check_int(chunksize, "chunksize", minimum=1)
    progress = check_optional_bool(progress, "progress")
    if control is not None and not isinstance(control, MultiStartControl):
        raise ArgumentTypeError(
            f"control must be a memoe.moe.multistart.MultiStartControl or None, got {type(control).__name__}"
        )
    control = BOOTSTRAP_CONTROL if control is None else control
    check_same_data([fit_small, fit_large], ["fit_small", "fit_large"])
    small, notes = _as_mixture_pair(fit_small, fit_large, control)
    _check_nested(small, fit_large)

    md = small.model.mdesign
    data = md.data.copy()
    response = md.design.spec.response
    formula_s, formula_l = small.model.formula, fit_large.model.formula
    if response not in data.columns:
        # a transformed response (log(y) ~ ...): simulate on the model's scale into a new column
        response = _SIM_COLUMN
        formula_s = f"{_SIM_COLUMN} ~ {formula_s.split('~', 1)[1].strip()}"
        formula_l = f"{_SIM_COLUMN} ~ {formula_l.split('~', 1)[1].strip()}"
    task = _Task(
        data=data, response=response, small=_spec(small.model, formula=formula_s),
        large=_spec(fit_large.model, formula=formula_l), X=np.asarray(md.design.X), Z=np.asarray(md.Z),
        W=np.asarray(md.W), codes=np.asarray(md.codes), params=small.estimates, n_starts=n_starts, control=control,
    )
    statistic = 2.0 * (float(fit_large.loglik) - float(small.loglik))
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    seeds = root.spawn(nsim)
    ll = np.full((nsim, 2), np.nan)
    bar = _bar(nsim, progress, "bootstrap LRT")
    try:
        run_replicates(_run_chunk, task, seeds, ll, n_jobs, chunksize, on_done=bar.update)
    finally:
        bar.close()
    t_star = 2.0 * (ll[:, 1] - ll[:, 0])
    ok = np.isfinite(t_star)
    n_failed = int(nsim - ok.sum())
    if n_failed:
        warnings.warn(f"{n_failed} of {nsim} bootstrap replicates failed to refit; they are left out",
                      MemoeWarning, stacklevel=caller_stacklevel())
    null = t_star[ok]
    n_neg = int(np.sum(null < -1e-6))
    if n_neg:
        notes.append(
            f"{n_neg} replicate(s) gave a larger fit below the smaller one (a local maximum; raise n_starts)"
        )
    p = (1.0 + float(np.sum(null >= statistic))) / (len(null) + 1.0) if len(null) else float("nan")
    reps = pd.DataFrame({"loglik_small": ll[:, 0], "loglik_large": ll[:, 1], "statistic": t_star})
    reps.index.name = "replicate"
    return BootstrapLRT(
        statistic=statistic, p_value=p, null=null, replicates=reps, k_small=small.k, k_large=fit_large.k,
        loglik_small=float(small.loglik), loglik_large=float(fit_large.loglik), nsim=nsim, n_failed=n_failed,
        seed=seed if not isinstance(seed, np.random.SeedSequence) else None, n_starts=n_starts, notes=notes,
    )

"""The paper's simulation study: MEMoE against a single LMM, a conventional MoE and a latent-class LMM.

``memoe.simulation_study(scenario, reps=100)`` repeats: simulate a data set with known truth
(:func:`memoe.simulate.memoe_data`), fit each model, match the estimated experts to the true classes
(:func:`memoe.metrics.match_labels`, the gate re-referenced accordingly) and record estimates, model-based
and sandwich standard errors, classification accuracy, adjusted Rand index and BIC. The summaries are
DataFrames: bias, RMSE and 95% coverage per parameter, accuracy per model, and how often each model has
the lowest BIC.

Models (all with the scenario's formula ``y ~ time + x + (time | id)`` where random effects apply):

* ``memoe``: K LMM experts, gate on the baseline covariates ``~ w1 + w2``;
* ``lmm``: one LMM (the K = 1 MEMoE, fitted by ML);
* ``moe``: K linear-regression experts (no random effects), the same gate;
* ``lclmm``: K LMM experts with constant class proportions (a latent-class mixed model, lcmm's ``hlme``
  without ``classmb``).

Parameters compared with the truth: every MEMoE parameter; for ``lclmm`` the experts (its gate has no
covariates); for ``moe`` the fixed effects and the gate (it has no random effects); none for ``lmm``.
Replicate ``b`` draws everything from the ``b``-th child of ``numpy.random.SeedSequence(seed)``, so the
results do not depend on ``n_jobs``.
"""

from __future__ import annotations

import math
import os
import time as _time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from memoe.core.arguments import check_int, check_optional_bool, check_seed
from memoe.errors import ArgumentError, ArgumentTypeError, MemoeError, MemoeWarning, caller_stacklevel
from memoe.metrics import adjusted_rand, match_labels
from memoe.moe.inference import compute_inference, natural_names, natural_values
from memoe.moe.multistart import _bar
from memoe.moe.wald import flat_names
from memoe.simulate import DEFAULTS, memoe_data

__all__ = ["MODELS", "SCENARIOS", "Scenario", "SimulationStudy", "simulation_study"]

FORMULA = "y ~ time + x + (time | id)"
GATING = "~ w1 + w2"
MODELS = ("memoe", "lmm", "moe", "lclmm")
# parts of each model's parameters that have a true counterpart (None: all)
_COMPARABLE: dict[str, set[str] | None] = {"memoe": None, "lclmm": {"fixed", "sd", "corr", "sigma"},
                                           "moe": {"fixed", "gating"}, "lmm": set()}


@dataclass(frozen=True)
class Scenario:
    """A data-generating MEMoE (the arguments of :func:`memoe.simulate.memoe_data`).

    Attributes
    ----------
    n_subjects : int
    k : int
        Number of latent classes; parameters left None come from :data:`memoe.simulate.DEFAULTS` (K <= 3).
    beta, gamma, sd, corr, sigma : list, optional
        True fixed effects (K x [intercept, time, x]), gate (K x [intercept, w1, w2], first row zero),
        random-effect SDs (K x 2), intercept-slope correlations (K) and residual SDs (K).
    visits : (int, int)
        Visits per subject, uniform on this range.
    time_range : (float, float)
    x_w1 : float
        Dependence of the time-varying covariate x on the gating covariate w1.
    re_dist : {"normal", "t"}
        ``"t"``: multivariate t random effects (``t_df`` df) with the same covariance (misspecified).
    t_df : float
    name : str

    Examples
    --------
    >>> from memoe import Scenario
    >>> data, truth = Scenario(n_subjects=50, k=2, name="small").simulate(seed=1)
    >>> data.columns.tolist()
    ['id', 'time', 'x', 'w1', 'w2', 'y', 'true_class']
    >>> data["id"].nunique()
    50
    """

    n_subjects: int = 300
    k: int = 2
    beta: list | None = None
    gamma: list | None = None
    sd: list | None = None
    corr: list | None = None
    sigma: list | None = None
    visits: tuple[int, int] = (4, 8)
    time_range: tuple[float, float] = (0.0, 4.0)
    x_w1: float = 0.4
    re_dist: str = "normal"
    t_df: float = 3.0
    name: str = "custom"

    def simulate(self, seed=None) -> tuple[pd.DataFrame, dict]:
        """One data set and its truth (:func:`memoe.simulate.memoe_data`)."""
        kw = asdict(self)
        kw.pop("name")
        return memoe_data(seed=seed, **kw)

    def truth(self) -> pd.Series:
        """True parameters named as MEMoE's ``params`` (``fixed[1]:time``, ``gating[2]:w1``, ``sigma[1]``, ...)."""
        return truth_params(self.simulate(seed=0)[1])


#: named scenarios: the K = 2 mixture of ``memoe_sim2`` (normal random effects, and t(3) random effects with the
#: same covariance, a misspecified model where the sandwich should keep its coverage) and a K = 3 mixture
SCENARIOS: dict[str, Scenario] = {
    "normal": Scenario(name="normal"),
    "t3": Scenario(re_dist="t", t_df=3.0, name="t3"),
    "k3": Scenario(n_subjects=500, k=3, name="k3"),
}


def truth_params(truth: dict) -> pd.Series:
    """True natural-scale parameters of :func:`memoe.simulate.memoe_data`'s ``truth``, named as ``fit.params``."""
    out: dict[str, float] = {}
    fx, gn = truth["names"]["fixed"], truth["names"]["gating"]
    for k in range(1, truth["K"]):
        for n, v in zip(gn, truth["gamma"][k], strict=True):
            out[f"gating[{k + 1}]:{n}"] = v
    for k in range(truth["K"]):
        for n, v in zip(fx, truth["beta"][k], strict=True):
            out[f"fixed[{k + 1}]:{n}"] = v
        out[f"sd[{k + 1}]:(Intercept)"] = truth["sd"][k][0]
        out[f"sd[{k + 1}]:time"] = truth["sd"][k][1]
        out[f"corr[{k + 1}]:(Intercept):time"] = truth["corr"][k]
        out[f"sigma[{k + 1}]"] = truth["sigma"][k]
    return pd.Series(out, name="truth", dtype=float)


def _as_scenario(scenario) -> Scenario:
    if scenario is None:
        return SCENARIOS["normal"]
    if isinstance(scenario, Scenario):
        return scenario
    if isinstance(scenario, str):
        if scenario not in SCENARIOS:
            raise ArgumentError(f"unknown scenario {scenario!r}; named scenarios are {list(SCENARIOS)}")
        return SCENARIOS[scenario]
    if isinstance(scenario, dict):
        fields = set(Scenario.__dataclass_fields__)
        unknown = sorted(set(scenario) - fields)
        if unknown:
            raise ArgumentError(f"scenario has unknown key(s) {unknown}; keys are {sorted(fields)}")
        return replace(Scenario(), **scenario)
    raise ArgumentTypeError(
        f"scenario must be a memoe.moe.simulation.Scenario, a dict of its fields, a name in {list(SCENARIOS)} or "
        f"None, got {type(scenario).__name__}"
    )


def _check_scenario(sc: Scenario) -> None:
    k = check_int(sc.k, "scenario k", minimum=1)
    check_int(sc.n_subjects, "scenario n_subjects", minimum=2)
    if k not in DEFAULTS and any(getattr(sc, f) is None for f in ("beta", "gamma", "sd", "corr", "sigma")):
        raise ArgumentError(f"scenario k = {k} has no default parameters (K <= 3); give beta, gamma, sd, corr, sigma")
    try:
        sc.simulate(seed=0)
    except ValueError as exc:  # memoe_data's shape and value checks
        raise ArgumentError(f"scenario: {exc}") from exc


def _build(name: str, data: pd.DataFrame, k: int):
    from memoe.moe.model import MEMoE, MoE

    if name == "memoe":
        return MEMoE(FORMULA, gating=GATING, k=k, data=data)
    if name == "lmm":
        return MEMoE(FORMULA, gating=None, k=1, data=data)
    if name == "moe":
        return MoE("y ~ time + x", gating=GATING, k=k, data=data, group="id")
    return MEMoE(FORMULA, gating=None, k=k, data=data)


def _matched(fit, true_class: np.ndarray, want_se: bool) -> tuple[pd.DataFrame, float, float]:
    """Estimates (and SEs) with the experts relabelled to the true classes; accuracy; ARI."""
    m = match_labels(fit, true_class)
    ari = adjusted_rand(fit, true_class)
    params = fit.estimates if m.order is None else fit.estimates.permute(m.order)
    model = fit.model
    md, st = model.mdesign, model.structure
    names = natural_names(st, md.fixef_names, md.z_names, md.gating_names)
    flat = flat_names(names)
    if want_se:
        inf = compute_inference(model.problem, params, names, st.names(md.fixef_names, md.z_names, md.gating_names))
        tab = inf.standard_errors()
        out = pd.DataFrame({"estimate": tab["estimate"].to_numpy(), "se_model": tab["se_model"].to_numpy(),
                            "se_sandwich": tab["se_robust"].to_numpy()}, index=flat)
    else:
        out = pd.DataFrame({"estimate": natural_values(st, params), "se_model": np.nan, "se_sandwich": np.nan},
                           index=flat)
    return out, m.accuracy, ari


@dataclass(frozen=True)
class _Task:
    scenario: Scenario
    models: tuple[str, ...]
    n_starts: int
    se: bool


def _one(task: _Task, rep: int, ss: np.random.SeedSequence) -> tuple[list[dict], list[dict]]:
    """One replicate: per-model rows (fit summaries) and per-parameter rows (estimates, SEs)."""
    rng = np.random.default_rng(ss)
    data_seed, fit_seed = (int(v) for v in rng.integers(0, 2**31 - 1, size=2))
    data, truth = task.scenario.simulate(seed=data_seed)
    true_class = np.asarray(truth["true_class"])
    tvec = truth_params(truth)
    K = truth["K"]
    fits_rows, par_rows = [], []
    for name in task.models:
        t0 = _time.perf_counter()
        row = {"rep": rep, "model": name}
        try:
            fit = _build(name, data, K).fit(n_starts=task.n_starts, seed=fit_seed, progress=False, se=False)
        except MemoeError as exc:
            row.update(failed=True, error=str(exc)[:200])
            fits_rows.append(row)
            continue
        comparable = _COMPARABLE[name]
        want_se = task.se and comparable != set()
        if name == "lmm":
            tab = None
            acc, ari = float(np.bincount(true_class).max() / len(true_class)), 0.0
        else:
            tab, acc, ari = _matched(fit, true_class, want_se)
        row.update(failed=False, loglik=float(fit.loglik), bic=float(fit.bic), icl=float(fit.icl),
                   accuracy=acc, ari=ari, converged=bool(fit.converged), seconds=_time.perf_counter() - t0)
        fits_rows.append(row)
        if tab is None:
            continue
        for key in tab.index:
            part = key.split("[", 1)[0]
            if key not in tvec.index or (comparable is not None and part not in comparable):
                continue
            par_rows.append({"rep": rep, "model": name, "parameter": key, "truth": float(tvec[key]),
                             **{c: float(tab.at[key, c]) for c in ("estimate", "se_model", "se_sandwich")}})
    return fits_rows, par_rows


def _run_chunk(task: _Task, start: int, seeds: list) -> tuple[int, list[dict], list[dict]]:
    fits, pars = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # per-replicate convergence warnings are recorded, not printed
        for b, ss in enumerate(seeds):
            f, p = _one(task, start + b, ss)
            fits += f
            pars += p
    return start, fits, pars


@dataclass(frozen=True)
class SimulationStudy:
    """Results of :func:`simulation_study`.

    Attributes
    ----------
    scenario : Scenario
    reps : int
    fits : pandas.DataFrame
        One row per replicate and model: ``loglik, bic, icl, accuracy, ari, converged, seconds, failed``.
    estimates : pandas.DataFrame
        One row per replicate, model and comparable parameter: ``truth, estimate, se_model, se_sandwich``.
    level : float
        Confidence level of the coverage columns.
    """

    scenario: Scenario
    reps: int
    fits: pd.DataFrame
    estimates: pd.DataFrame
    level: float = 0.95
    seed: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def parameters(self) -> pd.DataFrame:
        """Per model and parameter: ``truth, mean, bias, rmse, emp_sd, mean_se_model, mean_se_sandwich,
        coverage_model, coverage_sandwich, n`` (coverage of the Wald intervals ``estimate +- z se``)."""
        e = self.estimates
        if e.empty:
            return pd.DataFrame()
        z = _z(self.level)
        err = e["estimate"] - e["truth"]
        cover_m = (err.abs() <= z * e["se_model"]).where(e["se_model"].notna())
        cover_s = (err.abs() <= z * e["se_sandwich"]).where(e["se_sandwich"].notna())
        frame = e.assign(err=err, err2=err**2, cover_model=cover_m.astype(float), cover_sandwich=cover_s.astype(float))
        g = frame.groupby(["model", "parameter"], sort=False)
        out = pd.DataFrame({
            "truth": g["truth"].first(),
            "mean": g["estimate"].mean(),
            "bias": g["err"].mean(),
            "rmse": np.sqrt(g["err2"].mean()),
            "emp_sd": g["estimate"].std(ddof=1),
            "mean_se_model": g["se_model"].mean(),
            "mean_se_sandwich": g["se_sandwich"].mean(),
            "coverage_model": g["cover_model"].mean(),
            "coverage_sandwich": g["cover_sandwich"].mean(),
            "n": g["estimate"].size(),
        })
        return out

    @property
    def classification(self) -> pd.DataFrame:
        """Per model: mean MAP accuracy (after matching labels), its SD, mean adjusted Rand index."""
        f = self.fits[~self.fits["failed"]]
        g = f.groupby("model", sort=False)
        return pd.DataFrame({"accuracy": g["accuracy"].mean(), "accuracy_sd": g["accuracy"].std(ddof=1),
                             "ari": g["ari"].mean(), "n": g["accuracy"].size()})

    @property
    def bic_share(self) -> pd.DataFrame:
        """Per model: mean BIC and the share of replicates in which it has the lowest BIC of the models fitted."""
        f = self.fits[~self.fits["failed"]]
        wide = f.pivot(index="rep", columns="model", values="bic")
        wide = wide[[m for m in dict.fromkeys(f["model"])]]
        best = wide.idxmin(axis=1).dropna()
        share = best.value_counts().reindex(wide.columns, fill_value=0) / max(len(best), 1)
        return pd.DataFrame({"mean_bic": wide.mean(), "lowest_bic_share": share})

    @property
    def coverage(self) -> pd.DataFrame:
        """Per model: mean coverage over its compared parameters, model-based and sandwich."""
        p = self.parameters
        if p.empty:
            return pd.DataFrame()
        return p.groupby(level="model", sort=False)[["coverage_model", "coverage_sandwich"]].mean()

    def summary(self) -> str:
        """Printable tables: classification, BIC share, coverage, and the parameters."""
        with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_columns", 20,
                               "display.precision", 4):
            parts = [
                f"Simulation study: scenario {self.scenario.name!r} (N = {self.scenario.n_subjects}, K = "
                f"{self.scenario.k}, random effects {self.scenario.re_dist}), {self.reps} replicates, seed {self.seed}",
                "", "Classification (MAP, labels matched to the truth):", str(self.classification),
                "", "BIC:", str(self.bic_share),
                "", f"Coverage of {100 * self.level:g}% Wald intervals (mean over compared parameters):",
                str(self.coverage),
                "", "Parameters:", str(self.parameters),
            ]
        parts.extend(f"Note: {n}" for n in self.notes)
        return "\n".join(parts)

    def __repr__(self) -> str:
        models = list(self.fits["model"].unique())
        return f"SimulationStudy(scenario {self.scenario.name!r}, {self.reps} replicates, models {models})"

    def __str__(self) -> str:
        return self.summary()


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2.0))


def simulation_study(
    scenario=None,
    reps: int = 100,
    models=MODELS,
    seed: int | None = 1,
    *,
    n_starts: int = 5,
    se: bool = True,
    level: float = 0.95,
    n_jobs: int | None = None,
    progress: bool | None = None,
) -> SimulationStudy:
    """Simulate, fit MEMoE and its competitors, and summarise parameter recovery, coverage, accuracy and BIC.

    Parameters
    ----------
    scenario : Scenario, dict, str or None
        The data-generating model: a :class:`Scenario`, a dict of its fields (e.g.
        ``{"n_subjects": 500, "k": 3}``), a name in :data:`SCENARIOS` (``"normal"``, ``"t3"``, ``"k3"``) or
        None (``"normal"``: the K = 2 mixture of ``memoe_sim2``, 300 subjects, 4-8 irregular visits).
    reps : int, default 100
        Replicates.
    models : sequence of str
        Any of ``"memoe"``, ``"lmm"``, ``"moe"``, ``"lclmm"`` (see the module docstring).
    seed : int >= 0 or numpy.random.SeedSequence, default 1
    n_starts : int, default 5
        EM starts of each fit.
    se : bool, default True
        Compute model-based and sandwich SEs (for the coverage columns; the slowest part).
    level : float, default 0.95
        Confidence level of the coverage.
    n_jobs : int >= 1 or None
        Worker processes (None: all CPUs).
    progress : bool, optional
        tqdm bar over the replicates; None: shown when stderr is a terminal.

    Returns
    -------
    SimulationStudy
        ``.parameters`` (bias, RMSE, coverage per model and parameter), ``.classification`` (accuracy, ARI),
        ``.bic_share`` (mean BIC, share of replicates with the lowest BIC), ``.coverage``, the raw ``.fits``
        and ``.estimates``; ``print(study)`` shows them all.

    Raises
    ------
    ArgumentError, ArgumentTypeError
        An unknown model or scenario key, bad parameter shapes, or a bad ``reps``, ``seed``, ``n_jobs``.

    Examples
    --------
    >>> import memoe
    >>> study = memoe.simulation_study({"n_subjects": 150}, reps=4, n_starts=2)  # doctest: +SKIP
    >>> study.classification  # doctest: +SKIP

    Notes
    -----
    ``bias = mean(estimate - truth)``, ``rmse = sqrt(mean((estimate - truth)^2))``, coverage = share of
    replicates with ``|estimate - truth| <= z_{(1+level)/2} se``. Experts are matched to the true classes by the
    assignment maximising MAP agreement (:func:`memoe.metrics.match_labels`), the gate re-referenced to the
    matched first class and the SEs recomputed at the relabelled estimates. BIC uses log(number of subjects)
    for every model. R has no counterpart (the paper's simulation loop; flexmix / lcmm fits would be the
    competitors).
    """
    sc = _as_scenario(scenario)
    _check_scenario(sc)
    reps = check_int(reps, "reps", minimum=1)
    if isinstance(models, str):
        models = (models,)
    models = tuple(models)
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise ArgumentError(f"models must be a non-empty selection of {list(MODELS)}, got {list(models)}")
    if isinstance(seed, np.random.Generator):
        raise ArgumentTypeError("seed must be None, a non-negative integer or a numpy SeedSequence")
    seed = check_seed(seed)
    n_starts = check_int(n_starts, "n_starts", minimum=1)
    if not isinstance(se, bool):
        raise ArgumentTypeError(f"se must be True or False, got {se!r}")
    if not isinstance(level, float | int) or not 0 < float(level) < 1:
        raise ArgumentError(f"level must be a number strictly between 0 and 1, got {level!r}")
    if n_jobs is not None:
        n_jobs = check_int(n_jobs, "n_jobs", minimum=1)
    progress = check_optional_bool(progress, "progress")

    task = _Task(scenario=sc, models=models, n_starts=n_starts, se=se)
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    seeds = root.spawn(reps)
    workers = min((os.cpu_count() or 1) if n_jobs is None else n_jobs, reps)
    size = max(1, math.ceil(reps / (4 * workers)))
    starts = list(range(0, reps, size))
    chunks: dict[int, tuple[list, list]] = {}
    bar = _bar(reps, progress, "simulation study")
    try:
        if workers == 1:
            for s in starts:
                _, f, p = _run_chunk(task, s, seeds[s : s + size])
                chunks[s] = (f, p)
                bar.update(len(seeds[s : s + size]))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_run_chunk, task, s, seeds[s : s + size]) for s in starts]
                for fut in as_completed(futures):
                    s, f, p = fut.result()
                    chunks[s] = (f, p)
                    bar.update(len(seeds[s : s + size]))
    finally:
        bar.close()
    fit_rows = [r for s in sorted(chunks) for r in chunks[s][0]]
    par_rows = [r for s in sorted(chunks) for r in chunks[s][1]]
    fits = pd.DataFrame(fit_rows)
    for col in ("loglik", "bic", "icl", "accuracy", "ari", "seconds"):
        if col not in fits:
            fits[col] = np.nan
    estimates = pd.DataFrame(par_rows, columns=["rep", "model", "parameter", "truth", "estimate", "se_model",
                                                 "se_sandwich"])
    notes = []
    n_failed = int(fits["failed"].sum())
    if n_failed:
        notes.append(f"{n_failed} fit(s) failed and are left out")
        warnings.warn(f"simulation_study: {n_failed} of {len(fits)} fits failed; they are left out", MemoeWarning,
                      stacklevel=caller_stacklevel())
    return SimulationStudy(scenario=sc, reps=reps, fits=fits, estimates=estimates, level=float(level),
                           seed=seed if not isinstance(seed, np.random.SeedSequence) else None, notes=notes)

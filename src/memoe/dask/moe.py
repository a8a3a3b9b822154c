"""The Mixed-Effects Mixture of Experts on a Dask DataFrame: distributed ECM, Newton finish.

``memoe.MEMoE(formula, gating=..., k=..., data=ddf)`` dispatches here for a Dask DataFrame (Gaussian
experts). Set-up, on the workers: the partitions are aligned by subject (:mod:`memoe.dask.partition`),
the expert formula's spec is learned once (:mod:`memoe.dask.spec`) and the gate's encoding with it;
each partition then builds its subjects' :class:`~memoe.moe.data.SubjectStats` and gating rows (the
gating covariates are checked constant within subject, as in memory) and keeps them, persisted, as a
small in-memory :class:`~memoe.moe.problem.MoEProblem` of its own subjects (:class:`MoEPart`).

Estimation (the loop runs on the client; nothing per row or per subject comes back):

* starts -- random soft assignments drawn from a hash of (seed, start, subject id), so they do not
  depend on the row order or the partitioning (the in-memory and Dask fits see the same starts when
  given the same explicit ``start``; the random ones differ from the in-memory generator's);
* ECM (:mod:`memoe.moe.ecm`) -- one pass per iteration: every partition computes its E-step and the
  weighted sums of the closed-form conditional maximisations *for every start at once*; a tree
  reduction adds them and the client updates the parameters. The exploratory iterations of all
  starts share their passes; the best start continues with SQUAREM acceleration (a step is kept only
  if the log-likelihood does not fall below the plain ECM step's) until the in-memory stopping rule
  (:class:`memoe.moe.em.EMControl`) holds;
* Newton finish -- one pass returns the observed log-likelihood, the total score and the central
  differences of the score (the observed information, as :func:`memoe.moe.inference.compute_inference`
  computes it) and the sum of per-subject score outer products (the sandwich's meat); chord-Newton
  steps with that information (one score pass each, halved until the log-likelihood increases) take
  the ECM solution to the maximum at round-off level. The result's standard errors come from one more
  such pass at the final (canonically labelled) estimates.

R has no distributed mixture of mixed models; the estimates are those of :class:`memoe.MEMoE` in memory
(lcmm's ``hlme`` with ``classmb``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from memoe.core.arguments import check_bool, check_choice, check_int, check_optional_bool, check_seed, check_str
from memoe.dask.moe_parts import (
    _steps,
    _with_levels,
    part_counts,
    part_ecm,
    part_gram,
    part_init,
    part_moe,
    part_newton,
    part_score,
    part_ww,
)
from memoe.dask.result import DaskUnsupportedError
from memoe.errors import ArgumentError, ArgumentTypeError, DataError, FormulaError, warn
from memoe.moe.ecm import EcmLayout, check_ecm_structure, ecm_update, initial_from_sums
from memoe.moe.em import EMControl
from memoe.moe.params import MoEParams, check_start
from memoe.moe.structure import COV_OPTIONS, SIGMA_OPTIONS, Structure

__all__ = ["DaskMEMoE", "DaskMoEControl"]

@dataclass(frozen=True)
class DaskMoEControl:
    """Settings of the distributed fit.

    Attributes
    ----------
    short_iter : int
        ECM iterations of the exploratory runs (all starts share each pass).
    em : EMControl
        Stopping rule of the run to convergence (as in memory), ``max_iter`` counts ECM iterations.
    squarem : bool
        Accelerate the run to convergence by SQUAREM.
    newton_iter : int
        Newton iterations of the finish (0: none; standard errors then need one more pass).
    newton_tol : float
        The Newton finish stops when the decrement ``g'A^-1 g / 2`` is below ``newton_tol * (1 + |loglik|)`` or the
        step is below 1e-10 of every estimate's scale (round-off level).
    """

    short_iter: int = 20
    em: EMControl = field(default_factory=lambda: EMControl(max_iter=2000, tol=1e-8, tol_par=1e-4))
    squarem: bool = True
    newton_iter: int = 20
    newton_tol: float = 1e-20

    def __post_init__(self) -> None:
        check_int(self.short_iter, "DaskMoEControl.short_iter", minimum=0)
        check_int(self.newton_iter, "DaskMoEControl.newton_iter", minimum=0)
        check_bool(self.squarem, "DaskMoEControl.squarem")
        if not isinstance(self.em, EMControl):
            raise ArgumentTypeError(f"DaskMoEControl.em must be an EMControl, got {type(self.em).__name__}")


# ---------------------------------------------------------------------------------------------- partitions
class _Stats:
    """Handles on the persisted partitions and the tree reductions over them."""

    def __init__(self, ddf, design, gate, structure, kept: bool) -> None:
        import dask

        parts = ddf.to_delayed()
        stats = [dask.delayed(part_moe, pure=True)(p, design, gate, structure, kept) for p in parts]
        self.parts = list(dask.persist(*stats))
        self.round_trips = 0

    def reduce(self, fn, *args):
        import dask
        from memoe.dask.lmm import tree_reduce

        self.round_trips += 1
        return dask.compute(tree_reduce([dask.delayed(fn, pure=True)(s, *args) for s in self.parts]))[0]


@dataclass
class DaskMoEDesign:
    """What :class:`~memoe.moe.result.MEMoEResult` reads of a design, without rows or subjects."""

    design: object
    group: str
    fixef_names: list[str]
    z_names: list[str]
    gating_names: list[str]
    N: int
    n_dropped: int
    contrasts: dict

    def __getattr__(self, name):
        if name in ("subjects", "codes", "Z", "W", "stats", "pls", "data", "input_index", "input_rows", "row_index",
                    "used_rows", "align", "gating_spec"):
            raise DaskUnsupportedError(
                f"the per-row / per-subject design attribute {name!r} is not gathered from a Dask MEMoE fit "
                "(it lives on the workers); use the lazy outputs (posterior, classify, ranef, predict) or fit in "
                "memory")
        raise AttributeError(name)


class DaskMEMoE:
    """:class:`memoe.MEMoE` on a Dask DataFrame (Gaussian experts, one grouping factor); see :mod:`memoe.dask.moe`.

    Parameters
    ----------
    formula : str
        lme4 formula of each expert with the subject as its one grouping factor, ``"y ~ time + x + (time | id)"``.
    gating : str or None
        One-sided formula of baseline covariates (constant within subject), ``"~ w1 + w2"``.
    k : int
        Number of experts.
    data : dask.dataframe.DataFrame
        Partitions need not be aligned by subject (one shuffle aligns them).
    mixture, random_cov, sigma, order, contrasts
        As :class:`memoe.MEMoE` (``random_cov="proportional"`` is refused: no closed-form ECM update).
    progress : bool or None
        A tqdm bar over the passes (None: when stderr is a terminal, after 2 s).

    Notes
    -----
    R: ``lcmm::hlme(fixed, random, subject, ng = k, classmb = gating)``; the same estimates as the in-memory
    :class:`memoe.MEMoE` fit (tests/dask/test_dask_moe.py). Non-Gaussian experts, regression experts
    (:class:`memoe.MoE`), class-specific residual structures and Laplace-EM are refused on Dask.

    Examples
    --------
    >>> ddf = dd.read_parquet("visits/")                                                       # doctest: +SKIP
    >>> fit = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=3, data=ddf).fit(n_starts=10, seed=1)
    ... # doctest: +SKIP
    >>> fit.posterior            # a Dask DataFrame for many subjects                        # doctest: +SKIP
    """

    laplace = False
    response_family = None
    nAGQ = 1
    family_name = "gaussian"

    def __init__(self, formula: str, gating: str | None = None, k: int = 2, data=None, *, mixture: str | None = None,
                 random_cov: str = "class", sigma: str = "class", group: str | None = None,
                 order: str | None = "intercept", mstep=None, contrasts=None, family=None, laplace: bool = False,
                 progress: bool | None = None, **kwargs) -> None:
        from memoe.dask.partition import align_by_subject
        from memoe.dask.spec import aliased_from_gram, learn_design
        from memoe.moe.multistart import ORDER_RULES

        formula = check_str(formula, "formula", "y ~ time + (time | id)")
        if family not in (None, "gaussian"):
            raise DaskUnsupportedError(
                f"family={family!r}: MEMoE on a Dask DataFrame fits Gaussian experts only, whose E-step and M-step are "
                "closed-form sums over subjects (one pass per ECM iteration); Laplace-EM experts need a numerical "
                "M-step with many passes per iteration. Fit binomial / Poisson experts in memory")
        if laplace:
            raise DaskUnsupportedError("laplace=True (the generic Laplace-EM path) is not available on Dask; "
                                       "Gaussian experts use the exact closed-form ECM there")
        unknown = sorted(kwargs)
        if unknown:
            raise DaskUnsupportedError(
                f"argument(s) {unknown} (e.g. class-specific residual structures) are not supported on a Dask "
                "DataFrame: the distributed ECM has closed-form updates for independent residuals only; fit in memory")
        if group is not None and "|" not in formula:
            raise DaskUnsupportedError("regression experts (memoe.MoE, group=) are not supported on Dask: give the "
                                       "expert formula a (terms | subject) part, or fit in memory")
        if mstep is not None:
            raise DaskUnsupportedError("mstep= sets the in-memory BOBYQA M-step; the Dask fit's ECM has no such step")
        k = check_int(k, "k", minimum=1)
        check_choice(random_cov, "random_cov", COV_OPTIONS)
        check_choice(sigma, "sigma", SIGMA_OPTIONS)
        check_choice(order, "order", ORDER_RULES)
        self.formula, self.gating, self.k, self.mixture = formula, gating, int(k), mixture
        self.random_cov, self.sigma_option, self.order = random_cov, sigma, order
        self.progress = check_optional_bool(progress, "progress")
        self.data_in = data  # predict(newdata) recognises the fitted data by identity
        design = learn_design(data, formula, contrasts)
        if "offset(" in design.spec.fixed:
            from memoe.dask.spec import DaskFormulaError

            raise DaskFormulaError("offset() terms are not supported with a Dask DataFrame; fit in memory")
        gate = _learn_gate(data, gating, design, contrasts)
        ddf, self.shuffled = align_by_subject(data, design.group)
        self.ddf = ddf
        self.gate = gate
        # first pass: counts, Gram of every formulaic column (aliasing), constant gating covariates
        first = _Stats(ddf, design, gate, None, kept=False)
        n, n_dropped, N = (int(v) for v in first.reduce(part_counts))
        gram = first.reduce(part_gram)
        p_all = len(design.fixed_names_all)
        drop = aliased_from_gram(gram[:p_all, :p_all]) if n else []
        if drop:
            from memoe.errors import RankDeficiencyWarning

            design.dropped = [design.fixed_names_all[j] for j in drop]
            design.kept = np.array([j for j in range(p_all) if j not in drop], dtype=int)
            warn(f"fixed-effect model matrix is rank deficient so dropping {len(drop)} column(s) / coefficient(s): "
                 f"{design.dropped}", RankDeficiencyWarning)
            idx = np.append(design.kept, p_all)
            gram = gram[np.ix_(idx, idx)]
        design.n, design.n_dropped, design.nlevels = n, n_dropped, N
        if n == 0:
            raise DataError(f"no rows left after removing {n_dropped} rows with missing values")
        self.design = design
        self.contrasts = {**design.contrasts, **gate["contrasts"]}
        specific = self._specific_mask(mixture, design.fixef_names, data)
        q = design.q
        tmap = design.theta_map
        self.structure = Structure(K=self.k, p=design.p, q=q, r=len(gate["names"]), specific=specific,
                                   cov=random_cov if self.k > 1 else "class", sigma=sigma if self.k > 1 else "class",
                                   rows=tmap.row, cols=tmap.col)
        check_ecm_structure(self.structure)
        _check_sizes(self.k, N, design.p)
        self.mdesign = DaskMoEDesign(design=design, group=design.group, fixef_names=design.fixef_names,
                                     z_names=list(design.columns), gating_names=list(gate["names"]), N=N,
                                     n_dropped=n_dropped, contrasts=self.contrasts)
        self.stats = _Stats(ddf, design, gate, self.structure, kept=True)
        WW = self.stats.reduce(part_ww)
        if np.linalg.matrix_rank(WW) < WW.shape[0]:
            raise DataError(f"the gating design {gating!r} is rank deficient over subjects (columns {gate['names']})")
        self.sigma_floor = _floor_from_gram(gram, n)
        _check_response(gram, n, design.spec.response)

    # ------------------------------------------------------------------
    def _specific_mask(self, mixture, names: list[str], data) -> np.ndarray:
        if mixture is None:
            return np.ones(len(names), dtype=bool)
        from memoe.core.design.fixed import model_matrix_with_contrasts

        mixture = check_str(mixture, "mixture", "~ time")
        rhs = mixture.split("~", 1)[-1].strip() or "1"
        head = data.head(50)
        _, _, wanted, _ = model_matrix_with_contrasts(rhs, head, self.contrasts, "the mixture formula")
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise FormulaError(f"mixture terms {unknown} are not fixed effects of {self.formula!r} (these are {names})")
        return np.array([nm in wanted for nm in names], dtype=bool)

    @property
    def n_subjects(self) -> int:
        return self.mdesign.N

    @property
    def round_trips(self) -> int:
        """Reductions (client <-> workers round trips) since the statistics were persisted."""
        return self.stats.round_trips

    # ------------------------------------------------------------------ passes
    def _ecm(self, params_list: list[MoEParams]) -> np.ndarray:
        lay = EcmLayout(self.structure.K, self.structure.p, self.structure.q, self.structure.r)
        return self.stats.reduce(part_ecm, params_list, lay.size)

    def _update(self, v: np.ndarray, params: MoEParams) -> MoEParams:
        return ecm_update(v, params, self.structure, self.sigma_floor)

    def fit(self, n_starts: int = 20, seed: int | None = None, *, start: MoEParams | None = None,
            control: DaskMoEControl | None = None, tol: float | None = None, maxiter: int | None = None,
            se: bool = True, progress: bool | None = None, **kwargs):
        """Estimate by distributed multi-start ECM with a Newton finish (see the module docstring).

        Parameters
        ----------
        n_starts : int
            Random starts (hashed soft assignments, reproducible across partitionings).
        seed : int >= 0, optional
            Seeds the hashed starts (None: 0).
        start : MoEParams, optional
            An explicit start, run in addition (the same start gives the in-memory fit's solution).
        control : DaskMoEControl, optional
        tol, maxiter : optional
            Override ``control.em.tol`` and ``control.em.max_iter``.
        se : bool
            Accepted for the in-memory signature (the information comes with the Newton finish).
        progress : bool, optional

        Returns
        -------
        DaskMEMoEResult
        """
        import dataclasses

        from memoe.core.optim.progress import EvaluationBar

        if kwargs:
            raise DaskUnsupportedError(f"fit argument(s) {sorted(kwargs)} are not supported on a Dask MEMoE fit")
        n_starts = check_int(n_starts, "n_starts", minimum=1)
        seed = check_seed(seed)
        if seed is not None and not isinstance(seed, int | np.integer):
            raise ArgumentTypeError("seed must be an integer >= 0 on Dask (the starts hash it with the subject ids)")
        seed = int(seed or 0)
        check_bool(se, "se")
        ctl = control or DaskMoEControl()
        if not isinstance(ctl, DaskMoEControl):
            raise ArgumentTypeError(f"control must be a memoe.dask.moe.DaskMoEControl, got {type(ctl).__name__}")
        em = ctl.em
        if tol is not None:
            em = dataclasses.replace(em, tol=float(tol))
        if maxiter is not None:
            em = dataclasses.replace(em, max_iter=check_int(maxiter, "maxiter", minimum=1))
        ctl = dataclasses.replace(ctl, em=em)
        if start is not None:
            check_start(start, self.structure)
        show = self.progress if progress is None else check_optional_bool(progress, "progress")
        bar = EvaluationBar(show, f"dask MEMoE k={self.k}")
        rt0 = self.round_trips
        try:
            fit = _fit(self, n_starts, seed, start, ctl, bar)
        finally:
            bar.close()
        fit.round_trips = self.round_trips - rt0
        from memoe.dask.moe_result import DaskMEMoEResult

        return DaskMEMoEResult(self, fit)

    def __repr__(self) -> str:
        return (f"DaskMEMoE({self.formula!r}, gating={self.gating!r}, k={self.k}, subjects={self.n_subjects}, "
                f"random_cov={self.random_cov!r}, sigma={self.sigma_option!r})")


def _check_sizes(k: int, N: int, p: int) -> None:
    if N < 2:
        raise DataError(f"{N} subject(s) after removing rows with missing values; a mixture needs several")
    per = max(2, p)
    if k > 1 and (k >= N or k * per > N):
        raise ArgumentError(
            f"k = {k} experts need at least k * max(2, p) = {k * per} subjects (p = {p} fixed effects), the data have "
            f"{N}; use fewer experts")


def _floor_from_gram(gram: np.ndarray, n: int) -> float:
    """The in-memory residual-SD floor (1e-5 of the pooled OLS residual SD) from the total ``[X y]'[X y]``."""
    p = gram.shape[0] - 1
    XX, Xy, yy = gram[:p, :p], gram[:p, p], gram[p, p]
    b = np.linalg.lstsq(XX, Xy, rcond=None)[0]
    sd = math.sqrt(max(float(yy - b @ Xy), 0.0) / max(float(n), 1.0))
    return 1e-5 * sd if sd > 0 else 1e-300


def _check_response(gram: np.ndarray, n: int, name: str) -> None:
    """A constant response (zero variance about its mean) gives an unbounded likelihood (as in memory)."""
    p = gram.shape[0] - 1
    yy = gram[p, p]
    # the intercept column (if any) carries sum y; without it use the mean of squares test only
    if n and yy <= 0:
        raise DataError(f"the response {name!r} is identically 0: a mixture of Gaussian experts fits it with zero "
                        "residual variance and an unbounded likelihood; there is nothing to cluster")


def _learn_gate(ddf, gating: str | None, design, contrasts) -> dict:
    """The gate's encoding: variables, global factor levels and formulaic spec fitted on a head of the subjects."""
    from memoe.core.design.fixed import model_matrix_with_contrasts
    from memoe.core.design.frame import formula_variables
    from memoe.moe.data import _gating_rhs

    if gating is not None:
        gating = check_str(gating, "gating", "~ w1 + w2")
    rhs = _gating_rhs(gating)
    if rhs is None:
        return {"vars": [], "spec": None, "names": ["(Intercept)"], "levels": {}, "contrasts": {}}
    gvars = formula_variables(rhs, "the gating formula")
    missing = [c for c in [*gvars, design.group] if c not in ddf.columns]
    if missing:
        raise DataError(f"unknown column(s) {missing} (gating covariates / subject); the data have {list(ddf.columns)}")
    levels = {}
    for c in gvars:
        dt = ddf.dtypes[c]
        if pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt):
            continue
        if isinstance(dt, pd.CategoricalDtype) and dt.categories is not None and len(dt.categories):
            levels[c] = (list(dt.categories), bool(dt.ordered))
        else:
            levels[c] = (sorted(ddf[c].dropna().unique().compute().tolist()), False)
    clean = ddf[[*gvars, design.group]].dropna()
    # the lowered partition count: read_parquet fuses files once the columns are projected
    head = clean.head(5000, npartitions=min(clean.optimize().npartitions, 10))
    if len(head) == 0:
        raise DataError("no row with every gating covariate present in the first partitions of the Dask DataFrame")
    head = _with_levels(head.drop_duplicates(design.group), levels)
    user = {c: v for c, v in (contrasts or {}).items() if c in gvars}
    _, spec, names, used = model_matrix_with_contrasts(rhs, head, user, "the gating design")
    from memoe.dask.spec import _stateful

    if _stateful(spec):
        from memoe.dask.spec import DaskFormulaError

        raise DaskFormulaError(f"the gating formula {gating!r} uses stateful transform(s) {_stateful(spec)} that would "
                               "learn from a head of the data on Dask; compute the column first")
    return {"vars": gvars, "spec": spec, "names": list(names), "levels": levels, "contrasts": dict(used)}


# ---------------------------------------------------------------------------------------------- the fit
@dataclass
class DaskFitState:
    """Outcome of the distributed fit (small: parameters, traces, reduced matrices)."""

    params: MoEParams
    loglik: float
    trace: list[float]
    n_iter: int
    converged: bool
    empty: list[int]
    max_decrease: float
    starts: pd.DataFrame
    newton_iter: int = 0
    score: np.ndarray | None = None
    round_trips: int = 0
    seconds_per_iter: float = float("nan")


def _mass(v: np.ndarray, st: Structure) -> np.ndarray:
    lay = EcmLayout(st.K, st.p, st.q, st.r)
    return np.array([v[k * lay.per_expert] for k in range(st.K)])


def _loglik(v: np.ndarray, st: Structure) -> float:
    return float(v[st.K * EcmLayout(st.K, st.p, st.q, st.r).per_expert])


def _fit(model: DaskMEMoE, n_starts: int, seed: int, start: MoEParams | None, ctl: DaskMoEControl, bar):
    import time

    st = model.structure
    lay = EcmLayout(st.K, st.p, st.q, st.r)
    min_mass = ctl.em.min_mass if ctl.em.min_mass is not None else max(2.0, float(st.p))
    ids = list(range(n_starts)) if st.K > 1 else [0]
    init = model.stats.reduce(part_init, seed, ids, st.K, lay.size)
    bar.update(0.0)
    current = [initial_from_sums(init[j], st, model.sigma_floor) for j in range(len(ids))]
    labels = [f"hash{j}" for j in ids]
    if start is not None:
        current.append(MoEParams(gamma=np.asarray(start.gamma, float), beta=np.asarray(start.beta, float),
                                 L=np.asarray(start.L, float), sigma=np.asarray(start.sigma, float)))
        labels.append("user")
    S = len(current)
    traces: list[list[float]] = [[] for _ in range(S)]
    alive = np.ones(S, dtype=bool)
    empty: list[list[int]] = [[] for _ in range(S)]
    last_v: list[np.ndarray | None] = [None] * S
    # exploratory ECM: every start advances in the same passes
    short = ctl.short_iter if st.K > 1 and S > 1 else 0
    for _ in range(short):
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            break
        V = model._ecm([current[i] for i in idx])
        bar.update(-max(V[:, st.K * lay.per_expert]))
        for row, i in enumerate(idx):
            v = V[row]
            traces[i].append(_loglik(v, st))
            last_v[i] = v
            mass = _mass(v, st)
            if st.K > 1 and np.any(mass < min_mass):
                empty[i] = [int(k) for k in np.flatnonzero(mass < min_mass)]
                alive[i] = False
                continue
            current[i] = model._update(v, current[i])
    finals = [t[-1] if t else -np.inf for t in traces]
    ok = [i for i in range(S) if not empty[i] and np.isfinite(finals[i])] or list(range(S))
    # the best exploratory run continues (without exploration: the first start, the user's when it is alone)
    best = max(ok, key=lambda i: finals[i]) if short else ok[0]
    starts = pd.DataFrame({"strategy": labels, "short_loglik": finals, "empty": [bool(e) for e in empty]})
    t0 = time.perf_counter()
    params, trace, n_iter, converged, emp, maxdec = _run_to_convergence(model, current[best], ctl, min_mass, bar)
    t1 = time.perf_counter()
    state = DaskFitState(params=params, loglik=trace[-1], trace=traces[best] + trace, n_iter=short + n_iter,
                         converged=converged, empty=emp, max_decrease=maxdec, starts=starts)
    state.seconds_per_iter = (t1 - t0) / max(n_iter, 1)
    if not emp and ctl.newton_iter > 0:
        _newton(model, state, ctl, bar)
    starts["best"] = [i == best for i in range(S)]
    return state


def _run_to_convergence(model: DaskMEMoE, x0: MoEParams, ctl: DaskMoEControl, min_mass: float, bar):
    """ECM (SQUAREM-accelerated) to the in-memory stopping rule; returns params, trace, iterations, flags."""
    st = model.structure
    em = ctl.em
    trace: list[float] = []
    maxdec = 0.0
    n_iter = 0

    def ecm_map(x: MoEParams):
        v = model._ecm([x])[0]
        ll = _loglik(v, st)
        bar.update(-ll)
        mass = _mass(v, st)
        emp = [int(k) for k in np.flatnonzero(mass < min_mass)] if st.K > 1 else []
        return ll, (model._update(v, x) if not emp else x), emp

    ll0, x1, emp = ecm_map(x0)
    trace.append(ll0)
    if emp:
        return x0, trace, 0, False, emp, 0.0
    while n_iter < em.max_iter:
        ll1, x2, emp = ecm_map(x1)
        n_iter += 1
        maxdec = max(maxdec, ll0 - ll1)
        trace.append(ll1)
        if emp:
            return x1, trace, n_iter, False, emp, maxdec
        # the in-memory rule on the plain ECM step x0 -> x1
        if abs(ll1 - ll0) / (1.0 + abs(ll1)) < em.tol and x1.distance(x0) < em.tol_par:
            return x1, trace, n_iter, True, [], maxdec
        if not ctl.squarem or n_iter + 1 >= em.max_iter:
            x0, ll0, x1 = x1, ll1, x2
            continue
        p0, p1, p2 = st.pack(x0), st.pack(x1), st.pack(x2)
        r, v = p1 - p0, p2 - 2.0 * p1 + p0
        nv = float(np.linalg.norm(v))
        alpha = -float(np.linalg.norm(r)) / nv if nv > 0 else -1.0
        alpha = min(alpha, -1.0)
        xp = st.unpack(p0 - 2.0 * alpha * r + alpha**2 * v)
        if np.all(np.isfinite(st.pack(xp))) and np.all(xp.sigma >= model.sigma_floor):
            llp, xnext, emp = ecm_map(xp)
            n_iter += 1
            # keep the extrapolation only if it is no worse than the plain step's point x1 (monotone sequence)
            if np.isfinite(llp) and llp >= ll1 and not emp:
                trace.append(llp)
                x0, ll0, x1 = xp, llp, xnext
                continue
        x0, ll0, x1 = x1, ll1, x2
    return x0, trace, n_iter, False, [], maxdec


def _newton(model: DaskMEMoE, state: DaskFitState, ctl: DaskMoEControl, bar) -> None:
    """Newton (chord) steps on the observed log-likelihood: the information once, then one score pass per step.

    The central-difference information costs 2d score evaluations per subject; near the maximum (after ECM)
    it changes little, so it is computed at the start and reused (the chord method: each step contracts the
    error by a factor of order the distance to the maximum). It is recomputed when a step fails to ascend.
    """
    st = model.structure
    d = st.size
    rel = 1e-5

    def information(psi):
        # forward differences: the chord steps only need an approximate information (half the cost)
        out = model.stats.reduce(part_newton, psi, rel, False)
        pert = out[1 + d : 1 + d + 2 * d * d].reshape(2 * d, d)
        h = _steps(psi, rel)
        H = np.column_stack([(pert[2 * j] - pert[2 * j + 1]) / h[j] for j in range(d)])
        bar.update(-float(out[0]))
        return float(out[0]), out[1 : 1 + d], -(H + H.T) / 2.0

    def score(psi):
        out = model.stats.reduce(part_score, psi)
        bar.update(-float(out[0]))
        return float(out[0]), out[1:]

    psi = st.pack(state.params)
    ll, g, A = information(psi)
    fresh = True
    converged = False
    it = 0
    while it < ctl.newton_iter:
        it += 1
        try:
            c = np.linalg.cholesky(A)
            step = np.linalg.solve(c.T, np.linalg.solve(c, g))
        except np.linalg.LinAlgError:
            break  # not at a maximum's basin (saddle or boundary): keep the ECM solution
        dec = 0.5 * float(g @ step)
        # a step below 1e-10 of every estimate's scale is at round-off
        if dec < ctl.newton_tol * (1.0 + abs(ll)) or np.max(np.abs(step) / (np.abs(psi) + 1e-2)) < 1e-10:
            converged = True
            break
        t, accepted = 1.0, False
        for _half in range(20):
            cand = psi + t * step
            x = st.unpack(cand)
            if np.all(np.isfinite(cand)) and np.all(x.sigma >= model.sigma_floor):
                ll2, g2 = score(cand)
                if np.isfinite(ll2) and ll2 >= ll:
                    psi, ll, g, accepted = cand, ll2, g2, True
                    state.trace.append(ll)
                    break
            t *= 0.5
            if not fresh:
                break  # a stale information: recompute it rather than halving
        if not accepted:
            if fresh:
                converged = dec < 1e-8 * (1.0 + abs(ll))  # no ascent left at rounding level
                break
            ll, g, A = information(psi)
            fresh = True
            continue
        fresh = False
    state.params = st.unpack(psi)
    state.loglik = ll
    state.newton_iter = it
    state.score = g
    state.converged = bool(state.converged or converged)

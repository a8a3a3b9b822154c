"""The Mixed-Effects Mixture of Experts: ``memoe.MEMoE(formula, gating=..., k=..., data=...)``.

Subject i with baseline covariates w_i belongs to latent expert z_i with
``P(z_i = k | w_i) = softmax_k(w_i' gamma_k)`` (``gamma_1 = 0``); given ``z_i = k``,
``y_i ~ N(X_i beta_k, Z_i G_k Z_i' + sigma_k^2 I)``, a full linear mixed model. Estimation is
multi-start EM with each subject's exact marginal likelihood in the E-step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import warnings

import numpy as np
import pandas as pd

from memoe.core.arguments import (
    check_bool,
    check_choice,
    check_int,
    check_optional_bool,
    check_positive_float,
    check_seed,
    check_str,
)
from memoe.core.design.fixed import model_matrix_with_contrasts
from memoe.core.frames import to_pandas
from memoe.core.linalg.threads import blas_threads
from memoe.errors import (
    ArgumentError,
    ArgumentTypeError,
    ConvergenceWarning,
    EmptyExpertWarning,
    FormulaError,
    caller_stacklevel,
)
from memoe.glmm.families import Family
from memoe.moe.data import MoEDesign, build_moe_design, check_response
from memoe.moe.experts import GaussianExpert, MStepControl
from memoe.moe.laplace import LaplaceExpert, check_nagq, resolve_family
from memoe.moe.multistart import ORDER_RULES, MultiStartControl, canonical_order, fit_multistart
from memoe.moe.params import MoEParams, check_start
from memoe.moe.problem import MoEProblem
from memoe.moe.result import MEMoEResult
from memoe.moe.structure import COV_OPTIONS, SIGMA_OPTIONS, Structure
from memoe.moe.structured import StructuredProblem, StructuredStructure, build_structured_expert, structure_labels

__all__ = ["DegenerateExpertWarning", "MEMoE", "MoE"]


class DegenerateExpertWarning(EmptyExpertWarning):
    """An expert's residual SD reached its floor: it fits a handful of subjects exactly (unbounded likelihood)."""



class MEMoE:
    """Mixed-Effects Mixture of Experts: a gate of baseline covariates routes subjects to K LMM experts.

    Parameters
    ----------
    formula : str
        lme4 formula of each expert with one grouping factor (the subject),
        e.g. ``"y ~ time + x + (time | id)"``.
    gating : str or None
        One-sided formula of baseline (within-subject constant) covariates, e.g. ``"~ w1 + w2"``.
        None: constant class proportions (a latent-class mixed model, as lcmm's hlme without classmb).
    k : int
        Number of experts; ``k = 1`` is the single LMM fitted by maximum likelihood.
    data : pandas.DataFrame
    mixture : str, optional
        One-sided formula of the class-specific fixed effects (lcmm's ``mixture``), e.g. ``"~ time"``
        (intercept and time class-specific, the other fixed effects shared). Default: all class-specific.
    random_cov : {"class", "common", "proportional"}
        Random-effects covariance per expert, shared, or ``G_k = omega_k^2 G_1`` (lcmm's ``nwg``).
    sigma : {"class", "common"}
        Residual variance per expert or shared.
    group : str, optional
        Subject column when the formula has no random-effects term (regression experts).
    order : {"intercept", "size", None}
        Canonical labelling of the experts after the fit (see
        :func:`memoe.moe.multistart.canonical_order`): by increasing class-specific intercept
        (default), by decreasing size, or as estimated.
    mstep : MStepControl, optional
        Settings of each expert's BOBYQA M-step.
    contrasts : dict, optional
        R's ``contrasts=``: factor column -> ``"treatment"``, ``"sum"``, ``"helmert"`` or ``"poly"``,
        for the expert, gating and mixture formulas alike. Default (None) is R's: treatment for
        unordered factors, poly for ordered Categoricals.
    family : {None, "gaussian", "binomial", "poisson"} or memoe.glmm.families.Family
        Response family of the experts. None / ``"gaussian"``: linear mixed-model experts with the exact
        marginal likelihood. ``"binomial"`` (0/1 outcomes or proportions, logit link) and ``"poisson"``
        (counts, log link), or a :class:`~memoe.glmm.families.Family` with another link: GLMM experts
        (glmer's), fitted by Laplace-EM (see :meth:`fit`'s ``nAGQ``); they have no residual SD.
    laplace : bool
        Run Gaussian experts through the generic Laplace-EM machinery (exact for a Gaussian response,
        the same estimates as the default path, slower; for checking). Implied by a non-Gaussian family.
    correlation : memoe.marginal correlation structure, optional
        nlme's residual correlation within a subject (``AR1()``, ``CAR1("time")``, ``ARMA(p, q)``,
        ``CompSymm()``, ``Symm()``, spatial ``Exp("time")``, ...), with its own parameters in every expert
        (class-specific ``Phi_k``). Its group must be None or the subject factor.
    weights : memoe.marginal variance function, optional
        nlme's residual variance function (``VarIdent("visit")``, ``VarPower("time")``, ``VarExp``,
        ``VarConstPower``, ``VarFixed``, ``VarComb``), class-specific SD ratios. Functions of the fitted
        values are refused (they depend on the latent class). With ``correlation`` / ``weights`` each expert
        is ``y_i ~ N(X_i beta_k, Z_i G_k Z_i' + sigma_k^2 S_ik C_ik S_ik)`` (memoe.lme's marginal
        likelihood; :mod:`memoe.moe.structured`); Gaussian, class-specific experts only.

    Notes
    -----
    Laplace-EM (non-Gaussian experts): the E-step uses each expert's Laplace approximation of every
    subject's marginal likelihood (adaptive Gauss-Hermite with ``nAGQ > 1`` nodes for one scalar random
    effect), batched over subjects and experts (:mod:`memoe.moe.laplace`); the M-step maximises the
    posterior-weighted approximate log-likelihood over all experts' parameters by L-BFGS with its exact
    gradient. EM is monotone in the approximate log-likelihood; a decrease beyond round-off is
    reported by a :class:`~memoe.errors.ConvergenceWarning`. R has no MEMoE; each expert is
    ``lme4::glmer(..., nAGQ)`` with per-subject weights.

    R equivalent
    ------------
    ``lcmm::hlme(fixed, mixture = , random = , subject = , ng = k, classmb = gating)`` (the latent-class
    mixed model; ``random_cov="proportional"`` is ``nwg = TRUE``) and ``flexmix`` with
    ``FLXMRlmm`` experts and a ``FLXPmultinom`` concomitant model.

    Examples
    --------
    >>> import memoe
    >>> df, truth = memoe.simulate.memoe_data(200, k=2, seed=3)
    >>> fit = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=df).fit(n_starts=4, seed=1)
    >>> fit.posterior.shape
    (200, 2)

    Binary or count outcomes (Laplace-EM; ``nAGQ > 1`` for a random intercept only)::

        fit = memoe.MEMoE("adherent ~ month + dose + (month | id)", gating="~ age + sex", k=3, data=df,
                          family="binomial").fit(n_starts=20, seed=1)
        fit.ranef[2]["id"]          # conditional modes if the subject belongs to expert 2
        fit.predict(type="response")

    Class-specific AR(1) serial correlation and SD ratios by visit (R: ``nlme::lme`` per expert)::

        from memoe.marginal import AR1, VarIdent
        fit = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=3, data=df,
                          correlation=AR1(), weights=VarIdent("visit")).fit(n_starts=10, seed=1)
        fit.params.filter(like="cor[")      # Phi of every expert
    """

    def __new__(cls, formula=None, gating=None, k=2, data=None, *args, **kwargs):
        from memoe.dask import is_dask_dataframe

        if is_dask_dataframe(data):  # out of core on Dask (memoe.dask.moe), imported only for Dask input
            from memoe.dask.moe import DaskMEMoE

            return DaskMEMoE(formula, gating, k, data, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        formula: str,
        gating: str | None = None,
        k: int = 2,
        data: pd.DataFrame | None = None,
        *,
        mixture: str | None = None,
        random_cov: str = "class",
        sigma: str = "class",
        group: str | None = None,
        order: str | None = "intercept",
        mstep: MStepControl | None = None,
        contrasts: dict[str, str] | None = None,
        family=None,
        laplace: bool = False,
        correlation=None,
        weights=None,
    ) -> None:
        formula = check_str(formula, "formula", "y ~ time + (time | id)")
        if gating is not None:
            gating = check_str(gating, "gating", "~ w1 + w2")
        if mixture is not None:
            mixture = check_str(mixture, "mixture", "~ time")
        if group is not None:
            group = check_str(group, "group", "id")
        if data is None:
            raise ArgumentTypeError("data must be given: a pandas DataFrame with the response, covariates and subject")
        data = to_pandas(data, "data")  # polars / pyarrow tables give the numbers of the pandas one
        k = check_int(k, "k", minimum=1)  # the number of experts
        check_choice(random_cov, "random_cov", COV_OPTIONS)
        check_choice(sigma, "sigma", SIGMA_OPTIONS)
        check_choice(order, "order", ORDER_RULES)
        laplace = check_bool(laplace, "laplace")
        if family is not None and not isinstance(family, (str, Family)):
            raise ArgumentTypeError(
                f"family must be None, 'gaussian', 'binomial', 'poisson' or a memoe.glmm.families.Family, "
                f"got {type(family).__name__}"
            )
        self.response_family: Family | None = resolve_family(family)
        self.laplace = laplace or self.response_family is not None
        # class-specific residual structures (memoe.moe.structured): the marginal path of Gaussian experts
        self.correlation, self.weights = correlation, weights
        self.structured = correlation is not None or weights is not None
        if self.structured:
            _check_structured_options(self.laplace, k, mixture, random_cov, sigma)
        self.nAGQ = 1
        if mstep is not None and not isinstance(mstep, MStepControl):
            raise ArgumentTypeError(
                f"mstep must be a memoe.moe.experts.MStepControl or None, got {type(mstep).__name__}"
            )
        self.formula = formula
        self.gating = gating
        self.k = int(k)
        self.mixture = mixture
        self.random_cov = random_cov
        self.sigma_option = sigma
        self.order = order
        self.mdesign: MoEDesign = build_moe_design(formula, data, gating, group, contrasts=contrasts)
        # the contrast of every factor of the expert and gating formulas; the codec saves it
        self.contrasts: dict[str, str] = dict(self.mdesign.contrasts)
        md = self.mdesign
        if self.response_family is None:
            check_response(md)
        _check_k(self.k, md)
        specific = self._specific_mask(mixture, data)
        tmap = md.design.theta_map
        q = md.Z.shape[1]
        self.structure = Structure(
            K=self.k,
            p=md.design.p,
            q=q,
            r=md.W.shape[1],
            specific=specific,
            cov=random_cov if self.k > 1 else "class",
            sigma=sigma if self.k > 1 else "class",
            rows=tmap.row if q else np.zeros(0, dtype=int),
            cols=tmap.col if q else np.zeros(0, dtype=int),
            dispersion=self.response_family is None,
        )
        if mstep is None and self.k == 1:
            # one expert: the M-step is the whole ML fit, so use the LMM's own tight tolerances
            mstep = MStepControl(maxeval=100_000, ftol_abs=1e-12, xtol_abs=1e-10)
        if self.structured:
            expert = build_structured_expert(md, correlation, weights, mstep)
            names, labels, natural = structure_labels(expert)
            self.structure = StructuredStructure(
                **{f.name: getattr(self.structure, f.name) for f in dataclasses.fields(Structure)},
                extra_names=names, natural_labels=labels, natural_extra=natural,
            )
            self.problem = StructuredProblem(md.W, expert, self.structure)
            return
        if self.laplace:
            expert = _laplace_expert(md, self.response_family, mstep)
        else:
            expert = GaussianExpert(md.stats, md.pls, tmap if q else None, mstep)
        self.problem = MoEProblem(md.W, expert, self.structure)

    @property
    def family_name(self) -> str:
        """``"gaussian"``, ``"binomial"``, ``"poisson"`` (the experts' response family)."""
        return "gaussian" if self.response_family is None else self.response_family.name

    def _specific_mask(self, mixture: str | None, data: pd.DataFrame) -> np.ndarray:
        names = self.mdesign.fixef_names
        if mixture is None:
            return np.ones(len(names), dtype=bool)
        rhs = mixture.split("~", 1)[-1].strip() or "1"
        # the fit's contrasts, so that 'dose' names the same columns (dose.L, ...) as in the experts
        _, _, wanted, _ = model_matrix_with_contrasts(rhs, data.head(50), self.contrasts, "the mixture formula")
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise FormulaError(f"mixture terms {unknown} are not fixed effects of {self.formula!r} (these are {names})")
        return np.array([n in wanted for n in names], dtype=bool)

    # ------------------------------------------------------------------
    @property
    def n_subjects(self) -> int:
        return self.mdesign.N

    def fit(
        self,
        n_starts: int = 20,
        seed: int | None = None,
        *,
        progress: bool | None = None,
        control: MultiStartControl | None = None,
        start: MoEParams | None = None,
        previous=None,
        se: bool = True,
        tol: float | None = None,
        maxiter: int | None = None,
        nAGQ: int = 1,
    ):
        """Estimate by multi-start EM.

        Parameters
        ----------
        n_starts : int
            Starting points, at least 1 (k-means on two-stage OLS coefficients, random soft
            assignments, and splits of ``previous``); ignored for k = 1.
        seed : int >= 0, numpy.random.SeedSequence or numpy.random.Generator, optional
            Makes the fit deterministic.
        progress : bool, optional
            tqdm progress bars over the starts; None (default): shown when stderr is a terminal.
        control : MultiStartControl, optional
            Exploratory run length, how many runs go to convergence, the EM stopping rule.
        start : MoEParams, optional
            An extra user-supplied start (shapes of this model: K experts, p fixed effects, ...).
        previous : MEMoEResult, optional
            A fit with k - 1 experts on the same data: its posterior seeds "split" starts.
        se : bool
            Compute standard errors now (they are otherwise computed on first use).
        tol : float, optional
            Relative log-likelihood change that ends the runs to convergence (overrides
            ``control.em.tol``).
        maxiter : int, optional
            EM iterations of the runs to convergence (overrides ``control.em.max_iter``).
        nAGQ : int
            Non-Gaussian experts: 1 (default) Laplace-EM, each subject's marginal likelihood by the
            Laplace approximation (glmer's ``nAGQ = 1``); > 1 adaptive Gauss-Hermite quadrature with that
            many nodes (one scalar random effect only, as glmer). The log-likelihood then includes the
            family's normalising constants (glmer's AGQ deviance omits them). Ignored by Gaussian
            experts, whose likelihood is exact.

        Returns
        -------
        MEMoEResult

        Raises
        ------
        ArgumentError, ArgumentTypeError
            An argument of the wrong type or out of range; the message names it.
        """
        n_starts = check_int(n_starts, "n_starts", minimum=1)
        if isinstance(nAGQ, bool) or not isinstance(nAGQ, int | np.integer):
            raise ArgumentTypeError(f"nAGQ must be an integer (1 = Laplace, more = Gauss-Hermite nodes), got {nAGQ!r}")
        if self.laplace:
            self.problem.expert.nAGQ = check_nagq(nAGQ, self.structure.q)
            self.nAGQ = int(nAGQ)
        else:
            check_int(nAGQ, "nAGQ", minimum=1)
        seed = check_seed(seed)
        progress = check_optional_bool(progress, "progress")
        se = check_bool(se, "se")
        if control is not None and not isinstance(control, MultiStartControl):
            raise ArgumentTypeError(
                f"control must be a memoe.moe.multistart.MultiStartControl or None, got {type(control).__name__}"
            )
        control = _with_em_overrides(control, tol, maxiter)
        if start is not None:
            check_start(start, self.structure)
        prev_tau = None
        if previous is not None:
            _check_previous(previous, self)
            prev_tau = previous.posterior.to_numpy()
        # Laplace experts: many small BLAS calls (L-BFGS, tiny solves); a second BLAS thread costs more than
        # it saves on a shared machine (memoe.core.linalg.threads)
        with blas_threads(1) if self.laplace else contextlib.nullcontext():
            ms = fit_multistart(
                self.problem, n_starts, seed, control, previous_tau=prev_tau, start_params=start, progress=progress
            )
        run = ms.best
        order = canonical_order(run.params, run.estep.mass, self.order, self.structure.specific)
        params = run.params.permute(order)
        estep = self.problem.e_step(params)
        result = MEMoEResult(self, params, estep, ms, order)
        if result.degenerate_experts:
            mass = estep.mass
            which = ", ".join(f"expert {k} (mass {mass[k - 1]:.3g} subjects)" for k in result.degenerate_experts)
            warnings.warn(
                f"{which}: residual SD at the floor {self.problem.expert.sigma_floor:.3g}; the expert fits a few "
                "subjects' trajectories exactly, where the likelihood is unbounded; use fewer experts, "
                "sigma='common', or check those subjects' responses",
                DegenerateExpertWarning,
                stacklevel=caller_stacklevel(),
            )
        # a run stopped by an emptied expert is reported by EmptyExpertWarning instead
        if not result.converged and not result.empty_experts:
            warnings.warn(
                f"EM did not converge: the best start stopped after {result.n_iter} iterations "
                f"(last log-likelihood change {_last_change(result.trace):.3g}); raise maxiter "
                "(control.em.max_iter) or check the model",
                ConvergenceWarning,
                stacklevel=caller_stacklevel(),
            )
        if self.laplace and result.max_decrease > _decrease_tolerance(result.trace):
            warnings.warn(
                f"the {self.family_name} Laplace-EM log-likelihood decreased by {result.max_decrease:.3g} between "
                f"iterations (more than round-off, {_decrease_tolerance(result.trace):.2g}): the conditional modes "
                "or the M-step did not converge for some subjects; check fit.trace",
                ConvergenceWarning,
                stacklevel=caller_stacklevel(),
            )
        if se:
            _ = result.inference
        return result

    def __repr__(self) -> str:
        fam = "" if self.response_family is None else f", family={self.family_name!r}"
        return (
            f"MEMoE({self.formula!r}, gating={self.gating!r}, k={self.k}, subjects={self.n_subjects}, "
            f"random_cov={self.random_cov!r}, sigma={self.sigma_option!r}{fam})"
        )


class MoE(MEMoE):
    """Conventional mixture of experts: linear-regression experts with independent errors.

    ``memoe.MoE("y ~ time + x", gating="~ w1 + w2", k=3, data=df, group="id")``: the same gate and EM
    as :class:`MEMoE`, each expert ``y_i ~ N(X_i beta_k, sigma_k^2 I)`` (no random effects), the
    subjects' visits still sharing one latent class.

    Parameters
    ----------
    formula : str
        The expert regression, without random-effects terms, e.g. ``"y ~ time + x"``.
    gating : str or None
        One-sided formula of baseline covariates (None: constant class proportions).
    k : int
        Number of experts.
    data : pandas.DataFrame
    group : str
        Subject column: all visits of a subject share one latent class.
    **kw
        ``mixture``, ``sigma``, ``order``, ``mstep``, ``contrasts`` as in :class:`MEMoE`.

    R equivalent
    ------------
    ``flexmix::flexmix(y ~ time + x | id, k = 2, model = FLXMRglm(), concomitant = FLXPmultinom(~ w1 + w2))``.

    Examples
    --------
    >>> import memoe
    >>> sim = memoe.datasets.load("memoe_sim2")
    >>> fit = memoe.MoE("y ~ time + x", gating="~ w1 + w2", k=2, data=sim, group="id").fit(n_starts=3, seed=1,
    ...                                                                                    progress=False)
    >>> fit.posterior.shape
    (300, 2)
    """

    def __init__(self, formula: str, gating: str | None = None, k: int = 2, data=None, *, group: str, **kw) -> None:
        formula = check_str(formula, "formula", "y ~ time + x")
        group = check_str(group, "group", "id")
        if "|" in formula:
            raise FormulaError("MoE experts are regressions: give the formula without (terms | group) parts")
        super().__init__(formula, gating, k, data, group=group, **kw)


# MEMoE.__new__ (the Dask dispatch) would otherwise give the class a (formula=None, ..., *args, **kwargs) signature;
# MoE, which defines its own __init__, must not inherit the attribute
_init_sig = inspect.signature(MEMoE.__init__)
MEMoE.__signature__ = _init_sig.replace(
    parameters=list(_init_sig.parameters.values())[1:], return_annotation=inspect.Signature.empty
)
MoE.__signature__ = None


def _laplace_expert(md: MoEDesign, family: Family | None, mstep: MStepControl | None) -> LaplaceExpert:
    """The Laplace expert on the design's rows; a non-Gaussian response is checked by the family (R's
    ``family$initialize``: 0/1 or proportions for the binomial, non-negative counts for the Poisson)."""
    y = md.design.y
    n = len(y)
    if family is None:
        wt, ntrials = np.ones(n), np.ones(n)
    else:
        y, wt, ntrials = family.prepare(y, np.ones(n), None, md.design.spec.response)
    return LaplaceExpert(y, md.design.X, md.Z, md.codes, md.N, family, md.stats, wt, ntrials, control=mstep)


def _check_structured_options(laplace: bool, k: int, mixture, random_cov: str, sigma: str) -> None:
    """Residual structures are class-specific Gaussian experts: refuse the options they do not combine with."""
    if laplace:
        raise ArgumentError(
            "correlation= / weights= (residual structures) are defined for Gaussian experts only (the marginal "
            "path); drop family= / laplace=True, or drop the residual structure"
        )
    if k > 1 and (mixture is not None or random_cov != "class" or sigma != "class"):
        raise ArgumentError(
            "correlation= / weights= give every expert its own residual structure; they combine only with "
            f"class-specific experts (mixture=None, random_cov='class', sigma='class'), got mixture={mixture!r}, "
            f"random_cov={random_cov!r}, sigma={sigma!r}"
        )


def _decrease_tolerance(trace: list[float]) -> float:
    """Largest log-likelihood decrease attributable to round-off (modes converge to ~1e-10 relative)."""
    scale = max((abs(v) for v in trace if np.isfinite(v)), default=1.0)
    return 1e-8 * (1.0 + scale)


def _last_change(trace: list[float]) -> float:
    return float(trace[-1] - trace[-2]) if len(trace) > 1 else float("nan")


def _check_k(k: int, md: MoEDesign) -> None:
    """Refuse more experts than the subjects can fill.

    EM declares an expert empty when its posterior mass falls below ``max(2, p)`` subjects (see
    :class:`~memoe.moe.em.EMControl`), so k experts need at least that many subjects each, and never
    as many experts as subjects.
    """
    N, p = md.N, md.design.p
    if k > 1 and k >= N:
        raise ArgumentError(
            f"k = {k} experts for {N} subjects: k must be smaller than the number of subjects "
            "(each expert needs several subjects to estimate its parameters)"
        )
    per = max(2, p)
    if k > 1 and k * per > N:
        raise ArgumentError(
            f"k = {k} experts need at least k * max(2, p) = {k} * {per} = {k * per} subjects (p = {p} fixed "
            f"effects; below that posterior mass EM declares an expert empty), the data have {N}; use fewer experts"
        )


def _with_em_overrides(control: MultiStartControl | None, tol, maxiter) -> MultiStartControl | None:
    if tol is None and maxiter is None:
        return control
    ctl = control or MultiStartControl()
    em = ctl.em
    if tol is not None:
        em = dataclasses.replace(em, tol=check_positive_float(tol, "tol"))
    if maxiter is not None:
        em = dataclasses.replace(em, max_iter=check_int(maxiter, "maxiter", minimum=1))
    return dataclasses.replace(ctl, em=em)


def _check_previous(previous, model: MEMoE) -> None:
    if not isinstance(previous, MEMoEResult):
        raise ArgumentTypeError(f"previous must be a MEMoE fit (MEMoEResult) or None, got {type(previous).__name__}")
    if previous.k != model.k - 1 or previous.n_subjects != model.n_subjects:
        raise ArgumentError(
            f"previous must be a fit with k - 1 = {model.k - 1} experts on the same {model.n_subjects} subjects; "
            f"it has k = {previous.k} and {previous.n_subjects} subjects"
        )

"""Linear mixed models with lme4 formulas: ``memoe.lmm(formula, data).fit(reml=True)``.

The stages follow lme4: ``build_design`` (formula -> frame, X, random-effects blocks; no fitting),
``PLSProblem`` (the profiled deviance as a function of theta), ``minimize_bounded`` (BOBYQA with
lme4's bounds) plus convergence and boundary checks, and a frozen :class:`LmmResult`.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.core.design import Design, build_design
from memoe.core.design.frame import formula_variables
from memoe.core.design.prior import (
    OFFSET_COLUMN,
    WEIGHTS_COLUMN,
    as_expression,
    attach_vector,
    check_prior_weights,
    evaluate_offset,
    numeric_column,
    split_offsets,
)
from memoe.core.design.scaling import choose_scaling
from memoe.core.formula.parse import parse_formula
from memoe.core.frames import to_pandas
from memoe.core.linalg.threads import blas_threads
from memoe.core.optim import check_convergence, finite_difference_derivatives, minimize_bounded
from memoe.core.optim.arguments import check_bool, check_control, check_start
from memoe.core.optim.checks import (
    SECANT_MIN,
    ConvergenceReport,
    gradient_difference_hessian,
    parallel_map,
    secant_usable,
    value_difference_hessian,
    value_stencil_points,
)
from memoe.core.optim.finish import finish_fit, is_boundary
from memoe.core.optim.quasi_newton import minimize_bounded_gradient
from memoe.core.optim.start import variance_component_start
from memoe.errors import ArgumentError, FormulaTypeError
from memoe.lmm.gradient import GRADIENT_MODEL_FTOL_REL, dense_value, deviance_and_gradient, gradient_preferred
from memoe.lmm.gradient import stencil_workers as _stencil_workers
from memoe.lmm.gradient_small import small_gradient_available
from memoe.lmm.objective import SCHUR_PATHS, PLSProblem
from memoe.lmm.result import LmmResult
from memoe.lmm.start import one_factor_start

__all__ = ["LMM", "SINGULAR_TOL"]

# lme4's isSingular() tolerance on the diagonal of the relative covariance factors
SINGULAR_TOL = 1e-4
# above this many theta entries the finite-difference Hessian check is skipped (it costs O(k^2) fits)
MAX_THETA_FOR_DERIVS = 30
# the derivative check's stencil is evaluated on two threads from this many levels (one grouping factor):
# below it an evaluation takes well under a millisecond and the thread hand-off does not pay
PARALLEL_CHECK_LEVELS = 20_000
# finite_difference_derivatives' default step (the stencil prefetched by LMM._stencil_prefetch)
FD_DELTA = 1e-4
# up to this many theta entries the gradient optimiser starts from a Hessian of k gradient differences
MAX_THETA_FOR_START_HESSIAN = 6
# on the dense crossed path, up to this many from k (k + 1) / 2 criterion values instead (a value costs ~0.4 of
# a value + gradient there: 6 values against 3 gradients for k = 3; 10 against 4 for k = 4 is no gain). With
# variances only (every theta bounded at 0) the diagonal from k values, up to MAX_THETA_FOR_START_HESSIAN
MAX_THETA_FOR_VALUE_HESSIAN = 3
# the derivative check's Hessian from forward values (dense crossed path) when at most this many coordinate
# directions are left after the secant: m (m + 1) / 2 values at ~0.4 of a gradient each against m gradients
MAX_VALUE_CHECK_DIRECTIONS = 3
# step of those value differences, as the gradient differences' (FD_DELTA): the same optimiser path to rounding
# (1e-3 and 3e-3 moved a few end points by up to 1e-12 relative over 26 simulated fits)
VALUE_DELTA = 1e-4
# FitControl.optimizer
OPTIMIZERS = ("auto", "bobyqa")


@dataclass(frozen=True)
class FitControl:
    """Optimiser and check settings for :meth:`LMM.fit`.

    Attributes
    ----------
    ftol_abs : float, default 1e-12
        Stop when the criterion changes by less (lme4's tight setting; lme4's default is 1e-8). With the
        gradient optimiser and the default, it also stops once its validated quasi-Newton model predicts a
        decrease below 1e-12 of the criterion; a smaller ``ftol_abs`` turns that early stop off.
    xtol_abs : float, default 1e-8
        Stop when theta changes by less (lme4's ``xtol_abs``).
    maxeval : int
        Most objective evaluations.
    calc_derivs : bool
        Finite-difference gradient and Hessian at the optimum (lme4's ``checkConv``).
    grad_tol, singular_tol : float
        lme4's ``check.conv.grad`` and ``isSingular`` tolerances.
    blas_threads : int, "auto" or None
        BLAS threads while fitting ("auto": the problem's choice; None: the BLAS default).
    check_threads : int, default 1
        2 evaluates the finite-difference stencil of the derivative check on two threads (same values)
        for a single grouping factor with at least 20,000 levels.
    solver : {"auto", "dense", "sparse", "matrix-free"}
        How the Schur complement of crossed/nested grouping factors is factored ("auto": chosen from the
        design's fill, memory and flops; see :mod:`memoe.core.linalg.matrix_free` for the approximate
        "matrix-free" path); the path taken is ``fit.model.problem.solver``.
    optimizer : {"auto", "bobyqa"}
        "auto": a projected BFGS with the analytic gradient of the criterion
        (:mod:`memoe.lmm.gradient`, :mod:`memoe.core.optim.quasi_newton`) where it pays: crossed/nested
        factors on the blocked dense path with scalar random effects after the first (on InstEval 4 value +
        gradient evaluations, 3 values for the start Hessian and 3 for the check's, instead of BOBYQA's 40-60
        values) and small designs on the dense_small path, any random
        effects (:mod:`memoe.lmm.gradient_small`; 3-8 evaluations instead of 30-40 on Penicillin/Pastes,
        45 instead of 280 on kb07), with a derivative check from ``k`` gradient differences;
        BOBYQA elsewhere (one grouping factor, sparse, matrix-free) and as a fallback from the
        quasi-Newton end point when it fails.
        "bobyqa": always nlopt's BOBYQA (lme4's default optimizer) with the finite-difference check.
        ``fit.opt.optimizer`` names what ran and ``fit.opt.feval`` counts its evaluations.

    R equivalent
    ------------
    ``lme4::lmerControl(optimizer = "bobyqa", optCtrl = list(ftol_abs = , xtol_abs = , maxeval = ))``.

    Examples
    --------
    >>> import memoe
    >>> from memoe.lmm import FitControl
    >>> sleep = memoe.datasets.load("sleepstudy")
    >>> fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep).fit(control=FitControl(ftol_abs=1e-10))
    >>> fit.converged
    True
    """

    ftol_abs: float = 1e-12
    # lme4's xtol_abs: below it the criterion moves less than its rounding noise (InstEval: 41 -> 29 evaluations)
    xtol_abs: float = 1e-8
    maxeval: int = 100_000
    calc_derivs: bool = True
    grad_tol: float = 2e-3
    singular_tol: float = SINGULAR_TOL
    # BLAS threads while fitting: "auto" = the problem's choice (1 unless the dense part of the
    # factor is large), None = leave the BLAS default, an int = that cap (see memoe.core.linalg.threads)
    blas_threads: int | str | None = "auto"
    # 2: the derivative check's independent evaluations run on this thread and one worker (one grouping
    # factor with >= 20,000 levels); ~6 of 12 evaluations of wall time saved when a core is free, ~4 MiB
    # more peak memory at 10^5 levels (the worker's temporaries): off by default
    check_threads: int = 1
    solver: str = "auto"
    optimizer: str = "auto"


class LMM:
    """A linear mixed model specified by an lme4 formula.

    Parameters
    ----------
    formula : str
        lme4 syntax, e.g. ``"Reaction ~ Days + (Days | Subject)"``. Random terms: ``(x | g)``,
        ``(0 + x | g)``, ``(x || g)``, ``(1 | a/b)``, ``(1 | a:b)``, several terms, crossed factors.
    data : pandas.DataFrame
        Rows with a missing value in any used column are dropped (counted on the result).
    contrasts : dict, optional
        R's ``contrasts=``: factor column -> ``"treatment"``, ``"sum"``, ``"helmert"`` or ``"poly"``
        (or ``"contr.sum"``, ...). Default (None) is R's: treatment contrasts for unordered factors,
        polynomial contrasts (``x.L``, ``x.Q``, ...) for ordered Categoricals.
    weights : str or array-like, optional
        lme4's prior weights: a column of ``data`` or one positive value per row. Observation ``i``
        has residual variance ``sigma^2 / w_i``; the log-likelihood includes ``0.5 sum(log w_i)`` as
        lme4's ``logLik`` does. Rows with a missing weight are dropped (R's model frame); zero,
        negative or infinite weights are refused (lme4 refuses negative ones and reports a
        log-likelihood of ``-Inf`` for zero ones).
    offset : str or array-like, optional
        A known term added to the linear predictor (a column or one value per row), as lme4's
        ``offset=``; added to the formula's ``offset(expr)`` terms. ``predict(newdata)`` evaluates
        the formula's offset terms (and an ``offset=`` *column*) on the new data; prior weights do
        not affect predictions.

    Notes
    -----
    Stateful transforms of formulaic (``scale(x)``, ``center(x)``, ``poly(x, 2)`` = R's orthogonal
    ``poly``, ``bs(x, df=4)``, ``cr(x, df=4)``) are learned on the fitting data and replayed on new
    data by ``predict``, in the fixed part and inside random-effects terms.

    ``(x || g)`` follows lme4: the term is split into one term per formula term of ``x``
    (``(1 | g) + (0 + x | g)``); for a factor ``f`` the piece ``(0 + f | g)`` keeps a full covariance
    matrix among the indicator columns of all levels of ``f`` (lme4 only removes correlations
    *between* the pieces). Independent per-level variances need ``dummy()`` terms in lme4 and are
    not offered here.

    R equivalent
    ------------
    ``lme4::lmer(formula, data, REML = TRUE)``; the stages are lme4's ``lFormula`` (this constructor),
    ``mkLmerDevfun`` (:meth:`objective`), ``optimizeLmer`` and ``mkMerMod`` (:meth:`fit`).

    Examples
    --------
    >>> import memoe
    >>> df = memoe.datasets.load("sleepstudy")
    >>> fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", data=df).fit()
    >>> round(fit.reml_criterion, 4)
    1743.6283
    """

    def __init__(
        self, formula: str, data: pd.DataFrame, contrasts: dict[str, str] | None = None, weights=None, offset=None
    ) -> None:
        if not isinstance(formula, str):
            raise FormulaTypeError(
                f"formula must be a string such as 'y ~ x + (1 | g)', got {type(formula).__name__}"
            )
        data = to_pandas(data, "data")  # polars / pyarrow tables too
        self.formula = formula
        self.data_name = data.attrs.get("name") if isinstance(data, pd.DataFrame) else None
        self.design: Design = _build_lmm_design(formula, data, contrasts, weights, offset)
        # the contrast of every factor (the default's choice included); the design's spec replays it
        # in predict, and the codec saves it
        self.contrasts: dict[str, str] = dict(self.design.fixed.contrasts)
        d = self.design
        self.problem = PLSProblem(
            y=d.y,
            X=d.X,
            codes=[b.factor.codes for b in d.blocks],
            nlevels=[b.nlevels for b in d.blocks],
            Z=[b.Z for b in d.blocks],
            theta_map=d.theta_map,
            # epoch-time covariates or a response shifted by 1e12 are fitted on centred, scaled
            # columns and mapped back exactly (None for ordinary data: nothing changes)
            scaling=choose_scaling(d.X, d.y, columns=d.fixed.spreads),
            log_weights=d.log_weights,
        )

    # ------------------------------------------------------------------
    def objective(self, reml: bool = True):
        """The deviance (ML) or REML criterion as a function of theta."""
        problem = self.problem

        def f(theta: np.ndarray) -> float:
            return problem.deviance(theta, reml)

        return f

    def fit(
        self,
        reml: bool = True,
        start: np.ndarray | None = None,
        control: FitControl | None = None,
        warn: bool = True,
    ):
        """Estimate theta by minimising the profiled deviance, then build the result.

        Parameters
        ----------
        reml : bool, default True
            REML criterion (lme4's default) or maximum likelihood.
        start : array-like or dict, optional
            Starting theta (lme4 order, or a dict by theta name); default identity relative factors.
        control : FitControl or dict, optional
            A dict holds FitControl's field names, e.g. ``{"maxeval": 500}``.
        warn : bool, default True
            Emit convergence and singular-fit warnings (they are always recorded on the result).

        Returns
        -------
        LmmResult

        Raises
        ------
        ArgumentError, ArgumentTypeError
            An argument of the wrong type or out of range (``reml="no"``, a ``start`` of the wrong
            length or below the bounds, an unknown ``control`` setting).
        """
        reml = check_bool(reml, "reml")
        warn = check_bool(warn, "warn")
        control = check_control(control, FitControl)
        bt = control.blas_threads
        int_ok = isinstance(bt, (int, np.integer)) and not isinstance(bt, bool) and bt >= 1
        if not (bt is None or bt == "auto" or int_ok):
            raise ArgumentError(f"control['blas_threads'] must be 'auto', None or an integer >= 1, got {bt!r}")
        ct = control.check_threads
        if not (isinstance(ct, (int, np.integer)) and not isinstance(ct, bool) and ct >= 1):
            raise ArgumentError(f"control['check_threads'] must be an integer >= 1, got {ct!r}")
        if control.solver not in SCHUR_PATHS:
            raise ArgumentError(f"control['solver'] must be one of {', '.join(map(repr, SCHUR_PATHS))}, "
                                f"got {control.solver!r}")
        if control.optimizer not in OPTIMIZERS:
            raise ArgumentError(f"control['optimizer'] must be one of {', '.join(map(repr, OPTIMIZERS))}, "
                                f"got {control.optimizer!r}")
        if hasattr(self.problem, "set_solver"):
            self.problem.set_solver(control.solver)
        elif control.solver != "auto":
            # the Dask problem keeps one factor's statistics on the workers: no Schur complement to choose
            raise ArgumentError(f"control['solver'] = {control.solver!r} needs an in-memory model with crossed or "
                                "nested grouping factors; use 'auto'")
        tmap = self.design.theta_map
        start = check_start(start, tmap.names, tmap.lower_bounds)
        f = self.objective(reml)
        x0 = tmap.initial() if start is None else start
        step = None
        # the start's products are as small as an evaluation's: under the same BLAS thread cap (a second
        # OpenBLAS thread cost 2-3x on small designs when the other core was busy)
        start_threads = self.problem.blas_threads if control.blas_threads == "auto" else control.blas_threads
        with blas_threads(start_threads):
            x0, step = self._start_point(start, x0, tmap)
        lower = tmap.lower_bounds
        problem_threads = self.problem.blas_threads
        if control.blas_threads != "auto":
            self.problem.blas_threads = control.blas_threads
        held = getattr(self.problem, "threads_held", None)
        try:
            with blas_threads(self.problem.blas_threads):
                if held is not None:
                    # the cap holds for the whole fit: evaluations need not re-enter it (~20 us each)
                    self.problem.threads_held = True
                use_gradient = control.optimizer == "auto" and (
                    gradient_preferred(self.problem) or small_gradient_available(self.problem))
                if use_gradient:
                    opt, theta, grad = self._minimize_gradient(reml, x0, lower, step, control)
                    report = self._check_gradient(reml, theta, grad, lower, control,
                                                  f0=opt.fmin if np.array_equal(theta, opt.x) else None)
                    if opt.return_code == 5:
                        # stopped by maxeval (as lme4's nloptwrap reports code 5), even where the point passes
                        # the derivative checks
                        report = dataclasses.replace(report, converged=False, messages=[
                            *report.messages,
                            f"convergence code 5 from {opt.optimizer}: maxeval ({control.maxeval}) was reached"])
                else:
                    opt = minimize_bounded(
                        f,
                        x0,
                        lower,
                        ftol_abs=control.ftol_abs,
                        xtol_abs=control.xtol_abs,
                        maxeval=control.maxeval,
                        initial_step=step,
                    )
                    theta = opt.x.copy()
                    # exact zeros on the boundary as lme4 reports them when the optimiser sits there
                    theta[(lower == 0) & (np.abs(theta) < 1e-12)] = 0.0
                    report = self._check(f, theta, lower, control, opt, reml=reml)
                singular = is_boundary(theta, lower, control.singular_tol)
                messages = finish_fit(report, singular=singular, names=tmap.names, values=theta, warn=warn)
                result = self._result(
                    model=self, reml=reml, theta=theta, opt=opt, convergence=report, singular=singular,
                    messages=messages,
                )
        finally:
            # the factor kept for the result (taken by it at the optimum) and its spare buffer: ~10 MB each
            if hasattr(self.problem, "forget_factor"):
                self.problem.forget_factor()
            self.problem.blas_threads = problem_threads
            if held is not None:
                self.problem.threads_held = held
        return result

    def _start_point(self, start, x0: np.ndarray, tmap):
        """Moment-estimate start (and initial step) when the caller gave none; else ``(x0, None)``."""
        step = None
        if start is None and len(self.design.blocks) > 1:
            # crossed/nested scalar random effects: every evaluation factors a dense block, so a
            # moment-estimate start that saves 15-30% of the evaluations is worth its one-off cost
            vc = variance_component_start(self.design)
            if vc is not None:
                x0, step = vc
        elif start is None and len(self.design.blocks) == 1:
            # one grouping factor: the two-stage moment estimator from the per-level statistics the
            # problem holds anyway (about one evaluation) saves ~40% of BOBYQA's evaluations
            vc = one_factor_start(self.problem, tmap)
            if vc is not None:
                x0, step = vc
        return x0, step

    def _minimize_gradient(self, reml: bool, x0: np.ndarray, lower: np.ndarray, step, control: FitControl):
        """Projected BFGS with the analytic gradient; BOBYQA from its end point if it fails.

        Returns the optimiser summary, theta (parameters within ``singular_tol`` of a zero bound set to
        exactly 0 when that does not raise the criterion, as BOBYQA reaches the bound) and the gradient there.
        """
        problem = self.problem

        # every (theta, gradient) evaluated: a point within ~delta of the optimum gives the derivative check one
        # gradient difference for free (_check_gradient)
        self._gradient_trace = trace = []

        def fg(x: np.ndarray, keep: str | None = "best") -> tuple[float, np.ndarray]:
            # keep: the optimiser's points offer their factor to the problem, so that the result at the
            # accepted (lowest) point reuses it (PLSProblem.offer_factor); difference points do not
            f, g = deviance_and_gradient(problem, x, reml, keep=keep)
            trace.append((np.array(x, dtype=float), g))
            return f, g

        if hasattr(problem, "forget_factor"):
            problem.forget_factor()

        extra = 0
        hess0 = None
        start = fg
        # the dense crossed path: BFGS in log theta after the first step (minimize_bounded_gradient's log_model)
        log_model = gradient_preferred(problem)
        # only variances (every theta bounded at 0: scalar random effects): a diagonal start Hessian from k values
        # (BFGS learns the rest: 143 -> 145 gradients over 26 simulated crossed fits for 3 fewer values each)
        diagonal = bool(np.all(lower == 0))
        if gradient_preferred(problem) and len(x0) <= (MAX_THETA_FOR_START_HESSIAN if diagonal
                                                       else MAX_THETA_FOR_VALUE_HESSIAN):
            # the dense crossed path with few parameters: the start Hessian from k (k + 1) / 2 (or k) criterion
            # values (no potri: ~0.4 of a value + gradient each) instead of k gradients, pooled with the start point
            workers = _stencil_workers(problem)
            ready, values = self._value_stencil(fg, lambda z: dense_value(problem, z, reml), x0, lower, workers,
                                                diagonal)
            f_start: list = []  # the criterion at the start point (the optimiser asks for the Hessian after it)

            def start(x: np.ndarray) -> tuple[float, np.ndarray]:
                out = ready.pop(np.asarray(x, dtype=float).tobytes(), None) or fg(x)
                f_start.append(out[0])
                return out

            def hess0(x, g):
                nonlocal extra
                extra += len(values)  # counted as evaluations (opt.feval) like the gradients
                f0 = f_start[0] if f_start else dense_value(problem, x, reml)
                return value_difference_hessian(lambda z: values.pop(z.tobytes(), None)
                                                or dense_value(problem, z, reml), x, f0, g, VALUE_DELTA,
                                                diagonal=diagonal)
        elif diagonal and len(x0) <= MAX_THETA_FOR_START_HESSIAN and getattr(problem, "dense_small", None) is not None:
            # scalar random effects on the dense small path (school3, Oats, Penicillin, 10k crossed): the diagonal
            # start Hessian from k values instead of k gradients (min of 15, ms: school3 4.50 -> 3.52, 200 x 100
            # crossed 5.90 -> 5.03, Oats 1.52 -> 1.41; the same optima to < 1e-12 relative)
            f_first: list = []

            def start(x: np.ndarray) -> tuple[float, np.ndarray]:
                out = fg(x)
                f_first.append(out[0])
                return out

            def hess0(x, g):
                nonlocal extra
                extra += len(x)
                f0 = f_first[0] if f_first else problem.deviance(x, reml)
                return value_difference_hessian(lambda z: problem.deviance(z, reml), x, f0, g, VALUE_DELTA,
                                                diagonal=True)
        elif len(x0) <= MAX_THETA_FOR_START_HESSIAN:
            # a few parameters: k gradient differences at the start make BFGS start with Newton steps
            # (InstEval shape: 11 -> 8 evaluations including these)
            workers = _stencil_workers(problem)
            ready = self._start_stencil(fg, x0, lower, workers) if workers >= 2 else {}

            def hess0(x, g):
                nonlocal extra
                extra += len(x)
                return gradient_difference_hessian(lambda z: (ready.pop(z.tobytes(), None) or fg(z, None))[1], x, g,
                                                   delta=FD_DELTA, workers=workers)

            def start(x: np.ndarray) -> tuple[float, np.ndarray]:
                # the start point's value and gradient when the pooled batch already has them
                return ready.pop(np.asarray(x, dtype=float).tobytes(), None) or fg(x)

        # stop once the (validated) quasi-Newton model predicts < 1e-12 |f|: the last step would move the
        # criterion by ~1e-14 relative and theta by ~1e-7 (InstEval shape: 10 -> 9 evaluations)
        # a caller who tightened ftol_abs below the default asks for the last ~1e-14 too: no early model stop
        model_ftol_rel = GRADIENT_MODEL_FTOL_REL if control.ftol_abs >= FitControl.ftol_abs else 0.0
        # a rescaled response shifts the criterion by a constant: the model test is relative to the rest
        scaling = getattr(problem, "scaling", None)
        n_eff = getattr(problem, "_n_eff", None) or float(problem.n)
        f_offset = scaling.deviance_shift(n_eff, problem.p, reml) if scaling is not None else 0.0
        # the one-factor path: its value + gradient is cheap and its criterion noisy (~1e-12 relative on BodyWeight),
        # so the step the model test would skip is taken once (sleepstudy: the last 4e-13 relative, what the
        # Kenward-Roger golden cases resolve); the dense paths stop on the model test (one gradient ~1 ms on school3)
        final_step = (not gradient_preferred(problem) and getattr(problem, "dense_small", None) is None
                      and getattr(problem, "multi", True) is False)
        # maxeval counts every evaluation, the start Hessian's too
        planned = 0 if hess0 is None else (len(values) if gradient_preferred(problem) and len(x0) <= (
            MAX_THETA_FOR_START_HESSIAN if diagonal else MAX_THETA_FOR_VALUE_HESSIAN) else len(x0))
        opt = minimize_bounded_gradient(start, x0, lower, initial_step=step, ftol_abs=control.ftol_abs,
                                        xtol_abs=min(control.xtol_abs, 1e-10),
                                        maxeval=max(1, min(control.maxeval, 500) - planned),
                                        initial_hessian=hess0, model_ftol_rel=model_ftol_rel, log_model=log_model,
                                        f_offset=f_offset, model_final_step=final_step)
        opt = dataclasses.replace(opt, feval=opt.feval + extra)
        grad = opt.settings["gradient"]
        if opt.return_code < 0 or opt.return_code == 5:
            # rare: no descent far from a stationary point, or too many evaluations; the derivative-free
            # optimiser takes over from the best point reached
            again = minimize_bounded(lambda x: problem.deviance(x, reml), opt.x, lower, ftol_abs=control.ftol_abs,
                                     xtol_abs=control.xtol_abs, maxeval=max(1, control.maxeval - opt.feval),
                                     initial_step=step)
            fmin, grad = fg(again.x, "always")
            opt = dataclasses.replace(again, optimizer=f"{opt.optimizer} + {again.optimizer}", x0=opt.x0,
                                      fmin=fmin, feval=opt.feval + again.feval + 1,
                                      seconds=opt.seconds + again.seconds)
        theta = opt.x.copy()
        near = (lower == 0) & (theta > 0) & (theta < control.singular_tol)
        if np.any(near):
            # a variance at its zero bound: the criterion is flat (even in a scalar theta) there, so the
            # quasi-Newton iterates approach 0 without landing on it; take the bound when it is no worse
            trial = np.where(near, 0.0, theta)
            f0, g0 = fg(trial, "always")
            opt = dataclasses.replace(opt, feval=opt.feval + 1)
            if f0 <= opt.fmin + 1e-10 * max(1.0, abs(opt.fmin)):
                theta, grad = trial, g0
                opt = dataclasses.replace(opt, x=trial.copy(), fmin=f0)
        return opt, theta, grad

    def _check_gradient(self, reml: bool, theta: np.ndarray, grad: np.ndarray, lower: np.ndarray,
                        control: FitControl, f0: float | None = None) -> ConvergenceReport:
        """lme4's checks from the analytic gradient and a Hessian of k forward gradient differences.

        One of the k differences comes from the optimiser's last point when it lies within ``[SECANT_MIN, 2]
        delta`` of theta (:meth:`_check_secant`); the others run on two threads when a core is idle. On the
        dense crossed path with at most ``MAX_VALUE_CHECK_DIRECTIONS`` directions left, forward values instead
        (:func:`value_difference_hessian`: 3 values against 2 gradients for k = 3 with the secant, a value
        costing ~0.4 of a gradient there). ``f0`` is the criterion at ``theta`` when the caller has it.
        """
        k = len(theta)
        secant = self._check_secant(theta, grad, lower)  # also releases the optimiser's trace
        if not control.calc_derivs or k == 0 or k > MAX_THETA_FOR_DERIVS:
            return ConvergenceReport(converged=True)
        problem = self.problem
        workers = _stencil_workers(problem)
        m = k - (1 if secant_usable(secant, FD_DELTA) else 0)
        if gradient_preferred(problem) and m <= MAX_VALUE_CHECK_DIRECTIONS:
            if f0 is None:
                f0 = dense_value(problem, theta, reml)
            hess = value_difference_hessian(lambda x: dense_value(problem, x, reml), theta, f0, grad, FD_DELTA,
                                            secant=secant, workers=workers)
        else:
            hess = gradient_difference_hessian(lambda x: deviance_and_gradient(problem, x, reml)[1], theta, grad,
                                               delta=FD_DELTA, workers=workers, secant=secant)
        free = ~((lower == 0) & (theta < control.singular_tol))
        return check_convergence(grad, hess, free, grad_tol=control.grad_tol)

    @staticmethod
    def _value_stencil(fg, value, x0: np.ndarray, lower: np.ndarray, workers: int,
                       diagonal: bool = False) -> tuple[dict, dict]:
        """The start point's value and gradient and the criterion at the points of :func:`value_difference_hessian`,
        as one pooled batch (the gradient first: it is the longest job). Keyed by the points' bytes."""
        x = np.maximum(np.asarray(x0, dtype=float), lower)
        points = value_stencil_points(x, VALUE_DELTA, pairs=not diagonal)
        ready: dict = {}
        values: dict = {}

        def run(i: int) -> None:
            if i == 0:
                ready[x.tobytes()] = fg(x)
            else:
                values[points[i - 1].tobytes()] = value(points[i - 1])

        parallel_map(run, range(len(points) + 1), workers)
        return ready, values

    @staticmethod
    def _start_stencil(fg, x0: np.ndarray, lower: np.ndarray, workers: int) -> dict:
        """The start point and its ``k`` gradient-difference points evaluated as one pooled batch.

        With two workers the ``k + 1`` evaluations take ``ceil((k + 1) / 2)`` rounds instead of ``1 + ceil(k / 2)``
        (InstEval shape: 2 rounds instead of 3). Keyed by the points' bytes, built exactly as
        :func:`minimize_bounded_gradient` (projection onto the bounds) and :func:`gradient_difference_hessian`
        (``x + delta e_i``) build them, so the optimiser and the Hessian find them.
        """
        x = np.maximum(np.asarray(x0, dtype=float), lower)
        k = len(x)
        points = [x]
        for i in range(k):
            e = np.zeros(k)
            e[i] = FD_DELTA
            points.append(x + e)
        out: dict = {}

        def run(i: int) -> None:
            out[points[i].tobytes()] = fg(points[i])

        parallel_map(run, range(k + 1), workers)
        return out

    def _check_secant(self, theta: np.ndarray, grad: np.ndarray, lower: np.ndarray):
        """``(theta - z, grad - g(z))`` for the latest point ``z`` the gradient optimiser evaluated within
        ``[SECANT_MIN delta, 2 delta]`` (max norm) of ``theta``, both away from the bounds; None if there is none."""
        trace = getattr(self, "_gradient_trace", None) or []
        self._gradient_trace = None
        if np.any(theta - lower <= 2 * FD_DELTA):
            return None  # boundary parameters: the check's free set and one-sided steps stay as they are
        for z, g in reversed(trace):
            s = theta - z
            step = float(np.max(np.abs(s)))
            if (SECANT_MIN * FD_DELTA <= step <= 2 * FD_DELTA and np.all(z - lower > 2 * FD_DELTA)
                    and np.all(np.isfinite(g))):
                return s, grad - g
        return None

    def _result(self, **kwargs) -> LmmResult:
        # the Dask model (memoe.dask.lmm) returns its LmmResult subclass
        return LmmResult(**kwargs)

    def _check(self, f, theta: np.ndarray, lower: np.ndarray, control: FitControl, opt=None,
               reml: bool | None = None) -> ConvergenceReport:
        k = len(theta)
        if not control.calc_derivs or k == 0 or k > MAX_THETA_FOR_DERIVS:
            return ConvergenceReport(converged=True)
        # the optimiser already evaluated the optimum (unless boundary zeros moved theta)
        f0 = opt.fmin if opt is not None and np.array_equal(theta, opt.x) else None
        if reml is not None and type(self.problem) is PLSProblem and self.problem.lean:
            # small one-factor problems: the whole stencil in one batched evaluation (~1.5 evaluations' cost)
            f = self._stencil_batched(f, theta, lower, reml)
        elif control.check_threads >= 2:
            f = self._stencil_prefetch(f, theta, lower)
        # the Hessian only feeds the checks here: one evaluation per off-diagonal pair (see its docstring)
        grad, hess = finite_difference_derivatives(f, theta, lower, f0=f0, mixed="forward")
        # parameters on the boundary are not expected to have a zero gradient
        free = ~((lower == 0) & (theta < control.singular_tol))
        return check_convergence(grad, hess, free, grad_tol=control.grad_tol)

    @staticmethod
    def _stencil_points(theta: np.ndarray, lower: np.ndarray) -> list[np.ndarray]:
        """The points ``finite_difference_derivatives(mixed="forward")`` evaluates around ``theta`` (same bytes)."""
        k, h = len(theta), FD_DELTA
        forward = theta - h < lower
        points = []
        for i in range(k):
            e = np.zeros(k)
            e[i] = h
            points += [theta + e, theta + 2 * e] if forward[i] else [theta + e, theta - e]
        for i in range(k):
            for j in range(i):
                e = np.zeros(k)
                e[i] = e[j] = h
                # the check's Hessian differences the pairs forward (finite_difference_derivatives(mixed="forward"))
                points.append(theta + e)
        return points

    def _stencil_batched(self, f, theta: np.ndarray, lower: np.ndarray, reml: bool):
        """``f`` with the derivative check's stencil evaluated beforehand by ``problem.deviance_many``."""
        points = self._stencil_points(theta, lower)
        values = self.problem.deviance_many(np.array(points), reml).tolist()
        cache = {x.tobytes(): v for x, v in zip(points, values, strict=True)}

        def g(x: np.ndarray) -> float:
            v = cache.get(np.asarray(x, dtype=float).tobytes())
            return f(x) if v is None else v

        return g

    def _stencil_prefetch(self, f, theta: np.ndarray, lower: np.ndarray):
        """``f`` with the finite-difference stencil around ``theta`` evaluated beforehand on two threads.

        The derivative check's 2k + k(k - 1) / 2 evaluations are independent; with one grouping factor each
        is a pass over the per-level statistics in NumPy kernels that release the GIL, and ``deviance``
        keeps no state between calls, so this thread and one worker evaluate them side by side (12 evaluations for
        ``(t | id)``: ~20% of a 10^5-subject fit). The values are the serial ones; a point outside the
        prefetched stencil is evaluated as before.
        """
        problem = self.problem
        if (
            (os.cpu_count() or 1) < 2
            or getattr(problem, "multi", True)
            or type(problem) is not PLSProblem
            or problem.nlevels[0] < PARALLEL_CHECK_LEVELS
        ):
            return f
        points = self._stencil_points(theta, lower)
        # one worker thread takes every other point while this thread evaluates the rest: a second new
        # thread would add its own malloc arena and temporaries (~4 MiB each at 10^5 levels) for no gain
        with ThreadPoolExecutor(max_workers=1) as pool:
            futures = [pool.submit(f, x) for x in points[1::2]]
            mine = [f(x) for x in points[0::2]]
            theirs = [fu.result() for fu in futures]
        cache = {x.tobytes(): v for x, v in zip(points[0::2], mine, strict=True)}
        cache.update((x.tobytes(), v) for x, v in zip(points[1::2], theirs, strict=True))

        def g(x: np.ndarray) -> float:
            v = cache.get(np.asarray(x, dtype=float).tobytes())
            return f(x) if v is None else v

        return g

    def __repr__(self) -> str:
        d = self.design
        return f"LMM({self.formula!r}, nobs={d.n}, groups={ {b.factor.name: b.nlevels for b in d.blocks} })"


def _build_lmm_design(formula: str, data: pd.DataFrame, contrasts, weights, offset) -> Design:
    """``build_design`` plus lme4's prior weights and offsets (the working design of :class:`Design`)."""
    spec = parse_formula(formula)
    fixed, offset_terms = split_offsets(spec.fixed)
    if weights is not None or offset is not None or offset_terms:
        data = data if isinstance(data, pd.DataFrame) else to_pandas(data, "data")
    data, w_col = attach_vector(data, weights, WEIGHTS_COLUMN, "weights") if weights is not None else (data, None)
    data, o_col = attach_vector(data, offset, OFFSET_COLUMN, "offset") if offset is not None else (data, None)
    extra = [c for c in (w_col, o_col) if c is not None]
    for e in offset_terms:
        extra += [v for v in formula_variables(f"{as_expression(e)} ~ 1", f"the offset term offset({e})")
                  if v not in extra]
    spec = dataclasses.replace(spec, fixed=fixed)
    design = build_design(spec, data, contrasts=contrasts, extra=extra)
    fd = design.frame.data
    w = None
    if w_col is not None:
        w = numeric_column(fd, w_col, "weights")
        check_prior_weights(w, None if w_col == WEIGHTS_COLUMN else w_col)
    off = evaluate_offset(fd, offset_terms, o_col)
    return design.with_prior(w, off, offset_terms, weights_column=w_col, offset_column=o_col)

"""``gls`` and ``lme``: linear models with residual correlation / variance structures (nlme's).

Stages, as for :func:`memoe.lmm`: the formula and data go through memoe's formula parser and design
builders (fixed part by formulaic, bar terms by :mod:`memoe.core.design.random`); the rows are grouped
by subject and the groups by size (:mod:`memoe.marginal.layout`); the structures are bound to the
groups; :class:`~memoe.marginal.problem.MarginalProblem` is the profiled (RE)ML objective;
BOBYQA (:func:`memoe.core.optim.minimize_bounded`) minimises it; :class:`MarginalResult` is frozen.
"""

from __future__ import annotations

import itertools
import time
import warnings

import numpy as np
import pandas as pd

from memoe.core.arguments import check_bool, check_str
from memoe.core.covariance import ThetaMap
from memoe.core.design import Design, make_grouping_factor
from memoe.core.design.fixed import build_fixed
from memoe.core.design.frame import build_frame, numeric_response
from memoe.core.design.random import build_random
from memoe.core.formula.parse import parse_formula
from memoe.core.frames import to_pandas
from memoe.core.linalg.threads import blas_threads
from memoe.core.optim import minimize_bounded
from memoe.core.optim.start import best_start
from memoe.errors import (
    ArgumentError,
    ArgumentTypeError,
    ConvergenceWarning,
    DataError,
    FormulaError,
    caller_stacklevel,
)
from memoe.lmm.factory import lmm
from memoe.marginal.correlation import CorStruct, check_correlation_identifiable
from memoe.marginal.layout import GroupLayout, make_layout
from memoe.marginal.problem import MarginalProblem, RandomLevel
from memoe.marginal.result import MarginalResult
from memoe.marginal.varcomb import VarComb
from memoe.marginal.varfunc import VarFunc, iterate_fitted_covariate
from memoe.marginal.variance import VarIdent, check_variance_identifiable

# every variance function gls / lme accept as weights=
_VARIANCE_TYPES = (VarIdent, VarFunc, VarComb)

__all__ = ["GLS", "LME", "gls", "lme"]


# largest dense block (random effects outside the largest factor) for which the start comes from memoe.lmm
_LMM_START_MAX_DENSE = 3000


def _empty_theta_map() -> ThetaMap:
    e = np.zeros(0, dtype=int)
    return ThetaMap(block=e, row=e, col=e, block_sizes=(), names=[])


def nesting_order(blocks: list, formula: str, written: list[str] | None = None) -> list[int]:
    """Indices of the factor blocks from the outermost grouping level to the innermost.

    nlme's ``lme`` takes nested grouping factors only: each level of an inner factor must lie
    within one level of the factor outside it. The levels are ordered by their number of groups
    (fewest = outermost; ties keep the formula's order) and the nesting is checked on the data, after
    the interaction coding (``Dog:Side`` has one level per Dog and Side pair).

    ``written`` (the grouping factors in the formula's order) only orders the names in the message.

    Raises
    ------
    FormulaError
        Two factors that are not nested (crossed, or partly crossed), naming a level that falls in
        two outer levels.
    """
    order = sorted(range(len(blocks)), key=lambda k: blocks[k].nlevels)
    for a, b in itertools.pairwise(order):
        outer, inner = blocks[a].factor, blocks[b].factor
        # the outer level of each inner level; nested iff every inner level meets one outer level
        first = np.full(inner.nlevels, -1, dtype=np.int64)
        first[inner.codes[::-1]] = outer.codes[::-1]
        bad = np.flatnonzero(first[inner.codes] != outer.codes)
        if bad.size:
            r = bad[0]
            lev = inner.levels[inner.codes[r]]
            two = [outer.levels[first[inner.codes[r]]], outer.levels[outer.codes[r]]]
            # suggest the factor written first as the outer one (the usual intent of (1 | a) + (1 | b))
            names = [outer.name, inner.name]
            if written and all(n in written for n in names):
                names.sort(key=written.index)
            raise FormulaError(
                f"lme takes nested grouping factors, but {inner.name!r} is not nested in {outer.name!r}: its level "
                f"{lev!r} occurs within {outer.name!r} levels {two[0]!r} and {two[1]!r} (formula {formula!r}). If the "
                "levels of one factor are meant within each level of the other, write the inner one as an "
                f"interaction, e.g. (1 | {names[0]}:{names[1]}), or (1 | {names[0]}/{names[1]}) for both levels; use "
                "memoe.lmm for crossed designs"
            )
    return order


def _steps(x: np.ndarray, rel: float, floor: float) -> np.ndarray:
    """BOBYQA's initial trust-region step per parameter: ``rel * |x|``, at least ``floor``."""
    return np.maximum(rel * np.abs(x), floor)


class _MarginalModel:
    """Shared machinery of :class:`GLS` and :class:`LME` (not public)."""

    kind = "gls"

    def __init__(
        self,
        formula: str,
        data: pd.DataFrame,
        correlation: CorStruct | None = None,
        weights: VarIdent | VarFunc | VarComb | None = None,
        contrasts: dict[str, str] | None = None,
    ) -> None:
        formula = check_str(formula, "formula", "y ~ time")
        data = to_pandas(data, "data")
        if correlation is not None and not isinstance(correlation, CorStruct):
            raise ArgumentTypeError(
                f"correlation must be a memoe.marginal structure (AR1, CAR1, Exp, Symm, CompSymm, ARMA, Gaus, Spher, "
                f"Lin, Ratio) such as "
                f"AR1(group='id'), got {correlation!r} ({type(correlation).__name__})"
            )
        if weights is not None and not isinstance(weights, _VARIANCE_TYPES):
            raise ArgumentTypeError(
                f"weights must be a memoe.marginal variance function (VarIdent, VarPower, VarExp, VarConstPower, "
                f"VarFixed, VarComb) such as VarIdent('by'), got {weights!r} "
                f"({type(weights).__name__})"
            )
        self.formula = formula
        self.correlation = correlation
        self.weights = weights
        spec = parse_formula(formula)
        if self.kind == "gls" and spec.random:
            raise FormulaError(f"gls formula {formula!r} has random-effects terms; use memoe.marginal.lme")
        if self.kind == "lme" and not spec.random:
            raise FormulaError(f"lme formula {formula!r} has no random-effects term such as (1 | group)")
        extra: list[str] = []
        # a nested lme's innermost group may be an interaction (Dog:Side), named like its bar term
        re_groups = {":".join(t.group_factors) for t in spec.random}
        if correlation is not None:
            group_column = correlation.group and correlation.group not in re_groups
            extra += correlation.columns() + ([correlation.group] if group_column else [])
        if weights is not None:
            extra += weights.columns()
        for c in extra:
            if isinstance(data, pd.DataFrame) and c not in data.columns:
                raise DataError(
                    f"unknown column {c!r} (used by the residual structure); the data have {list(data.columns)[:12]}"
                )
        frame = build_frame(spec, data, extra=list(dict.fromkeys(extra)))
        y = numeric_response(frame.data, spec.response)
        if not np.all(np.isfinite(y)):
            raise DataError(f"response {spec.response!r} has {int((~np.isfinite(y)).sum())} non-finite values")
        _check_response_scale(y, spec.response)
        fixed = build_fixed(spec.fixed, frame.data, contrasts)
        # the contrast of every factor (R's default or the argument); the codec saves it
        self.contrasts: dict[str, str] = dict(fixed.contrasts)
        n = len(y)
        if spec.random:
            terms, blocks, theta_map = build_random(spec.random, frame.data, n)
        else:
            terms, blocks, theta_map = [], [], _empty_theta_map()
        self.design = Design(spec=spec, frame=frame, y=y, fixed=fixed, terms=terms, blocks=blocks, theta_map=theta_map)
        # grouping levels, outermost first (block indices into design.blocks, which lme4 orders innermost first)
        self.level_blocks: list[int] = nesting_order(blocks, formula, [":".join(t.group_factors) for t in spec.random])
        self.layout = self._layout(frame.data)
        # the residual structure acts within the innermost groups (nlme)
        self.cor_layout = self.layout
        if len(self.level_blocks) > 1:
            f = blocks[self.level_blocks[-1]].factor
            self.cor_layout = make_layout(f.codes, f.levels, f.name)
        cor = None if correlation is None else correlation.bind(self.cor_layout, frame.data)
        if weights is None:
            var = None
        elif isinstance(weights, VarIdent):
            var = weights.bind(frame.data)
        else:
            # nlme sorts the rows by the grouping factor: its strata (and parameters) follow that order
            order = None if self.layout.name is None else np.argsort(self.layout.codes, kind="stable")
            var = weights.bind(frame.data, order)
        if cor is not None:
            check_correlation_identifiable(cor, self.cor_layout, group=self.cor_layout.name)
        if isinstance(weights, VarIdent):
            check_variance_identifiable(var, weights.by, frame.data[weights.by])
        levels = [
            RandomLevel(
                name=blocks[k].factor.name, Z=np.asarray(blocks[k].Z, dtype=float), codes=blocks[k].factor.codes,
                nlevels=blocks[k].nlevels, block=k,
            )
            for k in self.level_blocks
        ]
        self.problem = MarginalProblem(
            y,
            fixed.X,
            self.layout,
            theta_map=theta_map if blocks else None,
            cor=cor,
            var=var,
            levels=levels,
            cor_layout=self.cor_layout if len(levels) > 1 else None,
        )

    @property
    def level_names(self) -> list[str]:
        """Grouping factors of the random effects, outermost first (nlme's levels 1, 2, ...)."""
        return [self.design.blocks[k].factor.name for k in self.level_blocks]

    def _layout(self, frame: pd.DataFrame) -> GroupLayout:
        d = self.design
        group = None if self.correlation is None else self.correlation.group
        if d.blocks:
            outer = d.blocks[self.level_blocks[0]].factor
            inner = d.blocks[self.level_blocks[-1]].factor
            if group is not None and group != inner.name:
                raise FormulaError(
                    f"the correlation structure's group {group!r} differs from the innermost random-effects grouping "
                    f"factor {inner.name!r}; nlme's lme needs the residual structure within the innermost groups "
                    f"(give group=None or group={inner.name!r})"
                )
            return make_layout(outer.codes, outer.levels, outer.name)
        n = d.n
        if self.correlation is None:
            # independent residuals: every row is a group of one (a diagonal W)
            return make_layout(np.arange(n), pd.RangeIndex(n), None)
        if group is None:
            return make_layout(np.zeros(n, dtype=np.int64), pd.Index(["all"]), None)
        f = make_grouping_factor(frame, (group,))
        return make_layout(f.codes, f.levels, group)

    # -- fitting ---------------------------------------------------------------------------------
    def _independence_fit(self, reml: bool) -> tuple[np.ndarray, np.ndarray]:
        """theta and residuals of the fit with independent homoscedastic residuals.

        ``lme``: memoe's LMM of the same formula (theta on the same relative scale, conditional
        residuals); ``gls``: ordinary least squares.
        """
        d = self.design
        # memoe.lmm factors the random effects of every factor but the largest as one dense matrix: for
        # nested designs with many groups (10,000 schools) that matrix would not fit in memory, so the
        # start is then lme4's default theta (identity relative factors) with the OLS residuals
        dense = sum(b.q * b.nlevels for b in d.blocks[1:])
        if not d.blocks or dense > _LMM_START_MAX_DENSE:
            beta, *_ = np.linalg.lstsq(d.X, d.y, rcond=None)
            theta0 = d.theta_map.initial() if d.blocks else np.zeros(0)
            return theta0, d.y - d.X @ beta

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit0 = lmm(self.formula, d.frame.data).fit(reml=reml, warn=False)
        # fitted to the kept rows only, so its residuals are already aligned with d.y
        return np.asarray(fit0.theta, dtype=float), fit0.resid.to_numpy()

    def start(self, reml: bool = True) -> np.ndarray:
        """Starting parameter vector from the independence fit.

        theta from it; variance ratios from its residual SDs per stratum; the best (lowest
        criterion) of a few correlation values, including a moment estimate from its standardised
        residuals where the structure has one.
        """
        P = self.problem
        theta0, resid = self._independence_fit(reml)
        if P.var is not None and P.var.needs_fitted:
            # nlme's first covariate: the fitted values of the fit with all variance weights 1
            self._initial_fitted = self.design.y - resid
            P.var = P.var.with_fitted(self._initial_fitted)
        v0 = np.zeros(0) if P.var is None else P.var.start(resid)
        cands = [np.zeros(0)]
        if P.cor is not None:
            cands = P.cor.starts(self.cor_layout, resid / P.ratios(v0))
        return best_start((np.concatenate([theta0, u, v0]) for u in cands), lambda x: P.deviance(x, reml),
                          "a positive-definite marginal covariance")

    def fit(
        self,
        reml: bool = True,
        start: np.ndarray | None = None,
        *,
        method: str | None = None,
        progress: bool | None = None,
    ) -> MarginalResult:
        """Estimate the covariance parameters by ML or REML (beta and sigma^2 profiled out).

        Parameters
        ----------
        reml : bool, default True
            nlme's default ``method = "REML"``.
        start : array-like, optional
            [theta, correlation u, variance u] on the unconstrained scale, finite, of length
            ``problem.size``.
        method : {"REML", "ML"}, optional
            nlme's spelling; overrides ``reml`` (a contradicting explicit ``reml=`` is refused).
        progress : bool, optional
            A progress bar over the objective's evaluations, shown once the fit has run for about two
            seconds (large unstructured or spatial structures); None (default): only when stderr is a
            terminal; False: never.

        Returns
        -------
        MarginalResult

        Raises
        ------
        ArgumentError, ArgumentTypeError
            ``method`` other than "REML"/"ML", a non-bool ``reml``, a ``start`` of the wrong length.
        """
        reml = check_bool(reml, "reml")
        if method is not None:
            if method not in ("REML", "ML"):
                raise ArgumentError(f"method must be 'REML' or 'ML' (nlme's spelling), got {method!r}")
            reml = method == "REML"
        if start is not None:
            start = self._check_start(start)
        # the per-group matrices are tiny: a second BLAS thread only adds synchronisation (measured
        # 1.6 ms vs 15 ms per evaluation of the BodyWeight lme objective on a busy 2-core machine)
        self._progress = None if progress is None else check_bool(progress, "progress")
        with blas_threads(1):
            return self._fit(reml, start)

    def _check_start(self, start) -> np.ndarray:
        try:
            x = np.asarray(start, dtype=float)
        except (TypeError, ValueError):
            raise ArgumentTypeError(f"start must be an array of numbers, got {type(start).__name__}") from None
        size = self.problem.size
        if x.shape != (size,):
            names = self.problem_names()
            raise ArgumentError(f"start must have {size} entries ({', '.join(names) or 'none'}), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ArgumentError("start has non-finite values")
        lo = self.problem.lower_bounds
        if np.any(x < lo):
            raise ArgumentError(
                f"start has {int(np.sum(x < lo))} entries below their lower bound (theta diagonals must be >= 0)"
            )
        return x

    def problem_names(self) -> list[str]:
        """Names of the entries of the parameter vector [theta, correlation u, variance u]."""
        P = self.problem
        names = list(P.theta_map.names) if P.theta_map is not None else []
        names += [f"cor:{n}" for n in (P.cor.names if P.cor is not None else [])]
        names += [f"var:{n}" for n in (P.var.names if P.var is not None else [])]
        return [str(n) for n in names]

    def _fit(self, reml: bool, start: np.ndarray | None) -> MarginalResult:
        t0 = time.perf_counter()
        P = self.problem
        x0 = self.start(reml) if start is None else np.asarray(start, dtype=float)

        def f(x: np.ndarray) -> float:
            return P.deviance(x, reml)

        lower = P.lower_bounds

        def optimise(x0: np.ndarray) -> tuple[np.ndarray, int, list[str]]:
            # steps proportional to the parameters: theta entries differ by orders of magnitude when the
            # random-effects columns do (intercept vs slope per day); a common step wastes evaluations
            bar = dict(progress=getattr(self, "_progress", None), desc=f"{self.kind} {'REML' if reml else 'ML'}")
            opt = minimize_bounded(f, x0, lower, initial_step=_steps(x0, 0.2, 0.02) if P.size else None, **bar)
            # a restart from the optimum (as lme4 does at the boundary) guards against BOBYQA stopping
            # on a poorly conditioned interpolation model
            opt2 = minimize_bounded(f, opt.x, lower, initial_step=_steps(opt.x, 0.02, 0.002) if P.size else None, **bar)
            x = opt2.x if opt2.fmin <= opt.fmin else opt.x
            msgs = []
            if opt.return_code < 0 or opt2.return_code < 0:
                msgs.append(f"optimiser stopped: {opt.message} / {opt2.message}")
            return x, opt.feval + opt2.feval, msgs

        if P.var is not None and P.var.needs_fitted:
            # nlme's alternation for a fitted-value variance covariate (memoe.marginal.varfunc)
            if getattr(self, "_initial_fitted", None) is None or start is not None:
                self._initial_fitted = P.solve(x0, reml).fitted_conditional
            x, feval, messages = iterate_fitted_covariate(P, x0, reml, optimise, self._initial_fitted, self.kind)
        else:
            x, feval, messages = optimise(x0)
        if messages:
            warnings.warn(f"{self.kind}: {messages[-1]}", ConvergenceWarning, stacklevel=caller_stacklevel())
        sol = P.solve(x, reml)
        return MarginalResult(
            model=self,
            solution=sol,
            reml=reml,
            feval=feval,
            seconds=time.perf_counter() - t0,
            messages=messages,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.formula!r}, correlation={self.correlation!r}, weights={self.weights!r})"


class GLS(_MarginalModel):
    """Generalised least squares with a residual correlation structure and variance function (nlme's ``gls``).

    Parameters
    ----------
    formula, data, correlation, weights, contrasts
        As :func:`gls` (which builds this class).

    R equivalent
    ------------
    ``nlme::gls(model, data, correlation, weights, method = "REML")``.

    Examples
    --------
    >>> import memoe
    >>> from memoe.marginal import GLS, CAR1
    >>> model = GLS("weight ~ Time * Diet", memoe.datasets.load("BodyWeight"), correlation=CAR1("Time", "Rat"))
    >>> fit = model.fit(reml=False)
    >>> fit.reml
    False
    """

    kind = "gls"


class LME(_MarginalModel):
    """Linear mixed model with one grouping factor or several nested ones and a residual structure (nlme's ``lme``).

    Parameters
    ----------
    formula, data, correlation, weights, contrasts
        As :func:`lme` (which builds this class).

    R equivalent
    ------------
    ``nlme::lme(fixed, data, random = ~ ... | group, correlation, weights, method = "REML")``.

    Examples
    --------
    >>> import memoe
    >>> from memoe.marginal import LME, AR1
    >>> f = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)"
    >>> fit = LME(f, memoe.datasets.load("Ovary"), correlation=AR1()).fit()
    >>> int(fit.ngroups["Mare"])
    11

    """

    kind = "lme"


def gls(
    formula: str, data: pd.DataFrame, correlation: CorStruct | None = None,
    weights: VarIdent | VarFunc | VarComb | None = None,
    contrasts: dict[str, str] | None = None,
) -> GLS:
    """nlme's ``gls``: ``y ~ fixed`` with correlated and/or heteroscedastic residuals.

    Parameters
    ----------
    formula : str
        Fixed part only (formulaic syntax, R's coefficient names).
    data : pandas.DataFrame
    correlation : CorStruct, optional
        ``AR1``, ``CAR1``, ``Exp``, ``Symm``, ``CompSymm``, ``ARMA``, ``Gaus``, ``Spher``, ``Lin`` or
        ``Ratio`` (with its ``group``; no group = the whole data set is one group).
    weights : VarIdent, VarPower, VarExp, VarConstPower, VarFixed or VarComb, optional
        nlme's variance functions; those of the fitted values (``VarPower()``) are iterated to
        nlme's fixed point (:func:`memoe.marginal.varfunc.iterate_fitted_covariate`).
    contrasts : dict, optional
        R's ``contrasts=``: factor column -> ``"treatment"``, ``"sum"``, ``"helmert"`` or ``"poly"``.
        Default (None) is R's: treatment for unordered factors, poly for ordered Categoricals.

    Returns
    -------
    GLS
        Call ``.fit(reml=True)``.

    R equivalent
    ------------
    ``nlme::gls(model, data, correlation = corCAR1(form = ~ Time | Rat), weights = varIdent(...))``.

    Examples
    --------
    >>> import memoe
    >>> from memoe.marginal import CAR1
    >>> bw = memoe.datasets.load("BodyWeight")
    >>> fit = memoe.gls("weight ~ Time * Diet", bw, correlation=CAR1("Time", "Rat")).fit(reml=True)
    >>> fit.coef_table().shape
    (6, 5)
    """
    return GLS(formula, data, correlation=correlation, weights=weights, contrasts=contrasts)


def lme(
    formula: str, data: pd.DataFrame, correlation: CorStruct | None = None,
    weights: VarIdent | VarFunc | VarComb | None = None,
    contrasts: dict[str, str] | None = None,
) -> LME:
    """nlme's ``lme`` with random effects in lme4 syntax, e.g. ``"y ~ t + (1 | id)"``, and a residual structure.

    Replicates R's ``nlme::lme(fixed, data, random, correlation, weights, method)``.

    Parameters
    ----------
    formula : str
        Fixed part and random-effects terms. One grouping factor (``(t | id)``) or several *nested*
        ones: nlme's ``random = list(Dog = ~ day, Side = ~ 1)`` is ``(day | Dog) + (1 | Dog:Side)``,
        ``random = ~ 1 | Block/Variety`` is ``(1 | Block/Variety)`` (lme4's expansion into
        ``(1 | Block) + (1 | Variety:Block)``). Nesting is checked on the data: every level of an
        inner factor must lie within one level of the factor outside it (levels are ordered by
        their number of groups). Crossed factors are refused; fit them with :func:`memoe.lmm`.
    data : pandas.DataFrame
    correlation : CorStruct, optional
        Acts within the innermost groups, as in nlme (its ``group`` may be left ``None`` or name the
        innermost factor, e.g. ``"Dog:Side"``).
    weights : VarIdent, VarPower, VarExp, VarConstPower, VarFixed or VarComb, optional
        Variance function of the residuals (nlme's ``weights=``).
    contrasts : dict, optional
        As in :func:`gls`.

    Returns
    -------
    LME
        Call ``.fit(reml=True)``. The result's ``ranef``, ``coef()``, ``ranef_covs``, ``ngroups``
        and ``fitted_levels`` have one entry per grouping level (outermost first) and
        ``predict(newdata, level=k)`` is nlme's ``predict(fit, newdata, level = k)``.

    Notes
    -----
    The outermost groups are independent: ``V_i = sum_q Z_iq (I kron G_q) Z_iq' + sigma^2 S_i C_i S_i``
    with the inner levels' random effects block-diagonal within group i and ``C_i`` block-diagonal
    over the innermost groups; V_i is formed and factored in batches of equal-size outer groups
    (:mod:`memoe.marginal.problem`).

    R equivalent
    ------------
    ``nlme::lme(fixed, data, random = ~ 1 | Mare, correlation = corAR1())``; nested levels:
    ``nlme::lme(fixed, data, random = list(Dog = ~ day, Side = ~ 1))``.

    Examples
    --------
    >>> import memoe
    >>> pixel = memoe.datasets.load("Pixel")
    >>> fit = memoe.lme("pixel ~ day + I(day**2) + (day | Dog) + (1 | Dog:Side)", pixel).fit()
    >>> round(fit.loglik, 3)
    -412.605
    >>> list(fit.ranef)
    ['Dog', 'Dog:Side']
    """
    return LME(formula, data, correlation=correlation, weights=weights, contrasts=contrasts)


# the marginal likelihood works with squares and products of y: beyond this magnitude they overflow
# (1e150 squared is 1e300) or underflow, and no starting covariance is positive definite
_Y_MAGNITUDE = 1e150


def _check_response_scale(y: np.ndarray, name: str) -> None:
    """Refuse a response whose spread cannot be squared in double precision (e.g. a response times 1e300)."""
    if not len(y):
        return
    big = float(np.max(np.abs(y)))
    spread = float(np.ptp(y))
    if big > _Y_MAGNITUDE or 0.0 < spread < 1.0 / _Y_MAGNITUDE:
        raise DataError(
            f"response {name!r} has values of magnitude {big:.3g} and range {spread:.3g}: its squares over- or "
            f"underflow double precision; rescale it (e.g. divide by a power of ten) to a range within "
            f"[1e-150, 1e150]"
        )

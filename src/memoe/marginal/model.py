"""``gls`` and ``lme``: linear models with residual correlation / variance structures (nlme's).

Stages, as for :func:`memoe.lmm`: the formula and data go through memoe's formula parser and design
builders (fixed part by formulaic, bar terms by :mod:`memoe.core.design.random`); the rows are grouped
by subject and the groups by size (:mod:`memoe.marginal.layout`); the structures are bound to the
groups; :class:`~memoe.marginal.problem.MarginalProblem` is the profiled (RE)ML objective;
BOBYQA (:func:`memoe.core.optim.minimize_bounded`) minimises it; :class:`MarginalResult` is frozen.
"""

from __future__ import annotations

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
from memoe.errors import (
    ArgumentError,
    ArgumentTypeError,
    ConvergenceWarning,
    DataError,
    FormulaError,
    caller_stacklevel,
)
from memoe.lmm.model import lmm
from memoe.marginal.correlation import CorStruct, check_correlation_identifiable
from memoe.marginal.layout import GroupLayout, make_layout
from memoe.marginal.problem import MarginalProblem
from memoe.marginal.result import MarginalResult
from memoe.marginal.variance import VarIdent, check_variance_identifiable

__all__ = ["GLS", "LME", "gls", "lme"]


def _empty_theta_map() -> ThetaMap:
    e = np.zeros(0, dtype=int)
    return ThetaMap(block=e, row=e, col=e, block_sizes=(), names=[])


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
        weights: VarIdent | None = None,
        contrasts: dict[str, str] | None = None,
    ) -> None:
        formula = check_str(formula, "formula", "y ~ time")
        data = to_pandas(data, "data")
        if correlation is not None and not isinstance(correlation, CorStruct):
            raise ArgumentTypeError(
                f"correlation must be a memoe.marginal structure (AR1, CAR1, Exp, Symm, CompSymm) such as "
                f"AR1(group='id'), got {correlation!r} ({type(correlation).__name__})"
            )
        if weights is not None and not isinstance(weights, VarIdent):
            raise ArgumentTypeError(
                f"weights must be a memoe.marginal variance function such as VarIdent('by'), got {weights!r} "
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
        if correlation is not None:
            extra += correlation.columns() + ([correlation.group] if correlation.group else [])
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
            if len(blocks) != 1:
                names = [b.factor.name for b in blocks]
                raise FormulaError(
                    f"lme with a residual structure supports one grouping factor; formula {formula!r} has {names}"
                )
        else:
            terms, blocks, theta_map = [], [], _empty_theta_map()
        self.design = Design(spec=spec, frame=frame, y=y, fixed=fixed, terms=terms, blocks=blocks, theta_map=theta_map)
        self.layout = self._layout(frame.data)
        cor = None if correlation is None else correlation.bind(self.layout, frame.data)
        var = None if weights is None else weights.bind(frame.data)
        if cor is not None:
            check_correlation_identifiable(cor, self.layout, group=self.layout.name)
        if var is not None:
            check_variance_identifiable(var, weights.by, frame.data[weights.by])
        self.problem = MarginalProblem(
            y,
            fixed.X,
            self.layout,
            Z=blocks[0].Z if blocks else None,
            theta_map=theta_map if blocks else None,
            cor=cor,
            var=var,
        )

    def _layout(self, frame: pd.DataFrame) -> GroupLayout:
        d = self.design
        group = None if self.correlation is None else self.correlation.group
        if d.blocks:
            f = d.blocks[0].factor
            if group is not None and group != f.name:
                raise FormulaError(
                    f"the correlation structure's group {group!r} differs from the random-effects grouping "
                    f"factor {f.name!r}; nlme's lme needs the residual structure within the innermost groups"
                )
            return make_layout(f.codes, f.levels, f.name)
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
        if not d.blocks:
            beta, *_ = np.linalg.lstsq(d.X, d.y, rcond=None)
            return np.zeros(0), d.y - d.X @ beta

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
        v0 = np.zeros(0) if P.var is None else P.var.start(resid)
        cands = [np.zeros(0)]
        if P.cor is not None:
            cands = P.cor.starts(self.layout, resid / P.ratios(v0))
        best, best_f = None, np.inf
        for u in cands:
            x = np.concatenate([theta0, u, v0])
            f = P.deviance(x, reml)
            if f < best_f:
                best, best_f = x, f
        if best is None:
            raise DataError("no starting value gives a positive-definite marginal covariance")
        return best

    def fit(self, reml: bool = True, start: np.ndarray | None = None, *, method: str | None = None) -> MarginalResult:
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
        # steps proportional to the parameters: theta entries differ by orders of magnitude when the
        # random-effects columns do (intercept vs slope per day); a common step wastes evaluations
        opt = minimize_bounded(f, x0, lower, initial_step=_steps(x0, 0.2, 0.02) if P.size else None)
        # a restart from the optimum (as lme4 does at the boundary) guards against BOBYQA stopping
        # on a poorly conditioned interpolation model
        opt2 = minimize_bounded(f, opt.x, lower, initial_step=_steps(opt.x, 0.02, 0.002) if P.size else None)
        x = opt2.x if opt2.fmin <= opt.fmin else opt.x
        messages = []
        if opt.return_code < 0 or opt2.return_code < 0:
            messages.append(f"optimiser stopped: {opt.message} / {opt2.message}")
            warnings.warn(f"{self.kind}: {messages[-1]}", ConvergenceWarning, stacklevel=caller_stacklevel())
        sol = P.solve(x, reml)
        return MarginalResult(
            model=self,
            solution=sol,
            reml=reml,
            feval=opt.feval + opt2.feval,
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
    """Linear mixed model with one grouping factor and a residual structure (nlme's ``lme``).

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
    formula: str, data: pd.DataFrame, correlation: CorStruct | None = None, weights: VarIdent | None = None,
    contrasts: dict[str, str] | None = None,
) -> GLS:
    """nlme's ``gls``: ``y ~ fixed`` with correlated and/or heteroscedastic residuals.

    Parameters
    ----------
    formula : str
        Fixed part only (formulaic syntax, R's coefficient names).
    data : pandas.DataFrame
    correlation : CorStruct, optional
        ``AR1``, ``CAR1``, ``Exp``, ``Symm`` or ``CompSymm`` (with its ``group``; no group = the whole
        data set is one group).
    weights : VarIdent, optional
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
    formula: str, data: pd.DataFrame, correlation: CorStruct | None = None, weights: VarIdent | None = None,
    contrasts: dict[str, str] | None = None,
) -> LME:
    """nlme's ``lme`` with random effects in lme4 syntax, e.g. ``"y ~ t + (1 | id)"``, and a residual structure.

    The residual structure acts within the groups of the (single) random-effects grouping factor.
    ``contrasts`` as in :func:`gls`.

    Parameters
    ----------
    formula : str
        Fixed effects and one random-effects grouping factor in lme4 syntax, e.g. ``"y ~ t + (t | id)"``.
    data : pandas.DataFrame, polars.DataFrame or pyarrow.Table
    correlation : CorStruct, optional
        ``AR1``, ``CAR1``, ``Exp``, ``Symm`` or ``CompSymm`` within the groups (default: independent).
    weights : VarIdent, optional
        A residual SD per stratum.
    contrasts : dict, optional
        Factor column -> ``"treatment"``, ``"sum"``, ``"helmert"`` or ``"poly"`` (R's ``contrasts=``).

    Returns
    -------
    LME
        Call ``.fit(reml=True)``.

    R equivalent
    ------------
    ``nlme::lme(fixed, data, random = ~ 1 | Mare, correlation = corAR1())``.

    Examples
    --------
    >>> import memoe
    >>> from memoe.marginal import AR1
    >>> ovary = memoe.datasets.load("Ovary")
    >>> f = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)"
    >>> fit = memoe.lme(f, ovary, correlation=AR1()).fit()
    >>> fit.ranef["Mare"].shape
    (11, 1)
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

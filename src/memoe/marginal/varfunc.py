"""nlme's covariate variance functions: ``varPower``, ``varExp``, ``varConstPower``, ``varFixed``, ``varComb``.

Each function gives row j the residual SD ratio ``s_j`` (the residual SD is ``sigma * s_j``; nlme's
``varWeights`` are ``1 / s_j``) from a variance covariate ``v_j``:

=================== ================================ ======================= ========================
class               SD ratio s(v)                    parameters (natural)    unconstrained (optimiser)
=================== ================================ ======================= ========================
``VarPower``        ``|v| ** power``                 ``power``               ``power``
``VarExp``          ``exp(expon * v)``               ``expon``               ``expon``
``VarConstPower``   ``const + |v| ** power``         ``const > 0, power``    ``log(const), power``
``VarFixed``        ``sqrt(|v|)`` (Var proportional  none                    none
                    to v)
``VarComb(a, b)``   ``s_a(v) * s_b(v)``              those of a, then b      those of a, then b
                    (:mod:`memoe.marginal.varcomb`)
=================== ================================ ======================= ========================

``by=`` (nlme's ``form = ~ v | by``) gives every stratum its own parameter(s), named by the stratum
labels in order of first appearance (nlme's ``unique(strata)``); ``fixed=`` holds parameters at
given values (nlme's ``fixed``).

The covariate is a numeric column, or -- nlme's default ``form = ~ fitted(.)`` -- the fitted values.
Fitted values depend on beta, so nlme alternates: with the covariate held fixed it optimises the
(RE)ML criterion over the covariance parameters, recomputes the fitted values (``lme``: at the
innermost level, i.e. including the BLUPs) and repeats until the parameters stop changing
(:func:`iterate_fitted_covariate`). The result is the fixed point: parameters that are optimal for
the covariate they produce. Within one evaluation the SD ratios of all rows are one vectorised
expression, inside the same batched factorisation as every other structure.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.errors import ArgumentError, ArgumentTypeError, ConvergenceWarning, DataError, MemoeError, warn

__all__ = [
    "BoundVarFunc",
    "VarConstPower",
    "VarExp",
    "VarFixed",
    "VarFunc",
    "VarPower",
    "iterate_fitted_covariate",
]

_FITTED = ("fitted", "fitted(.)", "~fitted(.)", "~ fitted(.)")


def _check_column_arg(value, cls: str, arg: str, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{cls}({arg}=...) must be a column name (str){' or None' if optional else ''}, "
                                f"got {value!r} ({type(value).__name__})")
    if not value.strip():
        raise ArgumentError(f"{cls}({arg}=...) must be a non-empty column name")


def _numeric_covariate(frame: pd.DataFrame, name: str, what: str) -> np.ndarray:
    if name not in frame.columns:
        raise DataError(f"unknown column {name!r} (the {what})")
    col = frame[name]
    if not pd.api.types.is_numeric_dtype(col) or col.dtype == bool:
        raise DataError(f"column {name!r} (the {what}) must be numeric, it has dtype {col.dtype}")
    v = col.to_numpy(dtype=float)
    bad = ~np.isfinite(v)
    if np.any(bad):
        raise DataError(f"column {name!r} (the {what}) has {int(bad.sum())} missing or non-finite values")
    return v


def _strata(
    frame: pd.DataFrame, by: str | None, what: str, order: np.ndarray | None = None
) -> tuple[np.ndarray, list[str]]:
    """Stratum code of each row and the labels in order of first appearance (nlme's ``unique``).

    ``order``: the row order nlme works in (gls / lme sort the rows by the grouping factor), so the
    strata -- and the parameters -- come in nlme's order.
    """
    if by is None:
        return np.zeros(len(frame), dtype=np.int64), []
    if by not in frame.columns:
        raise DataError(f"unknown column {by!r} (the strata of {what})")
    labels = frame[by].astype(str).to_numpy()
    seen = labels if order is None else labels[order]
    uniq = list(dict.fromkeys(seen))
    codes = pd.Index(uniq).get_indexer(labels)
    return codes.astype(np.int64), [str(u) for u in uniq]


class VarFunc(ABC):
    """Base class of the covariate variance functions (see the module docstring)."""

    label = "variance function"
    #: natural-scale names of the parameters of one stratum
    par_names: tuple[str, ...] = ()

    # ----------------------------------------------------------------- what subclasses provide
    @abstractmethod
    def _ratio(self, pars: np.ndarray, v: np.ndarray) -> np.ndarray:
        """SD ratios of rows with covariate ``v`` and per-row parameters ``pars`` (N, k), natural scale."""

    def _nat(self, i: int, u: np.ndarray) -> np.ndarray:
        """Parameter ``i``: unconstrained -> natural scale (identity by default)."""
        return u

    def _unnat(self, i: int, x: np.ndarray) -> np.ndarray:
        return x

    def _kinds(self) -> list[str]:
        return ["other"] * len(self.par_names)

    # ----------------------------------------------------------------- shared
    @property
    def form(self) -> str | None:  # pragma: no cover - overridden by dataclass fields
        return None

    @property
    def uses_fitted(self) -> bool:
        f = getattr(self, "form", None)
        return f is None

    def columns(self) -> list[str]:
        out = [] if self.uses_fitted else [self.form]
        by = getattr(self, "by", None)
        return out + ([by] if by else [])

    def formula(self) -> str:
        lhs = "fitted(.)" if self.uses_fitted else self.form
        by = getattr(self, "by", None)
        return f"~{lhs} | {by}" if by else f"~{lhs}"

    def _validate(self) -> None:
        name = type(self).__name__
        form = getattr(self, "form", None)
        if isinstance(form, str) and form.strip().replace(" ", "") in _FITTED:
            object.__setattr__(self, "form", None)
            form = None
        _check_column_arg(form, name, "form")
        _check_column_arg(getattr(self, "by", None), name, "by")
        fixed = getattr(self, "fixed", None)
        if fixed is None:
            return
        if isinstance(fixed, bool) or not isinstance(fixed, int | float | dict):
            raise ArgumentTypeError(
                f"{name}(fixed=...) must be a number{' or a dict' if len(self.par_names) == 1 else ''} "
                f"(e.g. {{'{self.par_names[-1]}': 0.5}}), got {fixed!r}"
            )
        if len(self.par_names) > 1 and not isinstance(fixed, dict):
            raise ArgumentTypeError(f"{name}(fixed=...) must be a dict with keys {list(self.par_names)}, got {fixed!r}")

    def _fixed_table(self, levels: list[str]) -> np.ndarray:
        """(k, L) array of fixed natural values (NaN = estimated), from ``fixed``."""
        name = type(self).__name__
        k, L = len(self.par_names), max(len(levels), 1)
        out = np.full((k, L), np.nan)
        fixed = getattr(self, "fixed", None)
        if fixed is None:
            return out
        per_par = {self.par_names[0]: fixed} if len(self.par_names) == 1 else dict(fixed)
        if len(self.par_names) == 1 and isinstance(fixed, dict) and not levels:
            raise ArgumentError(f"{name}(fixed=...) is a dict of strata but there is no by=; give a number")
        for key, val in per_par.items():
            if key not in self.par_names:
                raise ArgumentError(f"{name}(fixed=...) has the key {key!r}; accepted keys: {list(self.par_names)}")
            i = self.par_names.index(key)
            if isinstance(val, dict):
                if not levels:
                    raise ArgumentError(f"{name}(fixed=...) gives strata for {key!r} but there is no by=")
                for lev, x in val.items():
                    if str(lev) not in levels:
                        raise ArgumentError(
                            f"{name}(fixed=...): {lev!r} is not a stratum of {self.by!r}; the strata are {levels[:12]}"
                        )
                    out[i, levels.index(str(lev))] = float(x)
            else:
                if isinstance(val, bool) or not isinstance(val, int | float):
                    raise ArgumentTypeError(f"{name}(fixed=...): the value for {key!r} must be a number, got {val!r}")
                out[i, :] = float(val)
        if not np.all(np.isfinite(out[~np.isnan(out)])):
            raise ArgumentError(f"{name}(fixed=...) has non-finite values")
        if "const" in self.par_names and np.any(out[self.par_names.index("const")] <= 0):
            raise ArgumentError(f"{name}(fixed=...): const must be > 0")
        return out

    def bind(self, frame: pd.DataFrame, order: np.ndarray | None = None) -> BoundVarFunc:
        """Read the covariate and strata of ``frame``; the fitted-value covariate starts at ``None``.

        ``order``: nlme's row order (by grouping factor), which fixes the order of the strata.
        """
        name = type(self).__name__
        v = None if self.uses_fitted else _numeric_covariate(frame, self.form, f"variance covariate of {name}")
        codes, levels = _strata(frame, getattr(self, "by", None), name, order)
        fixed = self._fixed_table(levels)
        names = []
        for i, p in enumerate(self.par_names):
            for j in range(fixed.shape[1]):
                if np.isnan(fixed[i, j]):
                    lev = levels[j] if levels else None
                    if lev is None:
                        names.append(p)
                    elif len(self.par_names) == 1:
                        names.append(lev)
                    else:
                        names.append(f"{p}.{lev}")
        return BoundVarFunc(function=self, covariate=v, codes=codes, levels=levels, fixed=fixed, names=names)


@dataclass(frozen=True)
class BoundVarFunc:
    """A covariate variance function bound to the rows of one data set.

    Attributes
    ----------
    function : VarFunc
    covariate : numpy.ndarray or None
        Variance covariate of every row (``None``: fitted values not yet set).
    codes : numpy.ndarray of int
        Stratum of every row (all 0 without ``by``).
    levels : list of str
        Stratum labels (empty without ``by``).
    fixed : numpy.ndarray, shape (k, L)
        Fixed natural values, NaN where estimated.
    names : list of str
        Names of the estimated parameters (nlme's ``coef(varStruct)`` names).
    """

    function: VarFunc
    covariate: np.ndarray | None
    codes: np.ndarray
    levels: list[str]
    fixed: np.ndarray
    names: list[str]

    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def needs_fitted(self) -> bool:
        return self.function.uses_fitted

    @property
    def strata(self) -> np.ndarray:
        """Rows with equal codes have equal SD ratios whatever the parameters (the problem's pattern key)."""
        if self.covariate is None or self.needs_fitted:
            return np.arange(len(self.codes))
        key = np.column_stack([self.codes.astype(float), self.covariate])
        return np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)

    def with_fitted(self, fitted: np.ndarray) -> BoundVarFunc:
        """The same function with the fitted-value covariate set to ``fitted``."""
        return dataclasses.replace(self, covariate=np.asarray(fitted, dtype=float).copy())

    def _table(self, u: np.ndarray) -> np.ndarray:
        """(k, L) natural parameters: the fixed values and the estimated ones from ``u``.

        ``u`` lists the estimated entries parameter-major (all strata of the first parameter, then of
        the second), nlme's order.
        """
        tab = self.fixed.copy()
        free = np.isnan(tab)
        raw = np.zeros_like(tab)
        raw[free] = u
        for i in range(tab.shape[0]):
            tab[i, free[i]] = self.function._nat(i, raw[i, free[i]])
        return tab

    def ratios(self, u: np.ndarray, covariate: np.ndarray | None = None, codes: np.ndarray | None = None) -> np.ndarray:
        """SD ratio of every row (vectorised over rows); ``covariate``/``codes`` default to the bound rows."""
        v = self.covariate if covariate is None else covariate
        if v is None:
            return np.ones(len(self.codes))
        c = self.codes if codes is None else codes
        tab = self._table(np.asarray(u, dtype=float))
        return self.function._ratio(tab[:, c].T, v)

    def natural(self, u: np.ndarray) -> pd.Series:
        """Estimated parameters on nlme's natural scale (``coef(varStruct, unconstrained = FALSE)``)."""
        tab = self._table(np.asarray(u, dtype=float))
        vals = tab[np.isnan(self.fixed)]
        return pd.Series(vals, index=self.names, dtype=float)

    def transform(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Natural value, derivative d natural / d u and kind ("sd": log scale, "other") per entry of ``u``."""
        u = np.asarray(u, dtype=float)
        nat = self.natural(u).to_numpy()
        kinds_par = self.function._kinds()
        free = np.isnan(self.fixed)
        kinds = [kinds_par[i] for i in range(free.shape[0]) for _ in range(int(free[i].sum()))]
        deriv = np.where(np.array(kinds) == "sd", nat, 1.0) if len(kinds) else np.zeros(0)
        return nat, deriv, kinds

    def term(self, name: str) -> str:
        """broom-style term of parameter ``name`` in ``tidy()``: ``varPower(power)``, ``varPower(power:Male)``."""
        fn = type(self.function).__name__
        fn = fn[0].lower() + fn[1:]
        return f"{fn}({name})"

    def start(self, resid: np.ndarray | None = None, fitted: np.ndarray | None = None) -> np.ndarray:
        """Unconstrained starting values: nlme's defaults (power 0, expon 0, const 0.1)."""
        k = len(self.function.par_names)
        free = np.isnan(self.fixed)
        out = []
        default = self.function.start_natural()
        for i in range(k):
            out += [float(self.function._unnat(i, np.float64(default[i])))] * int(free[i].sum())
        return np.array(out, dtype=float)

    def ratios_for(self, u: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        """SD ratios of the rows of new data (prediction intervals)."""
        fn = self.function
        name = type(fn).__name__
        if self.needs_fitted:
            raise MemoeError(
                f"{name} uses the fitted values as its variance covariate: SD ratios of new rows are not defined "
                "before they are predicted; use a column covariate (form='column') for prediction intervals"
            )
        v = _numeric_covariate(frame, fn.form, f"variance covariate of {name}")
        by = getattr(fn, "by", None)
        if by is None:
            codes = np.zeros(len(frame), dtype=np.int64)
        else:
            if by not in frame.columns:
                raise DataError(f"the data have no column {by!r} (the strata of {name})")
            lab = frame[by].astype(str).to_numpy()
            codes = np.array([self.levels.index(x) if x in self.levels else -1 for x in lab], dtype=np.int64)
            if np.any(codes < 0):
                raise DataError(
                    f"column {by!r} (the strata of {name}) has the value {lab[codes < 0][0]!r}, not a stratum of the "
                    f"fit; the strata are {self.levels[:12]}"
                )
        return self.ratios(u, covariate=v, codes=codes)

    def summary_lines(self, u: np.ndarray, block: Callable[[pd.Series], list[str]]) -> list[str]:
        fn = self.function
        lines = [f" Structure: {fn.label}", f" Formula: {fn.formula()}"]
        if self.size:
            lines += [" Parameter estimates:", *block(self.natural(u))]
        return lines


# ---------------------------------------------------------------------------------------------- the functions
def _post(self) -> None:
    VarFunc._validate(self)


@dataclass(frozen=True)
class VarPower(VarFunc):
    """nlme's ``varPower``: residual SD ``sigma * |v| ** power``.

    Parameters
    ----------
    form : str, optional
        Variance covariate column; ``None`` (nlme's default ``~ fitted(.)``) uses the fitted values.
    by : str, optional
        Stratum column: one ``power`` per stratum (nlme's ``form = ~ v | by``).
    fixed : float or dict, optional
        Hold ``power`` at this value (a dict ``{stratum: value}`` with ``by``).

    R equivalent
    ------------
    ``nlme::varPower(form = ~ v | by, fixed = ...)``.

    Examples
    --------
    >>> memoe.lme("weight ~ Time * Diet + (Time | Rat)", bw, weights=VarPower())  # doctest: +SKIP
    """

    form: str | None = None
    by: str | None = None
    fixed: float | dict | None = None

    label = "Power of variance covariate"
    par_names = ("power",)

    def __post_init__(self) -> None:
        _post(self)
        if self.by:
            object.__setattr__(self, "label", "Power of variance covariate, different strata")

    def start_natural(self) -> list[float]:
        return [0.0]

    def _ratio(self, pars: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.abs(v) ** pars[:, 0]


@dataclass(frozen=True)
class VarExp(VarFunc):
    """nlme's ``varExp``: residual SD ``sigma * exp(expon * v)``.

    Parameters
    ----------
    form, by, fixed
        As :class:`VarPower` (the parameter is ``expon``).

    R equivalent
    ------------
    ``nlme::varExp(form = ~ v | by)``.

    Examples
    --------
    >>> memoe.gls("distance ~ age * Sex", orth, weights=VarExp("age"))  # doctest: +SKIP
    """

    form: str | None = None
    by: str | None = None
    fixed: float | dict | None = None

    label = "Exponential of variance covariate"
    par_names = ("expon",)

    def __post_init__(self) -> None:
        _post(self)
        if self.by:
            object.__setattr__(self, "label", "Exponential of variance covariate, different strata")

    def start_natural(self) -> list[float]:
        return [0.0]

    def _ratio(self, pars: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.exp(pars[:, 0] * v)


@dataclass(frozen=True)
class VarConstPower(VarFunc):
    """nlme's ``varConstPower``: residual SD ``sigma * (const + |v| ** power)``, ``const > 0``.

    Parameters
    ----------
    form, by
        As :class:`VarPower`.
    fixed : dict, optional
        ``{"const": value}`` and/or ``{"power": value}`` (values may be ``{stratum: value}`` dicts).

    R equivalent
    ------------
    ``nlme::varConstPower(form = ~ v | by)``; ``const`` is optimised on the log scale.

    Examples
    --------
    >>> memoe.gls("distance ~ age", orth, weights=VarConstPower("age"))  # doctest: +SKIP
    """

    form: str | None = None
    by: str | None = None
    fixed: dict | None = None

    label = "Constant plus power of variance covariate"
    par_names = ("const", "power")

    def __post_init__(self) -> None:
        _post(self)
        if self.by:
            object.__setattr__(self, "label", "Constant plus power of variance covariate, different strata")

    def start_natural(self) -> list[float]:
        return [0.1, 0.0]  # nlme's dfltCoef

    def _nat(self, i: int, u: np.ndarray) -> np.ndarray:
        return np.exp(u) if i == 0 else u

    def _unnat(self, i: int, x: np.ndarray) -> np.ndarray:
        return np.log(x) if i == 0 else x

    def _kinds(self) -> list[str]:
        return ["sd", "other"]

    def _ratio(self, pars: np.ndarray, v: np.ndarray) -> np.ndarray:
        return pars[:, 0] + np.abs(v) ** pars[:, 1]


@dataclass(frozen=True)
class VarFixed(VarFunc):
    """nlme's ``varFixed(~ v)``: residual variance proportional to the column ``v`` (no parameter).

    Parameters
    ----------
    form : str
        Positive numeric column (the SD ratio is ``sqrt(v)``).

    R equivalent
    ------------
    ``nlme::varFixed(~ v)``.

    Examples
    --------
    >>> memoe.gls("y ~ x", df, weights=VarFixed("n_inv"))  # doctest: +SKIP
    """

    form: str = None  # type: ignore[assignment]

    label = "fixed weights"
    par_names = ()

    def __post_init__(self) -> None:
        if self.form is None:
            raise ArgumentTypeError("VarFixed(form=...) needs the variance covariate column, e.g. VarFixed('n')")
        _check_column_arg(self.form, "VarFixed", "form", optional=False)

    def start_natural(self) -> list[float]:
        return []

    def bind(self, frame: pd.DataFrame, order: np.ndarray | None = None) -> BoundVarFunc:
        v = _numeric_covariate(frame, self.form, "variance covariate of VarFixed")
        if np.any(v <= 0):
            raise DataError(
                f"column {self.form!r} (the variance covariate of VarFixed) must be positive (the variance is "
                f"proportional to it); it has {int((v <= 0).sum())} values <= 0, e.g. {v[v <= 0][0]:g}"
            )
        return super().bind(frame, order)

    def _ratio(self, pars: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.sqrt(np.abs(v))


# ---------------------------------------------------------------------------------------------- fitted covariate
#: nlme's outer iteration stops when the relative change of beta and the covariance parameters is below
#: its tolerance (1e-6); we stop at 1e-7, or when the fitted values (the covariate) change by less than
#: 1e-9 relative: below that the change is the inner optimiser's own precision (measured ~1e-8), not
#: progress of the alternation, which contracts by about 10x per step
FITTED_TOLERANCE = 1e-7
FITTED_COVARIATE_TOLERANCE = 1e-9
FITTED_MAX_ITER = 100


def iterate_fitted_covariate(problem, x0: np.ndarray, reml: bool, optimise, initial_fitted: np.ndarray, what: str):
    """nlme's alternation for a fitted-value variance covariate, to its fixed point.

    Parameters
    ----------
    problem : MarginalProblem
        Its ``var`` is replaced by the same function with the current fitted values as covariate.
    x0 : numpy.ndarray
        Starting parameter vector.
    reml : bool
    optimise : callable
        ``optimise(x) -> (x_opt, feval, messages)`` minimises ``problem.deviance`` from ``x``.
    initial_fitted : numpy.ndarray
        Fitted values of the starting fit (nlme: the fit with all weights 1).
    what : str
        "gls" or "lme" (for messages).

    Returns
    -------
    tuple
        (x, total function evaluations, messages); ``problem.var`` holds the final covariate.
    """
    var0 = problem.var
    c = np.asarray(initial_fitted, dtype=float)
    x = np.asarray(x0, dtype=float)
    feval = 0
    messages: list[str] = []
    old = None
    for _ in range(FITTED_MAX_ITER):
        problem.var = var0.with_fitted(c)
        x, fe, msg = optimise(x)
        feval += fe
        messages = msg
        sol = problem.solve(x, reml)
        # nlme's fitted(.) of a gls is X beta; of an lme the innermost-level fitted values
        c_new = sol.fitted_conditional
        pars = np.concatenate([sol.beta, x])
        dc = np.max(np.abs(c_new - c)) / max(float(np.max(np.abs(c_new))), 1e-300)
        if dc <= FITTED_COVARIATE_TOLERANCE:
            return x, feval, messages
        if old is not None:
            conv = np.max(np.abs(old - pars) / np.where(pars == 0, 1.0, np.abs(pars)))
            if conv <= FITTED_TOLERANCE:
                return x, feval, messages
        old = pars
        c = c_new
    warn(
        f"{what}: the fitted-value variance covariate did not settle in {FITTED_MAX_ITER} iterations "
        "(nlme's alternation between optimising the variance parameters and updating the fitted values)",
        ConvergenceWarning,
    )
    return x, feval, messages

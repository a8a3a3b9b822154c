"""nlme's spatial correlation structures ``corGaus``, ``corSpher``, ``corLin``, ``corRatio`` (the "general rho(u)").

For two rows of a group at distance ``d > 0`` (from one or several numeric covariates, metric
``euclidean``, ``manhattan`` or ``maximum`` as R's ``dist``) the correlation is
``(1 - nugget) * rho(d / range)`` (``nugget = 0`` without one), with

=========== ================================================ =========================================
class       rho(x)                                           range (natural) from u[0]
=========== ================================================ =========================================
``Gaus``    ``exp(-x^2)``                                    ``exp(u)``
``Spher``   ``1 - 1.5 x + 0.5 x^3`` for ``x < 1``, else 0    ``exp(u) + min(d)``
``Lin``     ``1 - x`` for ``x < 1``, else 0                  ``exp(u) + min(d)``
``Ratio``   ``1 / (1 + x^2)``                                ``exp(u)``
=========== ================================================ =========================================

and ``nugget = logistic(u[1])``: nlme's unconstrained scales exactly (``min(d)`` is the smallest
within-group distance of the data, nlme's ``minD``: spherical and linear ranges below it would make
every pair uncorrelated). Distances are computed once per group-size bucket at binding, batched over
the groups of the bucket; an evaluation only applies ``rho``.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.errors import ArgumentError, ArgumentTypeError, DataError
from memoe.marginal.correlation import BoundCorrelation, CorStruct, _logistic, _logit, _numeric_column
from memoe.marginal.layout import GroupLayout

__all__ = ["METRICS", "Exp", "Gaus", "Lin", "Ratio", "Spatial", "Spher", "spatial_distances"]

METRICS = ("euclidean", "manhattan", "maximum")
_UNSET = object()


def spatial_distances(
    layout: GroupLayout, frame: pd.DataFrame, covariates: tuple[str, ...], metric: str, what: str
) -> list[np.ndarray]:
    """Per bucket the (G, n, n) within-group distances of the rows' covariate vectors (R's ``dist``)."""
    cols = []
    for c in covariates:
        v = _numeric_column(frame, c, what)
        if not np.all(np.isfinite(v)):
            n_bad = int((~np.isfinite(v)).sum())
            raise DataError(f"column {c!r} (the {what}) has {n_bad} missing or non-finite values")
        cols.append(v)
    X = np.column_stack(cols)
    out = []
    for b in layout.buckets:
        xb = X[b.rows]  # (G, n, k)
        diff = np.abs(xb[:, :, None, :] - xb[:, None, :, :])
        if metric == "euclidean":
            d = np.sqrt(np.sum(diff**2, axis=-1))
        elif metric == "manhattan":
            d = np.sum(diff, axis=-1)
        else:
            d = np.max(diff, axis=-1)
        off = ~np.eye(b.n, dtype=bool)
        if b.n > 1 and np.any(d[:, off] == 0):
            g = layout.levels[b.groups[np.flatnonzero(np.any(d[:, off] == 0, axis=1))[0]]]
            raise DataError(
                f"the {what} ({', '.join(repr(c) for c in covariates)}) has repeated values within group {g!r} "
                "(two rows at distance 0; nlme's spatial structures cannot have zero distances)"
            )
        out.append(d)
    return out


@dataclass(frozen=True, init=False)
class Spatial(CorStruct):
    """Base of the spatial structures: ``Cls(*covariates, group=None, nugget=False, metric="euclidean")``.

    Parameters
    ----------
    *covariates : str
        Numeric position column(s). As :class:`~memoe.marginal.Exp`, a second positional argument
        without ``group=`` is the group (``Gaus("Time", "Rat")``); several coordinates are given as a
        tuple (``Gaus(("x", "y"), "field")``) or with ``group=`` by keyword
        (``Gaus("x", "y", group="field")``).
    group : str, optional
        Grouping column (``lme``: defaults to the random-effects grouping factor; ``gls``: no group =
        the whole data set is one group).
    nugget : bool, default False
        Estimate nlme's nugget.
    metric : {"euclidean", "manhattan", "maximum"}
        Distance between covariate vectors (R's ``dist``).
    """

    time: str | tuple = None  # type: ignore[assignment]
    group: str | None = None
    nugget: bool = False
    metric: str = "euclidean"

    label = "spatial correlation"
    #: spherical and linear: the range is offset by the smallest distance
    offset_range = False

    def __init__(self, *covariates, time=None, group=_UNSET, nugget: bool = False, metric: str = "euclidean") -> None:
        name = type(self).__name__
        covs = list(covariates)
        if time is not None:
            if covs:
                raise ArgumentError(f"{name}: give the position covariates positionally or as time=, not both")
            covs = [time]
        if len(covs) == 2 and group is _UNSET and isinstance(covs[1], str):
            # Exp's convention: Cls(time, group)
            covs, group = covs[:1], covs[1]
        if len(covs) == 1 and isinstance(covs[0], list | tuple):
            covs = list(covs[0])
        if group is _UNSET:
            group = None
            if len(covs) > 2:
                raise ArgumentError(
                    f"{name}{tuple(covs)!r}: with several position columns pass the group by keyword, e.g. "
                    f"{name}('x', 'y', group='g'), or the columns as a tuple, {name}(('x', 'y'), 'g')"
                )
        if not covs or any(c is None for c in covs):
            raise ArgumentTypeError(
                f"{name}(time=...) needs the numeric position column(s), e.g. {name}('Time', 'Rat')"
            )
        for c in covs:
            if not isinstance(c, str):
                raise ArgumentTypeError(f"{name}: position covariates must be column names (str), got {c!r}")
            if not c.strip():
                raise ArgumentError(f"{name}: position covariates must be non-empty column names")
        if len(set(covs)) != len(covs):
            raise ArgumentError(f"{name}: the position covariates {covs} repeat a column")
        if not isinstance(nugget, bool | np.bool_):
            raise ArgumentTypeError(f"{name}(nugget=...) must be True or False, got {nugget!r}")
        if not isinstance(metric, str) or metric not in METRICS:
            raise ArgumentError(f"{name}(metric=...) must be one of {list(METRICS)}, got {metric!r}")
        object.__setattr__(self, "time", covs[0] if len(covs) == 1 else tuple(covs))
        object.__setattr__(self, "group", group)
        object.__setattr__(self, "nugget", bool(nugget))
        object.__setattr__(self, "metric", metric)
        object.__setattr__(self, "visit", None)
        if group is not None and not isinstance(group, str):
            raise ArgumentTypeError(f"{name}(group=...) must be a column name (str) or None, got {group!r}")
        if isinstance(group, str) and not group.strip():
            raise ArgumentError(f"{name}(group=...) must be a non-empty column name")

    @property
    def covariates(self) -> tuple[str, ...]:
        return (self.time,) if isinstance(self.time, str) else tuple(self.time)

    def columns(self) -> list[str]:
        return list(self.covariates)

    def formula(self, group: str | None) -> str:
        lhs = " + ".join(self.covariates)
        return f"~{lhs} | {group}" if group else f"~{lhs}"

    def param_names(self, m: int) -> list[str]:
        return ["range", "nugget"] if self.nugget else ["range"]

    def prepare(self, layout: GroupLayout, frame: pd.DataFrame) -> list[np.ndarray]:
        what = f"position covariate of {type(self).__name__}"
        return spatial_distances(layout, frame, self.covariates, self.metric, what)

    def bind(self, layout: GroupLayout, frame: pd.DataFrame) -> BoundCorrelation:
        aux = self.prepare(layout, frame)
        off = [a[:, ~np.eye(a.shape[-1], dtype=bool)] for a in aux if a.shape[-1] > 1]
        min_d = float(min(o.min() for o in off)) if off else 1.0
        # a copy carries the data's minimum distance (nlme's minD): the user's object stays data-free
        bound = copy.copy(self)
        object.__setattr__(bound, "_min_d", min_d)
        m = self.dimension(layout, frame)
        return BoundCorrelation(structure=bound, aux=aux, names=self.param_names(m), m=m)

    @property
    def min_distance(self) -> float:
        return float(getattr(self, "_min_d", 0.0))

    def _range(self, u: np.ndarray) -> float:
        r = float(np.exp(u[0]))
        return r + self.min_distance if self.offset_range else r

    @staticmethod
    @abstractmethod
    def rho(x: np.ndarray) -> np.ndarray:
        """Correlation at scaled distance ``x = d / range`` (without the nugget); each structure defines it."""

    def correlation(self, u: np.ndarray, aux: np.ndarray, m: int) -> np.ndarray:
        c = self.rho(np.asarray(aux) / self._range(u))
        n = c.shape[-1]
        if self.nugget:
            c = (1.0 - _logistic(u[1])) * c
        c = np.array(c, dtype=float, copy=True)
        c[..., np.arange(n), np.arange(n)] = 1.0
        return c

    def natural(self, u: np.ndarray, m: int) -> np.ndarray:
        r = self._range(u)
        return np.array([r, _logistic(u[1])]) if self.nugget else np.array([r])

    def start_candidates(self, aux: list[np.ndarray], m: int) -> list[np.ndarray]:
        vals = np.concatenate([a[a > 0].ravel() for a in aux] + [np.ones(1)])
        d = float(np.median(vals))
        lo = self.min_distance
        out = []
        for mult in (0.5, 1.0, 2.0, 5.0):
            r = mult * d
            if self.offset_range:
                r = max(r, 1.1 * lo) - lo
            ur = float(np.log(max(r, 1e-8)))
            if self.nugget:
                out.extend(np.array([ur, float(_logit(nu))]) for nu in (0.05, 0.2, 0.5))
            else:
                out.append(np.array([ur]))
        return out


@dataclass(frozen=True, init=False)
class Exp(Spatial):
    """nlme's ``corExp``: ``cor(d) = (1 - nugget) exp(-d / range)`` for ``d > 0`` (nugget 0 without one).

    Parameters
    ----------
    *covariates : str
        Numeric position column(s); a second positional string without ``group=`` is the group.
    group : str, optional
        Grouping column (``lme``: the random-effects grouping factor by default; ``gls``: one group).
    nugget : bool, default False
        Estimate nlme's nugget.
    metric : {"euclidean", "manhattan", "maximum"}
        Distance between covariate vectors (R's ``dist``).

    R equivalent
    ------------
    ``nlme::corExp(form = ~ Time, nugget = TRUE)``.

    Examples
    --------
    >>> memoe.lme("weight ~ Time * Diet + (Time | Rat)", bw, correlation=Exp("Time", nugget=True))  # doctest: +SKIP
    """

    label = "Exponential spatial correlation"

    @staticmethod
    def rho(x: np.ndarray) -> np.ndarray:
        return np.exp(-x)

    def start_candidates(self, aux: list[np.ndarray], m: int) -> list[np.ndarray]:
        vals = np.concatenate([a[a > 0].ravel() for a in aux] + [np.ones(1)])
        d = float(np.median(vals))
        out = []
        for rho in (0.2, 0.5, 0.8, 0.95):
            r = np.log(-d / np.log(rho))  # range with correlation rho at the median distance
            if self.nugget:
                out.extend(np.array([r, float(_logit(nu))]) for nu in (0.05, 0.2, 0.5))
            else:
                out.append(np.array([r]))
        return out


@dataclass(frozen=True, init=False)
class Gaus(Spatial):
    """nlme's ``corGaus``: ``cor(d) = (1 - nugget) exp(-(d / range)^2)``.

    Parameters
    ----------
    *covariates : str
        Numeric position column(s); a second positional string without ``group=`` is the group.
    group : str, optional
        Grouping column (``lme``: the random-effects grouping factor by default; ``gls``: one group).
    nugget : bool, default False
        Estimate nlme's nugget.
    metric : {"euclidean", "manhattan", "maximum"}
        Distance between covariate vectors (R's ``dist``).

    R equivalent
    ------------
    ``nlme::corGaus(form = ~ Time | Rat, nugget = TRUE)``.

    Examples
    --------
    >>> memoe.gls("weight ~ Time * Diet", bw, correlation=Gaus("Time", "Rat", nugget=True))  # doctest: +SKIP
    """

    label = "Gaussian spatial correlation"

    @staticmethod
    def rho(x: np.ndarray) -> np.ndarray:
        return np.exp(-(x * x))


@dataclass(frozen=True, init=False)
class Spher(Spatial):
    """nlme's ``corSpher``: ``1 - 1.5 x + 0.5 x^3`` for ``x = d / range < 1``, 0 beyond (times 1 - nugget).

    The range is above the smallest within-group distance (nlme's).

    Parameters
    ----------
    *covariates : str
        Numeric position column(s); a second positional string without ``group=`` is the group.
    group : str, optional
        Grouping column (``lme``: the random-effects grouping factor by default; ``gls``: one group).
    nugget : bool, default False
        Estimate nlme's nugget.
    metric : {"euclidean", "manhattan", "maximum"}
        Distance between covariate vectors (R's ``dist``).

    R equivalent
    ------------
    ``nlme::corSpher(form = ~ Time | Rat)``.

    Examples
    --------
    >>> memoe.gls("weight ~ Time * Diet", bw, correlation=Spher("Time", "Rat"))  # doctest: +SKIP
    """

    label = "Spherical spatial correlation"
    offset_range = True

    @staticmethod
    def rho(x: np.ndarray) -> np.ndarray:
        return np.where(x < 1.0, 1.0 - 1.5 * x + 0.5 * x**3, 0.0)


@dataclass(frozen=True, init=False)
class Lin(Spatial):
    """nlme's ``corLin``: ``1 - d / range`` for ``d < range``, 0 beyond (times 1 - nugget).

    The range is above the smallest within-group distance (nlme's).

    Parameters
    ----------
    *covariates : str
        Numeric position column(s); a second positional string without ``group=`` is the group.
    group : str, optional
        Grouping column (``lme``: the random-effects grouping factor by default; ``gls``: one group).
    nugget : bool, default False
        Estimate nlme's nugget.
    metric : {"euclidean", "manhattan", "maximum"}
        Distance between covariate vectors (R's ``dist``).

    R equivalent
    ------------
    ``nlme::corLin(form = ~ Time | Rat)``.

    Examples
    --------
    >>> memoe.gls("weight ~ Time * Diet", bw, correlation=Lin("Time", "Rat"))  # doctest: +SKIP
    """

    label = "Linear spatial correlation"
    offset_range = True

    @staticmethod
    def rho(x: np.ndarray) -> np.ndarray:
        return np.where(x < 1.0, 1.0 - x, 0.0)


@dataclass(frozen=True, init=False)
class Ratio(Spatial):
    """nlme's ``corRatio``: ``cor(d) = (1 - nugget) / (1 + (d / range)^2)`` (rational quadratic).

    Parameters
    ----------
    *covariates : str
        Numeric position column(s); a second positional string without ``group=`` is the group.
    group : str, optional
        Grouping column (``lme``: the random-effects grouping factor by default; ``gls``: one group).
    nugget : bool, default False
        Estimate nlme's nugget.
    metric : {"euclidean", "manhattan", "maximum"}
        Distance between covariate vectors (R's ``dist``).

    R equivalent
    ------------
    ``nlme::corRatio(form = ~ Time | Rat)``.

    Examples
    --------
    >>> memoe.gls("weight ~ Time * Diet", bw, correlation=Ratio("Time", "Rat"))  # doctest: +SKIP
    """

    label = "Rational quadratic spatial correlation"

    @staticmethod
    def rho(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + x * x)

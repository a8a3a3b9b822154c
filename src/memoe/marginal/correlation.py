"""Within-group residual correlation structures, as nlme's ``corStruct`` classes.

Each structure maps an unconstrained parameter vector ``u`` to one correlation matrix per group;
the optimiser works on ``u``, results are reported on nlme's natural scale (``Phi``, ``range``,
``nugget``, ``cor(i,j)``, ``Rho``). A structure is declared by the user (``AR1(group="Mare")``) and
*bound* to a fitted data set (:meth:`CorStruct.bind`), which precomputes the per-bucket lags or
distances once so that the objective only exponentiates.

Unconstrained scales (nlme's where it has one): AR(1) ``Phi = tanh(u / 2)``; CAR(1)
``Phi = logistic(u)``; exponential ``range = exp(u1)``, ``nugget = logistic(u2)``; general
(``Symm``) correlation through canonical partial correlations ``tanh(u)`` (always positive
definite); compound symmetry ``Rho = lo + (1 - lo) logistic(u)`` with ``lo = -1 / (m - 1)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.errors import ArgumentError, ArgumentTypeError, DataError, MemoeWarning, warn
from memoe.marginal.layout import GroupLayout

__all__ = ["AR1", "CAR1", "BoundCorrelation", "CompSymm", "CorStruct", "Symm"]


def _logistic(u: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-u))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return np.log(p) - np.log1p(-p)


def _numeric_column(frame: pd.DataFrame, name: str, what: str) -> np.ndarray:
    if name not in frame.columns:
        raise DataError(f"unknown column {name!r} (used as the {what})")
    col = frame[name]
    if not pd.api.types.is_numeric_dtype(col) or col.dtype == bool:
        raise DataError(f"column {name!r} (the {what}) must be numeric, it has dtype {col.dtype}")
    return col.to_numpy(dtype=float)


@dataclass(frozen=True)
class BoundCorrelation:
    """A correlation structure bound to the groups of one data set.

    Attributes
    ----------
    structure : CorStruct
    aux : list of numpy.ndarray
        Per bucket, what the structure needs (lags, distances), broadcastable to (G, n, n).
    names : list of str
        Natural-scale parameter names.
    m : int
        Number of visit positions (largest group size, or distinct visit values for ``visit=``).
    """

    structure: CorStruct
    aux: list[np.ndarray]
    names: list[str]
    m: int

    @property
    def size(self) -> int:
        return len(self.names)

    def blocks(self, u: np.ndarray) -> list[np.ndarray]:
        """Per bucket, the correlation matrices, each (G, n, n) or broadcastable (1, n, n)."""
        return [self.structure.correlation(u, a, self.m) for a in self.aux]

    def natural(self, u: np.ndarray) -> pd.Series:
        return pd.Series(self.structure.natural(u, self.m), index=self.names, dtype=float)

    def starts(self, layout: GroupLayout | None = None, resid: np.ndarray | None = None) -> list[np.ndarray]:
        """Candidate starting values (unconstrained); the model keeps the best.

        With ``layout`` and standardised residuals of a simpler fit, structures that have a moment
        estimate (``Symm``) add it as a candidate.
        """
        out = self.structure.start_candidates(self.aux, self.m)
        if layout is not None and resid is not None:
            out += self.structure.moment_start(self.aux, layout, resid, self.m)
        return out


class CorStruct(ABC):
    """Base class: a correlation structure within groups of ``group``.

    Attributes
    ----------
    group : str or None
        Grouping column. ``None``: for ``lme`` the random-effects grouping factor; for ``gls`` the
        whole data set is one group.
    time : str or None
        Time or distance column (``None``: visit order).
    visit : str or None
        Integer visit column for the discrete structures (``AR1``, ``Symm``), as nlme's
        ``form = ~ visit | group``; ``None``: the order of the rows within the group.

    Examples
    --------
    >>> from memoe.marginal import AR1, CorStruct
    >>> isinstance(AR1("Subject"), CorStruct)
    True
    """

    group: str | None = None
    time: str | None = None
    visit: str | None = None
    label = "correlation"

    def __post_init__(self) -> None:
        """Refuse column arguments that are not column names (dataclass subclasses call this)."""
        name = type(self).__name__
        for attr in ("group", "time", "visit"):
            v = getattr(self, attr, None)
            if v is not None and not isinstance(v, str):
                raise ArgumentTypeError(
                    f"{name}({attr}=...) must be a column name (str) or None, got {v!r} ({type(v).__name__})"
                )
            if isinstance(v, str) and not v.strip():
                raise ArgumentError(f"{name}({attr}=...) must be a non-empty column name")

    def columns(self) -> list[str]:
        """Data columns the structure reads (besides the grouping column)."""
        return [c for c in (self.time, self.visit) if c is not None]

    def formula(self, group: str | None) -> str:
        lhs = self.time or self.visit or "1"
        return f"~{lhs} | {group}" if group else f"~{lhs}"

    def dimension(self, layout: GroupLayout, frame: pd.DataFrame) -> int:
        """Size m of the largest correlation matrix (the number of visit positions)."""
        return layout.max_size

    # -- provided by each structure ---------------------------------------------------------
    @abstractmethod
    def param_names(self, m: int) -> list[str]:
        """Names of the correlation parameters for a largest group of ``m`` visit positions."""

    def prepare(self, layout: GroupLayout, frame: pd.DataFrame) -> list[np.ndarray]:
        """Per bucket: lags |j - k| of visit positions (the default, AR(1)-like structures)."""
        out = []
        for b in layout.buckets:
            pos = np.arange(b.n, dtype=float)
            out.append(np.abs(pos[:, None] - pos[None, :])[None, :, :])
        return out

    @abstractmethod
    def correlation(self, u: np.ndarray, aux: np.ndarray, m: int) -> np.ndarray:
        """Correlation matrices (groups, n, n) at the unconstrained parameters ``u``."""

    @abstractmethod
    def natural(self, u: np.ndarray, m: int) -> np.ndarray:
        """The parameters on nlme's natural scale."""

    @abstractmethod
    def start_candidates(self, aux: list[np.ndarray], m: int) -> list[np.ndarray]:
        """Unconstrained starting values to try."""

    def moment_start(self, aux: list[np.ndarray], layout: GroupLayout, resid: np.ndarray, m: int) -> list[np.ndarray]:
        """Starting values from residuals (none by default)."""
        return []

    # ------------------------------------------------------------------------------------------
    def bind(self, layout: GroupLayout, frame: pd.DataFrame) -> BoundCorrelation:
        """Precompute what the structure needs on ``layout``'s buckets."""
        m = self.dimension(layout, frame)
        aux = self.prepare(layout, frame)
        return BoundCorrelation(structure=self, aux=aux, names=self.param_names(m), m=m)


def _distances(layout: GroupLayout, frame: pd.DataFrame, time: str, what: str) -> list[np.ndarray]:
    t = _numeric_column(frame, time, what)
    if not np.all(np.isfinite(t)):
        raise DataError(f"column {time!r} (the {what}) has non-finite values")
    out = []
    for b in layout.buckets:
        tb = t[b.rows]
        d = np.abs(tb[:, :, None] - tb[:, None, :])
        off = ~np.eye(b.n, dtype=bool)
        if b.n > 1 and np.any(d[:, off] == 0):
            g = layout.levels[b.groups[np.flatnonzero(np.any(d[:, off] == 0, axis=1))[0]]]
            raise DataError(f"column {time!r} (the {what}) has repeated values within group {g!r}")
        out.append(d)
    return out


def _visit_codes(frame: pd.DataFrame, visit: str, what: str) -> tuple[np.ndarray, pd.Index]:
    """0-based position of each row's visit among the distinct visit values (sorted), and the values."""
    if visit not in frame.columns:
        raise DataError(f"unknown column {visit!r} (used as the {what})")
    col = frame[visit]
    if isinstance(col.dtype, pd.CategoricalDtype):
        col = col.cat.remove_unused_categories()
        return col.cat.codes.to_numpy().astype(np.int64), pd.Index(col.cat.categories)
    codes, values = pd.factorize(col, sort=True)
    return codes.astype(np.int64), pd.Index(values)


def _check_integer_like(frame: pd.DataFrame, visit: str, what: str) -> None:
    """A numeric visit column must hold whole numbers: a continuous time is not a visit index."""
    col = frame[visit]
    if pd.api.types.is_numeric_dtype(col) and col.dtype != bool:
        v = col.to_numpy(dtype=float)
        bad = ~np.isfinite(v) | (v != np.round(v))
        if np.any(bad):
            raise DataError(
                f"column {visit!r} (the {what}) must hold integer visit numbers (or labels: strings, a Categorical); "
                f"it has {int(bad.sum())} non-integer value(s), e.g. {v[bad][0]:g}. For a continuous time use "
                "CAR1(time) or Exp(time)"
            )


def _check_unique_within(layout: GroupLayout, pos: np.ndarray, visit: str, what: str) -> None:
    for b in layout.buckets:
        pb = np.sort(pos[b.rows], axis=1)
        dup = np.any(pb[:, 1:] == pb[:, :-1], axis=1) if b.n > 1 else np.zeros(b.size, bool)
        if np.any(dup):
            g = layout.levels[b.groups[np.flatnonzero(dup)[0]]]
            raise DataError(f"column {visit!r} (the {what}) has repeated values within group {g!r}")


def _median_lag(aux: list[np.ndarray]) -> float:
    vals = np.concatenate([a[a > 0].ravel() for a in aux] + [np.ones(1)])
    return float(np.median(vals))


@dataclass(frozen=True)
class AR1(CorStruct):
    """nlme's ``corAR1``: ``cor = Phi^|j - k|`` for the j-th and k-th visits of a group.

    j, k are the positions of the rows within the group, or the values of the integer ``visit``
    column (so a missed visit widens the lag).

    Parameters
    ----------
    group : str, optional
        Grouping column (``lme``: defaults to the random-effects grouping factor).
    visit : str, optional
        Integer visit column (nlme's ``corAR1(form = ~ visit | group)``).

    R equivalent
    ------------
    ``nlme::corAR1(form = ~ visit | group)``.

    Examples
    --------
    >>> import memoe
    >>> from memoe.marginal import AR1
    >>> ovary = memoe.datasets.load("Ovary")
    >>> f = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)"
    >>> fit = memoe.lme(f, ovary, correlation=AR1()).fit()
    >>> round(float(fit.cor_params.iloc[0]), 3)
    0.607
    """

    group: str | None = None
    visit: str | None = None

    label = "AR(1)"

    def param_names(self, m: int) -> list[str]:
        return ["Phi"]

    def prepare(self, layout: GroupLayout, frame: pd.DataFrame) -> list[np.ndarray]:
        if self.visit is None:
            return super().prepare(layout, frame)
        v = _numeric_column(frame, self.visit, "visit of AR1")
        if not np.all(np.isfinite(v)) or np.any(v != np.round(v)):
            raise DataError(f"column {self.visit!r} (the visit of AR1) must hold integers")
        return _distances(layout, frame, self.visit, "visit of AR1")

    def correlation(self, u: np.ndarray, aux: np.ndarray, m: int) -> np.ndarray:
        return np.power(np.tanh(u[0] / 2.0), aux)

    def natural(self, u: np.ndarray, m: int) -> np.ndarray:
        return np.array([np.tanh(u[0] / 2.0)])

    def start_candidates(self, aux: list[np.ndarray], m: int) -> list[np.ndarray]:
        return [np.array([2.0 * np.arctanh(p)]) for p in (0.0, 0.2, 0.4, 0.6, 0.8, -0.3)]


@dataclass(frozen=True)
class CAR1(CorStruct):
    """nlme's ``corCAR1``: ``cor = Phi^|t_j - t_k|`` (continuous time, ``0 < Phi < 1``).

    Parameters
    ----------
    time : str
        Numeric time column (distinct within a group).
    group : str, optional

    R equivalent
    ------------
    ``nlme::corCAR1(form = ~ time | group)``.

    Examples
    --------
    >>> import memoe
    >>> from memoe.marginal import CAR1
    >>> bw = memoe.datasets.load("BodyWeight")
    >>> fit = memoe.gls("weight ~ Time * Diet", bw, correlation=CAR1("Time", "Rat")).fit()
    >>> fit.cor_params.index.tolist()
    ['Phi']
    """

    time: str
    group: str | None = None

    label = "Continuous AR(1)"

    def __post_init__(self) -> None:
        if self.time is None:
            raise ArgumentTypeError("CAR1(time=...) needs the numeric time column, e.g. CAR1('Time', 'Subject')")
        super().__post_init__()

    def param_names(self, m: int) -> list[str]:
        return ["Phi"]

    def prepare(self, layout: GroupLayout, frame: pd.DataFrame) -> list[np.ndarray]:
        return _distances(layout, frame, self.time, "time of CAR1")

    def correlation(self, u: np.ndarray, aux: np.ndarray, m: int) -> np.ndarray:
        return np.power(_logistic(u[0]), aux)

    def natural(self, u: np.ndarray, m: int) -> np.ndarray:
        return np.array([_logistic(u[0])])

    def start_candidates(self, aux: list[np.ndarray], m: int) -> list[np.ndarray]:
        d = _median_lag(aux)
        # Phi such that the correlation at the median lag is rho
        return [np.array([_logit(rho ** (1.0 / d))]) for rho in (0.1, 0.3, 0.5, 0.7, 0.9, 0.97)]


def symm_matrix(u: np.ndarray, m: int) -> np.ndarray:
    """Correlation matrix (m, m) from canonical partial correlations ``tanh(u)``.

    ``u`` lists the pairs in nlme's order (1,2), (1,3), ..., (1,m), (2,3), ...; the Cholesky factor
    is built row by row (Lewandowski, Kurowicka & Joe 2009), so any ``u`` gives a valid matrix.
    """
    z = np.zeros((m, m))
    iu = np.triu_indices(m, 1)
    z[iu] = np.tanh(u)
    L = np.zeros((m, m))
    L[0, 0] = 1.0
    for i in range(1, m):
        rest = 1.0
        for j in range(i):
            L[i, j] = z[j, i] * np.sqrt(rest)
            rest -= L[i, j] ** 2
        L[i, i] = np.sqrt(max(rest, 0.0))
    return L @ L.T


def symm_unconstrained(R: np.ndarray) -> np.ndarray:
    """Inverse of :func:`symm_matrix`: the ``u`` (nlme's pair order) of a positive-definite correlation R."""
    m = R.shape[0]
    L = np.linalg.cholesky(R)
    z = np.zeros((m, m))
    for i in range(1, m):
        rest = 1.0
        for j in range(i):
            z[j, i] = L[i, j] / np.sqrt(rest)
            rest -= L[i, j] ** 2
    return np.arctanh(np.clip(z[np.triu_indices(m, 1)], -0.999, 0.999))


def empirical_correlation(
    layout: GroupLayout, resid: np.ndarray, m: int, positions: list[np.ndarray] | None = None
) -> np.ndarray:
    """Correlation of residuals by visit position (pairwise complete), shrunk to be positive definite.

    ``positions``: per bucket the (G, n) or (1, n) visit positions; default the row order.
    """
    S = np.zeros((m, m))
    cnt = np.zeros((m, m))
    for k, b in enumerate(layout.buckets):
        r = resid[b.rows]  # (G, n)
        pos = np.arange(b.n)[None, :] if positions is None else positions[k]
        pos = np.broadcast_to(pos, r.shape)
        ii = np.broadcast_to(pos[:, :, None], (b.size, b.n, b.n)).ravel()
        jj = np.broadcast_to(pos[:, None, :], (b.size, b.n, b.n)).ravel()
        np.add.at(S, (ii, jj), (r[:, :, None] * r[:, None, :]).ravel())
        np.add.at(cnt, (ii, jj), 1.0)
    S = np.where(cnt > 0, S / np.maximum(cnt, 1), 0.0)
    d = np.sqrt(np.clip(np.diag(S), 1e-12, None))
    R = S / np.outer(d, d)
    np.fill_diagonal(R, 1.0)
    # shrink towards the identity until comfortably positive definite
    for lam in (1.0, 0.9, 0.7, 0.5, 0.0):
        Rs = lam * R + (1.0 - lam) * np.eye(m)
        if np.linalg.eigvalsh(Rs).min() > 1e-3:
            return Rs
    return np.eye(m)


@dataclass(frozen=True)
class Symm(CorStruct):
    """nlme's ``corSymm``: a free correlation for every pair of visit positions (unstructured, MMRM).

    Positions are the order of the rows within the group, or, with ``visit``, the rank of the row's
    visit among the distinct visit values (so a subject who missed visit 2 keeps positions 1, 3, 4:
    nlme's ``corSymm(form = ~ visit | group)``). ``cor(i,j)`` are in nlme's order.

    Parameters
    ----------
    group : str, optional
    visit : str, optional
        Visit column (any sortable values or a Categorical; its distinct values are the positions).

    R equivalent
    ------------
    ``nlme::corSymm(form = ~ visit | group)``; with ``weights=VarIdent(visit)`` the MMRM of R's ``mmrm``
    (``us(visit | group)``).

    Examples
    --------
    >>> import memoe
    >>> from memoe.marginal import Symm, VarIdent
    >>> orth = memoe.datasets.load("Orthodont")
    >>> fit = memoe.gls("distance ~ factor(age) * Sex", orth, correlation=Symm("Subject", visit="age"),
    ...                 weights=VarIdent("age")).fit()
    >>> len(fit.cor_params)
    6
    """

    group: str | None = None
    visit: str | None = None

    label = "General"

    def param_names(self, m: int) -> list[str]:
        return [f"cor({i + 1},{j + 1})" for i, j in zip(*np.triu_indices(m, 1), strict=True)]

    def dimension(self, layout: GroupLayout, frame: pd.DataFrame) -> int:
        if self.visit is None:
            return layout.max_size
        if self.visit in frame.columns:
            _check_integer_like(frame, self.visit, "visit of Symm")
        return len(_visit_codes(frame, self.visit, "visit of Symm")[1])

    def prepare(self, layout: GroupLayout, frame: pd.DataFrame) -> list[np.ndarray]:
        """Per bucket the visit positions, (G, n) with ``visit``, else (1, n) = 0 .. n - 1."""
        if self.visit is None:
            return [np.arange(b.n)[None, :] for b in layout.buckets]
        pos, _ = _visit_codes(frame, self.visit, "visit of Symm")
        _check_unique_within(layout, pos, self.visit, "visit of Symm")
        return [pos[b.rows] for b in layout.buckets]

    def correlation(self, u: np.ndarray, aux: np.ndarray, m: int) -> np.ndarray:
        return symm_matrix(u, m)[aux[:, :, None], aux[:, None, :]]

    def natural(self, u: np.ndarray, m: int) -> np.ndarray:
        return symm_matrix(u, m)[np.triu_indices(m, 1)]

    def start_candidates(self, aux: list[np.ndarray], m: int) -> list[np.ndarray]:
        k = m * (m - 1) // 2
        return [np.zeros(k), np.full(k, 0.3), np.full(k, 0.7)]

    def moment_start(self, aux: list[np.ndarray], layout: GroupLayout, resid: np.ndarray, m: int) -> list[np.ndarray]:
        return [symm_unconstrained(empirical_correlation(layout, resid, m, aux))]


@dataclass(frozen=True)
class CompSymm(CorStruct):
    """nlme's ``corCompSymm``: the same correlation ``Rho`` between any two visits of a group.

    Parameters
    ----------
    group : str, optional

    R equivalent
    ------------
    ``nlme::corCompSymm(form = ~ 1 | group)``.

    Examples
    --------
    >>> import memoe
    >>> from memoe.marginal import CompSymm
    >>> orth = memoe.datasets.load("Orthodont")
    >>> fit = memoe.gls("distance ~ age * Sex", orth, correlation=CompSymm("Subject")).fit()
    >>> fit.cor_params.index.tolist()
    ['Rho']
    """

    group: str | None = None

    label = "Compound symmetry"

    def param_names(self, m: int) -> list[str]:
        return ["Rho"]

    @staticmethod
    def _rho(u: np.ndarray, m: int) -> float:
        lo = -1.0 / (m - 1) if m > 1 else -1.0
        return float(lo + (1.0 - lo) * _logistic(u[0]))

    def correlation(self, u: np.ndarray, aux: np.ndarray, m: int) -> np.ndarray:
        rho = self._rho(u, m)
        return np.where(aux == 0, 1.0, rho)

    def natural(self, u: np.ndarray, m: int) -> np.ndarray:
        return np.array([self._rho(u, m)])

    def start_candidates(self, aux: list[np.ndarray], m: int) -> list[np.ndarray]:
        lo = -1.0 / (m - 1) if m > 1 else -1.0
        return [np.array([_logit((r - lo) / (1.0 - lo))]) for r in (0.0, 0.2, 0.5, 0.8)]


#: largest number of correlation parameters accepted (Symm with 46 visit positions has 1035): beyond it
#: the derivative-free optimiser needs hours and the (m, m) parameter bookkeeping gigabytes
MAX_CORRELATION_PARAMETERS = 1000
#: above this many correlation parameters a fit is slow (minutes); a warning says so
SLOW_CORRELATION_PARAMETERS = 100


def _pair_counts(cor: BoundCorrelation, layout: GroupLayout) -> np.ndarray:
    """How many groups observe each pair of visit positions together, shape (m, m) (Symm's positions)."""
    m = cor.m
    cnt = np.zeros((m, m))
    for b, pos in zip(layout.buckets, cor.aux, strict=True):
        p = np.broadcast_to(np.asarray(pos), (b.size, b.n))
        ii = np.broadcast_to(p[:, :, None], (b.size, b.n, b.n)).ravel()
        jj = np.broadcast_to(p[:, None, :], (b.size, b.n, b.n)).ravel()
        np.add.at(cnt, (ii, jj), 1.0)
    return cnt


def check_correlation_identifiable(cor: BoundCorrelation, layout: GroupLayout, group: str | None) -> None:
    """Refuse a correlation structure the data cannot identify, or one too large to fit.

    Rules (each refusal is a :class:`DataError` with the counts):

    * some group must have at least two rows (a correlation needs pairs of rows);
    * at most :data:`MAX_CORRELATION_PARAMETERS` parameters (``Symm`` over m positions has
      ``m (m - 1) / 2``);
    * no more parameters than within-group pairs of rows, ``sum_i n_i (n_i - 1) / 2``;
    * ``Symm``: every pair of visit positions is observed together in at least one group (otherwise
      its correlation is not informed by any data).

    Above :data:`SLOW_CORRELATION_PARAMETERS` parameters a warning says the fit will be slow.
    """
    name = type(cor.structure).__name__
    where = f"groups of {group!r}" if group else "the data (one group: no group column given)"
    if layout.max_size < 2:
        raise DataError(
            f"{name}: every one of the {layout.ngroups} {where} has a single row; a within-group correlation needs "
            "groups with at least two rows (check the group column)"
        )
    k = cor.size
    pairs = int(sum(b.size * b.n * (b.n - 1) // 2 for b in layout.buckets))
    if isinstance(cor.structure, Symm):
        m = cor.m
        if k > MAX_CORRELATION_PARAMETERS:
            raise DataError(
                f"Symm over {m} visit positions has m (m - 1) / 2 = {m} * {m - 1} / 2 = {k} correlation parameters, "
                f"more than the limit of {MAX_CORRELATION_PARAMETERS} (the fit would take hours); use a structured "
                "correlation (AR1, CAR1(time), Exp(time), CompSymm), a coarser visit variable, or check that "
                f"the visit / group column is right ({where})"
            )
        if k > pairs:
            raise DataError(
                f"Symm over {m} visit positions has {k} correlation parameters but the {where} hold only {pairs} "
                "within-group pairs of rows; use a structured correlation (AR1, CAR1, CompSymm)"
            )
        cnt = _pair_counts(cor, layout)
        iu = np.triu_indices(m, 1)
        never = np.flatnonzero(cnt[iu] == 0)
        if never.size:
            a, b = iu[0][never[0]] + 1, iu[1][never[0]] + 1
            raise DataError(
                f"Symm: {never.size} of the {k} pairs of visit positions are never observed in the same group "
                f"(e.g. positions {a} and {b}: {cor.names[never[0]]}), so their correlations are not identified; "
                "use a structured correlation (AR1 with visit=, CAR1) or merge visits"
            )
    elif k > pairs:
        raise DataError(f"{name} has {k} correlation parameters but the {where} hold only {pairs} pairs of rows")
    if k > SLOW_CORRELATION_PARAMETERS:
        warn(f"{name} has {k} correlation parameters: the fit may take several minutes", MemoeWarning)

"""The fixed-effects design: formulaic model matrix, R's column names, and lme4's rank check."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from formulaic import model_matrix
from formulaic.errors import DataMismatchWarning
from formulaic.model_spec import ModelSpec
from formulaic.transforms import C

from memoe.core.design.contrasts import apply_contrasts, resolve_contrasts
from memoe.core.design.native import ColumnCache, LazySpec, frame_columns, native_matrix, resolve_spec
from memoe.core.design.newdata import replay_frame
from memoe.core.design.scaling import ColumnSpreads, choose_scaling, spreads_from_gram
from memoe.core.formula.names import r_column_name
from memoe.core.linalg.threads import blas_threads
from memoe.errors import DataError, FormulaError, RankDeficiencyWarning, warn

__all__ = ["FixedDesign", "build_fixed", "evaluate_matrix", "factor_levels", "model_matrix_with_contrasts"]

# R's factor(x) in a formula: formulaic evaluates it in this module's namespace, and the column
# names it produces (``factor(age)[T.10]``) become R's (``factor(age)10``)
factor = C

# R's qr() default tolerance, used by lme4's chkRank.drop.cols
RANK_TOL = 1e-7
# relative residual norm above which the Gram-matrix shortcut may certify a column as independent
GRAM_SAFE = 1e-3


@dataclass(frozen=True)
class FixedDesign:
    """Fixed-effects model matrix after dropping aliased columns.

    Attributes
    ----------
    X : numpy.ndarray, shape (n, p)
    names : list of str
        R-style column names of the kept columns.
    spec : formulaic ModelSpec
        Replays the encoding (levels, stateful transforms) on new data; built on first access when the
        native path built X (``spec_source`` is then a :class:`~memoe.core.design.native.LazySpec`).
    kept : numpy.ndarray of int
        Indices of kept columns among the formulaic columns.
    dropped : list of str
        Names of aliased columns that were dropped.
    contrasts : dict
        The contrast of each factor variable (``{"lectage": "poly", "service": "treatment"}``): R's
        default or the ``contrasts=`` argument; the spec replays it on new data.
    """

    X: np.ndarray
    names: list[str]
    spec_source: ModelSpec | LazySpec
    kept: np.ndarray
    dropped: list[str]
    contrasts: dict[str, str] = field(default_factory=dict)
    # centres and spreads of the columns of X (None when not computed or X was changed afterwards):
    # the model's scaling check reuses them instead of another pass over X
    spreads: ColumnSpreads | None = None

    @property
    def p(self) -> int:
        """Number of kept columns."""
        return self.X.shape[1]

    @property
    def spec(self) -> ModelSpec:
        """The formulaic spec (built by formulaic on a small frame on first access after the native path)."""
        return resolve_spec(self.spec_source)

    def matrix_for(self, data: pd.DataFrame) -> np.ndarray:
        """The same columns evaluated on new data."""
        full = evaluate_matrix(self.spec, data, "the fixed effects")
        return full[:, self.kept]


def evaluate_matrix(spec: ModelSpec, data: pd.DataFrame, where: str | None = None) -> np.ndarray:
    """Evaluate a stored formulaic spec on (new) data as a float array.

    Factor levels are matched by value (``"8"``, ``8.0`` and ``8`` are one level) through
    :func:`memoe.core.design.newdata.replay_frame`; ``data`` is not modified.

    Parameters
    ----------
    spec : formulaic ModelSpec
    data : pandas.DataFrame
    where : str, optional
        What the spec encodes, for messages (``"the fixed effects"``); default: the spec's formula.

    Returns
    -------
    numpy.ndarray, shape (len(data), ncol)
        NaN rows where a used value is missing (a missing factor level included: formulaic alone
        would encode it as the reference level).

    Raises
    ------
    DataError
        A used column is absent, or the spec cannot be evaluated.
    NewLevelError
        A factor has a level the fit has not seen (R: "factor x has new levels").
    """
    frame, missing = replay_frame(spec, data, where or f"the formula '{spec.formula}'")
    try:
        with warnings.catch_warnings():
            # levels were checked by replay_frame; formulaic's warning would only repeat missing rows
            warnings.simplefilter("ignore", DataMismatchWarning)
            mm = spec.get_model_matrix(frame, output="numpy", na_action="ignore", context={"factor": factor})
    except Exception as exc:
        raise DataError(f"cannot evaluate {spec.formula} on the new data: {exc}") from None
    X = np.array(mm, dtype=float)
    if X.shape[0] != len(data):
        raise DataError(f"evaluating {spec.formula} on the new data gave {X.shape[0]} rows for {len(data)}")
    if missing.any():
        X[missing] = np.nan
    return X


def gram(X: np.ndarray) -> np.ndarray:
    """``X'X``, shape (p, p); for a Fortran-ordered X one dot product per pair of (contiguous) columns.

    On a (10^6, 3) matrix the six single-threaded dots take 1.5-6 ms against 10-20 ms for the BLAS
    ``X.T @ X`` (threaded or not), which is not tuned for so few columns.
    """
    p = X.shape[1]
    if not X.flags.f_contiguous or p > 16:
        return X.T @ X
    G = np.empty((p, p))
    with blas_threads(1):
        for i in range(p):
            for j in range(i, p):
                G[i, j] = G[j, i] = X[:, i] @ X[:, j]
    return G


def _clearly_full_rank(X: np.ndarray, G: np.ndarray | None = None) -> bool:
    """True when every column keeps more than ``GRAM_SAFE`` of its norm after projecting out the earlier ones.

    Computed from the p x p Gram matrix (no copy of X, one pass over it) instead of a QR of X.
    The Gram matrix squares the condition number, so it only *certifies* clearly independent
    columns: with unit-scaled columns and all pivots above 1e-3 the rounding error in a squared
    pivot is below ~1e-9, far from deciding R's 1e-7 criterion. Anything closer goes to the QR.
    """
    G = gram(X) if G is None else G
    d = np.diag(G).copy()
    if not np.all(np.isfinite(G)) or np.any(d <= 0.0):
        return False
    s = 1.0 / np.sqrt(d)
    try:
        R = np.linalg.cholesky(G * s[:, None] * s[None, :])
    except np.linalg.LinAlgError:
        return False
    return bool(np.all(np.diag(R) > GRAM_SAFE))


def aliased_columns(X: np.ndarray, tol: float = RANK_TOL, G: np.ndarray | None = None) -> list[int]:
    """Columns that are linear combinations of earlier columns (R's dqrdc2 criterion).

    A column is dropped when its norm after projecting out the earlier kept columns falls
    below ``tol`` times its original norm; earlier columns win, as in lme4.
    """
    n, p = X.shape
    if p == 0:
        return []
    if n >= p and _clearly_full_rank(X, G):
        return []
    # work on a QR of X so that n can be large: R carries all the geometry
    R = np.linalg.qr(X, mode="r") if n >= p else X
    R = np.asarray(R)
    norms = np.sqrt((R * R).sum(axis=0))
    kept: list[int] = []
    dropped: list[int] = []
    for j in range(p):
        col = R[:, j]
        if norms[j] == 0.0:
            dropped.append(j)
            continue
        if kept:
            Q, _ = np.linalg.qr(R[:, kept])
            resid = col - Q @ (Q.T @ col)
        else:
            resid = col
        if np.linalg.norm(resid) < tol * norms[j]:
            dropped.append(j)
        else:
            kept.append(j)
    return dropped


def factor_levels(spec: ModelSpec) -> dict[str, list]:
    """The levels of each categorical expression of a formulaic spec (``{"C(d, contr.sum)": [...]}``)."""
    state = getattr(spec, "encoder_state", {}) or {}
    return {
        str(expr): list(st["categories"])
        for expr, (kind, st) in state.items()
        if getattr(kind, "value", kind) == "categorical" and "categories" in st
    }


def model_matrix_with_contrasts(
    rhs: str, data: pd.DataFrame, contrasts: Mapping[str, str] | None = None, what: str = "the fixed effects"
) -> tuple[np.ndarray, ModelSpec, list[str], dict[str, str]]:
    """Formulaic model matrix of ``rhs`` with R's contrasts, and R's column names.

    Parameters
    ----------
    rhs : str
        Right-hand side in formulaic syntax.
    data : pandas.DataFrame
    contrasts : mapping, optional
        Column -> contrast (``"treatment"``, ``"sum"``, ``"helmert"``, ``"poly"`` or R's
        ``"contr.*"`` names). Default: treatment for unordered factors, poly for ordered ones.
    what : str
        What ``rhs`` encodes, for messages.

    Returns
    -------
    X : numpy.ndarray
    spec : formulaic ModelSpec
        Replays the encoding, contrasts included, on new data.
    names : list of str
        R's column names (``x.L``, ``dept1``, ``a:b``).
    resolved : dict
        The contrast of each factor variable.
    """
    resolved = resolve_contrasts([rhs], data, contrasts)
    coded = apply_contrasts(rhs, resolved)
    try:
        mm = model_matrix(coded, data, output="numpy", na_action="ignore")
    except Exception as exc:
        raise FormulaError(f"cannot build {what} {rhs!r}: {exc}") from None
    spec = mm.model_spec
    levels = factor_levels(spec)
    names = [r_column_name(c, levels) for c in spec.column_names]
    return np.asarray(mm, dtype=float), spec, names, resolved


def build_fixed(
    formula_rhs: str,
    data: pd.DataFrame,
    contrasts: Mapping[str, str] | None = None,
    cache: ColumnCache | None = None,
) -> FixedDesign:
    """Build the fixed-effects matrix for ``formula_rhs`` (formulaic syntax) on ``data``.

    ``contrasts`` maps factor columns to ``"treatment"``, ``"sum"``, ``"helmert"`` or ``"poly"``
    (R's ``contrasts=`` argument); default R's: treatment for unordered factors, poly for ordered
    Categoricals. See :mod:`memoe.core.design.contrasts`.

    A formula of numeric columns, factors and their interactions is built directly from the columns, in
    Fortran order (:mod:`memoe.core.design.native`; same matrix as formulaic's); its columns are recorded
    in ``cache`` (when given) for the random-effects terms to reuse.

    Parameters
    ----------
    formula_rhs : str
    data : pandas.DataFrame
    contrasts : mapping, optional
    cache : dict, optional
        Filled with the native path's columns (see :func:`memoe.core.design.native.native_matrix`).

    Returns
    -------
    FixedDesign

    Examples
    --------
    >>> import pandas as pd
    >>> from memoe.core.design.fixed import build_fixed
    >>> fd = build_fixed("t + t:x", pd.DataFrame({"t": [0.0, 1, 2, 3], "x": [1.0, 0, 1, 2]}))
    >>> fd.names, fd.X[:, 2].tolist()
    (['(Intercept)', 't', 't:x'], [0.0, 0.0, 2.0, 6.0])

    R equivalent
    ------------
    ``model.matrix(formula, data, contrasts.arg = contrasts)`` followed by lme4's ``chkRank.drop.cols``.
    """
    # R's contrasts of every factor variable (validates the contrasts= argument, names the column at fault)
    resolved = resolve_contrasts([formula_rhs], data, contrasts, columns=frame_columns(cache))
    native = native_matrix(formula_rhs, data, resolved, "the fixed effects", cache)
    spec: ModelSpec | LazySpec
    if native is not None:
        # numeric columns, factors and their interactions straight from the columns (memoe.core.design.native)
        X, spec, names = native.X, native.spec, native.names
    else:
        X, spec, names, resolved = model_matrix_with_contrasts(formula_rhs, data, contrasts)
    # R codes a logical predictor as a factor with FALSE as reference: column ``xTRUE`` (same 0/1 values)
    cols = frame_columns(cache)
    dtypes = ((c, s.dtype) for c, s in cols.items()) if cols else zip(data.columns, data.dtypes, strict=True)
    logical = {str(c) for c, dt in dtypes if dt == np.dtype(bool)}
    if logical:
        names = [":".join(f"{part}TRUE" if part in logical else part for part in nm.split(":")) for nm in names]
    finite = np.isfinite(X).all(axis=0) if X.size else np.ones(X.shape[1], dtype=bool)
    if not finite.all():
        bad = [names[j] for j in np.flatnonzero(~finite)]
        raise DataError(
            f"fixed-effects columns {bad} contain infinite or undefined values (e.g. log(0) or a division by "
            "zero in the formula); only finite values are accepted"
        )
    n, p = X.shape
    if p > n:
        raise DataError(
            f"the fixed effects {formula_rhs!r} give {p} columns ({', '.join(names[:6])}{', ...' if p > 6 else ''}) "
            f"but there are only {n} observations; more coefficients than rows cannot be estimated"
        )
    # aliasing is a property of the column space: decide it on centred/scaled columns when they
    # need it, so that Days + 1.7e9 is not mistaken for a multiple of the intercept
    # one Gram matrix for the scaling decision and the rank check (exact spreads only near a threshold)
    G = gram(X) if n else None
    spreads = spreads_from_gram(X, G) if n else None
    scaling = choose_scaling(X, None, columns=spreads)
    drop = aliased_columns(X, G=G) if scaling is None else aliased_columns(scaling.scaled(X, np.zeros(n))[0])
    kept = np.array([j for j in range(X.shape[1]) if j not in drop], dtype=int)
    dropped = [names[j] for j in drop]
    if drop:
        warn(
            f"fixed-effect model matrix is rank deficient so dropping {len(drop)} "
            f"column{'s' if len(drop) > 1 else ''} / coefficient{'s' if len(drop) > 1 else ''}: {dropped}",
            RankDeficiencyWarning,
        )
        # keep the layout: the native path's Fortran order, formulaic's C order
        X = np.asfortranarray(X[:, kept]) if X.flags.f_contiguous and p > 1 else np.ascontiguousarray(X[:, kept])
        spreads = None
    return FixedDesign(
        X=X, names=[names[j] for j in kept], spec_source=spec, kept=kept, dropped=dropped, contrasts=resolved,
        spreads=spreads,
    )

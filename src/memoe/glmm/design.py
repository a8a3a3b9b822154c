"""The GLMM design: lme4's two-column binomial response, prior weights and offset on top of
:func:`memoe.core.design.build_design`'s pieces (frame, fixed design, random-effects blocks).

``cbind(successes, failures)`` is read here because formulaic would treat it as a function of the
data; everything else goes through the LMM's formula and design stages unchanged.
"""

from __future__ import annotations

import ast
import dataclasses
import operator
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linprog

from memoe.core.design import Design
from memoe.core.design.fixed import build_fixed
from memoe.core.design.frame import as_data_frame, build_frame, formula_variables, numeric_response
from memoe.core.design.prior import as_expression, split_offsets
from memoe.core.design.random import build_random
from memoe.core.formula.parse import parse_formula, split_top_level
from memoe.errors import DataError, FormulaError, IdentifiabilityError
from memoe.glmm.families import Family

__all__ = [
    "GlmmDesign", "build_glmm_design", "check_identifiable", "separating_direction", "split_cbind", "split_offsets",
]

_CBIND = re.compile(r"^cbind\s*\((.*)\)$", re.DOTALL)


@dataclass(frozen=True)
class GlmmDesign:
    """Numeric inputs of a GLMM after R's ``family$initialize``.

    Attributes
    ----------
    design : memoe.core.design.Design
        Frame, fixed design, random-effects blocks and theta map (``design.y`` is the proportion
        or count response ``y``).
    y : numpy.ndarray, shape (n,)
        Response as R's ``glmResp`` stores it (proportions for binomial).
    wt : numpy.ndarray, shape (n,)
        Prior weights times the binomial trials (R's ``weights`` after ``initialize``).
    n : numpy.ndarray, shape (n,)
        Binomial trials (ones for 0/1 responses and for Poisson).
    offset : numpy.ndarray, shape (n,)
        Sum of the formula's ``offset(...)`` terms and the ``offset=`` argument (as R).
    prior_weights : numpy.ndarray, shape (n,)
    binomial_matrix : bool
        The response was ``cbind(successes, failures)``.
    offset_terms : tuple of str
        Expressions of the formula's ``offset(...)`` terms.
    """

    design: Design
    y: np.ndarray
    wt: np.ndarray
    n: np.ndarray
    offset: np.ndarray
    prior_weights: np.ndarray
    binomial_matrix: bool
    offset_terms: tuple[str, ...] = ()


def check_identifiable(terms, blocks, nobs: int) -> None:
    """lme4's ``check.nobs.vs.nlev`` and ``check.nobs.vs.nRE`` for families with a fixed scale.

    With no residual variance to separate, a grouping factor may have one level per observation
    (observation-level random effects for overdispersion): lme4 stops only when
    ``nlevels > nobs`` or the term has more random effects than observations.

    Raises
    ------
    IdentifiabilityError
    """
    for t in terms:
        lev = blocks[t.block].nlevels
        if lev > nobs:
            raise IdentifiabilityError(
                f"number of levels of each grouping factor must be <= number of observations "
                f"(grouping factor {t.group!r} has {lev} levels for {nobs} observations)"
            )
        if t.q * lev > nobs:
            raise IdentifiabilityError(
                f"number of observations (={nobs}) < number of random effects (={t.q * lev}) for term "
                f"{t.text!r}; the random-effects parameters are probably unidentifiable"
            )


def split_cbind(response: str) -> tuple[str, str] | None:
    """``cbind(a, b)`` -> ``("a", "b")``; ``None`` for any other response.

    Raises
    ------
    FormulaError
        ``cbind`` with other than two arguments.
    """
    m = _CBIND.match(response.strip())
    if not m:
        return None
    parts = [p for sep, p in split_top_level(m.group(1), ",", response)]
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise FormulaError(
            f"response {response!r}: cbind() needs exactly two columns, cbind(successes, failures)"
        )
    return parts[0].strip(), parts[1].strip()


_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _arithmetic(frame: pd.DataFrame, expr: str) -> np.ndarray | None:
    """``expr`` when it is +, -, *, / of numeric columns and numbers (``I(size - incidence)``), else None.

    The same Python arithmetic formulaic would run on the same columns (so the same values), without building
    a model matrix for it: ~3 ms of a ~10 ms small fit. Anything else (functions, powers, strings) returns None
    and goes through :func:`memoe.core.design.frame.numeric_response` as before.
    """
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        return None

    def ev(node):
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            left, right = ev(node.left), ev(node.right)
            return None if left is None or right is None else _ARITH[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return float(node.value)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "I"
                and len(node.args) == 1 and not node.keywords):
            return ev(node.args[0])  # formulaic's identity I(...), which as_expression wraps arithmetic in
        if isinstance(node, ast.Name) and node.id in frame.columns:
            col = frame[node.id]
            if col.dtype != bool and pd.api.types.is_numeric_dtype(col):
                return col.to_numpy(dtype=float)
        return None

    with np.errstate(all="ignore"):  # x / 0 is inf, as in R: the caller's finiteness check names the response
        v = ev(tree)
    return v if isinstance(v, np.ndarray) else None


def _response_values(frame: pd.DataFrame, expr: str, family: Family) -> np.ndarray:
    """A numeric response; for the binomial family a factor column is "success unless first level" (R)."""
    if expr not in frame.columns:
        v = _arithmetic(frame, expr)
        if v is not None:
            return v
    col = frame[expr] if expr in frame.columns else None
    if col is not None and family.name == "binomial" and (
        isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or pd.api.types.is_string_dtype(col)
    ):
        cat = col.astype("category") if not isinstance(col.dtype, pd.CategoricalDtype) else col
        if len(cat.cat.categories) < 1:
            raise DataError(f"factor response {expr!r} has no levels")
        return (cat.cat.codes.to_numpy() > 0).astype(float)
    return numeric_response(frame, expr)


def _vector_arg(value, data: pd.DataFrame, what: str) -> tuple[np.ndarray | None, str | None]:
    """``weights=`` / ``offset=``: a column name or an array aligned with ``data``'s rows."""
    if value is None:
        return None, None
    if isinstance(value, str):
        if value not in data.columns:
            raise DataError(f"{what} column {value!r} is not in the data")
        return None, value
    try:
        arr = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        raise DataError(f"{what} must be a column name or numbers, one per data row; got {type(value).__name__}") \
            from None
    if arr.shape != (len(data),):
        raise DataError(f"{what} must have one value per data row ({len(data)}), got shape {arr.shape}")
    return arr, None


def build_glmm_design(
    formula: str,
    data: pd.DataFrame,
    family: Family,
    weights=None,
    offset=None,
    contrasts=None,
) -> GlmmDesign:
    """Parse the formula, build the design and the family's response vectors.

    Parameters
    ----------
    formula : str
        lme4 syntax; the response may be ``cbind(successes, failures)`` (binomial).
    data : pandas.DataFrame
    family : Family
    weights, offset : str or array-like, optional
        A column of ``data`` or one value per row of ``data``.
    contrasts : dict, optional
        Factor column -> ``"treatment"``, ``"sum"``, ``"helmert"`` or ``"poly"`` (R's ``contrasts=``);
        default R's (see :mod:`memoe.core.design.contrasts`).

    Raises
    ------
    FormulaError, DataError, IdentifiabilityError
    """
    spec = parse_formula(formula)
    # no random-effects term: the GLM (R's glm), fitted by IRLS, the null model of sigma_u^2 = 0
    data = as_data_frame(data)
    pair = split_cbind(spec.response)
    exprs = [as_expression(e) for e in pair] if pair else [spec.response]
    w_arr, w_col = _vector_arg(weights, data, "weights")
    o_arr, o_col = _vector_arg(offset, data, "offset")
    fixed, offset_terms = split_offsets(spec.fixed)
    # the frame only needs the response's variables; a '+' of the two parts names all of them
    frame_spec = dataclasses.replace(spec, response=" + ".join(exprs), fixed=fixed)
    extra = [c for c in (w_col, o_col) if c is not None]
    for e in exprs:
        formula_variables(f"{e} ~ 1", "the response")
    for e in offset_terms:
        extra += [v for v in formula_variables(f"{as_expression(e)} ~ 1", "an offset term") if v not in extra]
    frame = build_frame(frame_spec, data, extra=extra, responses=exprs)
    fd = frame.data
    mask = frame.row_mask
    values = [_response_values(fd, e, family) for e in exprs]
    for e, v in zip(exprs, values, strict=True):
        if not np.all(np.isfinite(v)):
            raise DataError(f"response {e!r} has {int((~np.isfinite(v)).sum())} non-finite values")
    prior = np.ones(len(fd)) if weights is None else (
        fd[w_col].to_numpy(dtype=float) if w_col else w_arr[mask]
    )
    off = np.zeros(len(fd)) if offset is None else (fd[o_col].to_numpy(dtype=float) if o_col else o_arr[mask])
    if not np.all(np.isfinite(prior)) or np.any(prior < 0):
        n_bad = int(np.sum(~np.isfinite(prior) | (prior < 0)))
        raise DataError(
            f"weights{f' (column {w_col!r})' if w_col else ''} must be finite and non-negative; "
            f"{n_bad} of {len(prior)} values are not (e.g. {prior[~np.isfinite(prior) | (prior < 0)][0]:g})"
        )
    if not np.any(prior > 0):
        raise DataError(f"weights{f' (column {w_col!r})' if w_col else ''} are all zero: no observation is used")
    for e in offset_terms:
        off = off + numeric_response(fd, as_expression(e))
    if not np.all(np.isfinite(off)):
        raise DataError("offset must be finite")
    if pair:
        succ, fail = values
        y, wt, n = family.prepare(succ, prior, succ + fail, spec.response)
    else:
        y, wt, n = family.prepare(values[0], prior, None, spec.response)
    spec = dataclasses.replace(spec, fixed=fixed)
    fixed_design = build_fixed(fixed, fd, contrasts)
    # the LMM's rules (nlevels < nobs, nRE < nobs) assume a residual variance; the GLMM's own
    # (fixed-scale) rules are checked below
    terms, blocks, theta_map = build_random(spec.random, fd, len(y), residual_scale=False)
    check_identifiable(terms, blocks, len(y))
    design = Design(
        spec=spec, frame=frame, y=y, fixed=fixed_design, terms=terms, blocks=blocks, theta_map=theta_map
    )
    return GlmmDesign(
        design=design, y=y, wt=wt, n=n, offset=off, prior_weights=prior, binomial_matrix=pair is not None,
        offset_terms=offset_terms,
    )


# An LP optimum below this (with unit-scaled columns and coefficients in [-1, 1]) counts as zero
SEPARATION_TOL = 1e-7


def separating_direction(X: np.ndarray, y: np.ndarray, wt: np.ndarray) -> np.ndarray | None:
    """A direction of the fixed effects along which a binomial likelihood increases forever, or None.

    Complete or quasi-complete separation (Albert & Anderson 1984; Konis's ``detectseparation``):
    some ``d != 0`` has ``x_i'd >= 0`` on every all-success row, ``x_i'd <= 0`` on every all-failure
    row and ``x_i'd = 0`` on rows with both outcomes. Then ``beta + t d`` improves the likelihood for
    every ``t`` (whatever the random effects do, as they are penalised and ``d`` is not), so the
    estimates run off to infinity. Found by the linear programme
    ``max sum_i s_i x_i'd`` over those constraints and ``|d_j| <= 1``, on columns scaled to unit size.

    Returns
    -------
    numpy.ndarray of shape (p,) or None
        The direction on the original columns (zero entries: coefficients not involved).
    """
    used = wt > 0
    X, y = X[used], y[used]
    n, p = X.shape
    if n == 0 or p == 0:
        return None
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    Xs = X / scale
    succ, fail = y >= 1.0, y <= 0.0
    mixed = ~(succ | fail)
    sign = np.where(succ, 1.0, -1.0)
    sep_rows = ~mixed
    c = -(sign[sep_rows] @ Xs[sep_rows])
    A_ub = -(sign[sep_rows, None] * Xs[sep_rows])
    A_eq = Xs[mixed] if mixed.any() else None
    res = linprog(
        c, A_ub=A_ub, b_ub=np.zeros(int(sep_rows.sum())), A_eq=A_eq,
        b_eq=np.zeros(int(mixed.sum())) if mixed.any() else None, bounds=[(-1.0, 1.0)] * p, method="highs",
    )
    if res.status != 0 or not (-res.fun > SEPARATION_TOL * np.sqrt(n)):
        return None
    d = np.where(np.abs(res.x) > 1e-6, res.x, 0.0)
    return d / scale


def no_separation_certificate(X: np.ndarray, y: np.ndarray, wt: np.ndarray, mu: np.ndarray, family) -> bool:
    """True when the score equations of the fixed effects at ``mu`` prove that no separating direction exists.

    Gordan's alternative: with ``lambda_i > 0`` on the all-success / all-failure rows,
    ``r = sum_i lambda_i s_i x_i`` (``s_i = +-1``; rows with both outcomes enter with any sign) bounds the
    objective of :func:`separating_direction`'s linear programme by ``||r||_1 / min lambda`` (its ``|d_j| <= 1``
    on unit-scaled columns, and ``x_i'd = 0`` on mixed rows). At a converged joint PIRLS solution the
    fixed effects' equations ``X' [wt mu' / V (y - mu)] = 0`` give such ``lambda`` with ``r`` at rounding
    level; when the bound is below the programme's threshold the (costly) programme cannot report separation.
    """
    used = wt > 0
    X, y, wt, mu = X[used], y[used], wt[used], mu[used]
    n, p = X.shape
    if n == 0 or p == 0:
        return True
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    Xs = X / scale
    with np.errstate(all="ignore"):
        eta = family.linkfun(mu)
        g = wt * family.mu_eta(eta) / family.variance(mu) * (y - mu)  # = lambda_i s_i on separable rows
    sep = (y >= 1.0) | (y <= 0.0)
    if not sep.any():
        return True  # no inequality rows: the programme's objective is 0
    if not (np.all(np.isfinite(g)) and np.all(g[sep] * np.where(y[sep] >= 1.0, 1.0, -1.0) > 0)):
        return False
    # remove the rounding-level residual of the score equations by the least-norm correction of g
    try:
        G = Xs.T @ Xs
        g = g - Xs @ np.linalg.solve(G, Xs.T @ g)
    except np.linalg.LinAlgError:
        return False
    lam = g[sep] * np.where(y[sep] >= 1.0, 1.0, -1.0)
    if not (np.all(np.isfinite(lam)) and np.all(lam > 0)):
        return False
    bound = float(np.abs(Xs.T @ g).sum() / lam.min())
    return bound < 0.5 * SEPARATION_TOL * np.sqrt(n)

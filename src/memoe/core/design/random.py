"""Random-effects terms: one lme4 term per bar term (``||`` split), merged into factor blocks."""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from formulaic import Formula, model_matrix
from formulaic.model_spec import ModelSpec

from memoe.core.covariance import ThetaMap
from memoe.core.design.contrasts import apply_contrasts, resolve_contrasts
from memoe.core.design.grouping import GroupingFactor, make_grouping_factor
from memoe.core.design.native import ColumnCache, LazySpec, frame_columns, native_matrix, resolve_spec
from memoe.core.formula.names import r_column_name
from memoe.core.formula.parse import RandomTermSpec
from memoe.core.linalg.threads import blas_threads
from memoe.errors import DataError, FormulaError, IdentifiabilityError, MemoeError, PredictorScaleWarning, warn

__all__ = ["FactorBlock", "ReTerm", "build_random"]


@dataclass(frozen=True)
class ReTerm:
    """One lme4 random-effects term, e.g. ``(Days | Subject)`` or one half of ``(Days || Subject)``.

    Attributes
    ----------
    name : str
        lme4's VarCorr name: the group, with ``.1``, ``.2`` for repeated groups.
    group : str
    columns : tuple of str
        R names of the term's columns.
    block : int
        Index of the factor block holding the term.
    offset : int
        First column of the term within its block.
    text : str
        The bar term as written.
    """

    name: str
    group: str
    columns: tuple[str, ...]
    block: int
    offset: int
    text: str
    theta_slice: slice = field(default_factory=lambda: slice(0, 0))

    @property
    def q(self) -> int:
        return len(self.columns)


@dataclass(frozen=True)
class FactorBlock:
    """All random-effects columns that share one grouping factor.

    Attributes
    ----------
    factor : GroupingFactor
    Z : numpy.ndarray, shape (n, q)
        Per-row values of the block's columns (the dense 'raw' model matrix of the terms).
    columns : tuple of str
    specs : tuple of (formulaic ModelSpec, numpy.ndarray of int)
        Per term-source: the spec and the column indices it contributes, to rebuild Z on new data
        (built on first access where the native path built Z: ``spec_sources`` holds
        :class:`~memoe.core.design.native.LazySpec` objects then).
    """

    factor: GroupingFactor
    Z: np.ndarray
    columns: tuple[str, ...]
    spec_sources: tuple[tuple[ModelSpec | LazySpec, np.ndarray], ...]

    @property
    def specs(self) -> tuple[tuple[ModelSpec, np.ndarray], ...]:
        return tuple((resolve_spec(s), idx) for s, idx in self.spec_sources)

    @property
    def q(self) -> int:
        return self.Z.shape[1]

    @property
    def nlevels(self) -> int:
        return self.factor.nlevels


def _term_matrix(
    rhs: str, term: RandomTermSpec, data: pd.DataFrame, cache: ColumnCache | None = None
) -> tuple[ModelSpec | LazySpec, np.ndarray, list[str]]:
    # lme4 builds random-term matrices with R's default contrasts (its contrasts= argument reaches the
    # fixed part only): treatment for unordered factors, contr.poly for ordered ones
    resolved: dict[str, str] = {}
    with contextlib.suppress(MemoeError):  # a bad reference: formulaic's message below names the term
        resolved = resolve_contrasts([rhs], data, None, columns=frame_columns(cache))
    # numeric columns, factors and their interactions straight from the data or, when the fixed part built
    # the same columns, a view of the fixed-effects matrix (memoe.core.design.native)
    native = native_matrix(rhs, data, resolved, f"the random-effects term {term.text!r}", cache)
    if native is not None:
        # R names without levels, as below (a random term's factors are treatment or poly coded)
        return native.spec, native.X, native.names
    rhs = apply_contrasts(rhs, resolved)
    try:
        mm = model_matrix(rhs, data, output="numpy", na_action="ignore")
    except Exception as exc:
        raise FormulaError(f"cannot build the random-effects term {term.text!r}: {exc}") from None
    spec = mm.model_spec
    return spec, np.asarray(mm, dtype=float), [r_column_name(c) for c in spec.column_names]


@functools.lru_cache(maxsize=512)
def _split_terms(lhs: str) -> tuple[str, ...]:
    """The terms of a ``||`` left-hand side as text (cached: formulaic's parse costs ~1 ms)."""
    return tuple(str(t) for t in Formula(lhs))


def _lhs_pieces(
    term: RandomTermSpec, data: pd.DataFrame, cache: ColumnCache | None = None
) -> list[tuple[ModelSpec, np.ndarray, list[str], np.ndarray]]:
    """Model matrix of a term's left-hand side; ``||`` split into lme4's pieces.

    lme4's ``expandDoubleVerts`` turns ``(a + f || g)`` into ``(1 | g) + (0 + a | g) + (0 + f | g)``:
    every formula term of the left-hand side gets its own model matrix *without an intercept*, so a
    factor ``f`` contributes an indicator column for every level, with a full covariance matrix
    among them (only correlations between the pieces are removed).
    """
    if not term.uncorrelated:
        spec, Z, names = _term_matrix(term.lhs, term, data, cache)
        if Z.shape[1] == 0:
            raise FormulaError(f"random-effects term {term.text!r} has no columns")
        return [(spec, Z, names, np.arange(Z.shape[1]))]
    try:
        parsed = _split_terms(term.lhs)
    except Exception as exc:
        raise FormulaError(f"cannot read the left-hand side of random-effects term {term.text!r}: {exc}") from None
    pieces = []
    for t in parsed:
        rhs = "1" if t == "1" else f"0 + {t}"
        spec, Z, names = _term_matrix(rhs, term, data, cache)
        if Z.shape[1]:
            pieces.append((spec, Z, names, np.arange(Z.shape[1])))
    if not pieces:
        raise FormulaError(f"random-effects term {term.text!r} has no columns")
    return pieces


# A random slope whose mean is this many standard deviations away from zero (with an intercept
# in the term) makes the intercept-slope correlation -1 to many digits: the optimiser's start
# (identity relative factor) is then far from the optimum in an ill-conditioned direction. Measured
# on sleepstudy's (Days | Subject): Days + 100 (35 sd) fits to 1e-10 with a warning, Days + 1000
# (350 sd) converges to a wrong optimum (deviance off by 1.4%); lme4 behaves alike.
Z_OFFSET_WARN = 30.0
Z_OFFSET_ERROR = 300.0
# Relative factors start at 1; a column whose size is this far from 1 puts the optimum orders of
# magnitude away (Days * 1e5: deviance off by 6e-4; Days * 1e3 still correct).
Z_SCALE_WARN = 1e3
Z_SCALE_ERROR = 1e5


def check_re_scale(term_text: str, names: list[str], Z: np.ndarray) -> None:
    """Refuse (or warn about) random-effects columns with huge offsets or scales, naming the column.

    The fixed effects and the response are rescaled internally (:mod:`memoe.core.design.scaling`), but
    a random-effects column cannot be centred without changing the model's covariance
    parameterisation, so the user is asked to centre or rescale it, as lme4 suggests.

    Raises
    ------
    DataError
        Offset above ``Z_OFFSET_ERROR`` standard deviations or scale beyond ``Z_SCALE_ERROR``.
    """
    if Z.shape[0] < 2:
        return
    n = Z.shape[0]
    ones = [j for j in range(Z.shape[1]) if Z[0, j] == 1.0 and np.all(Z[:, j] == 1.0)]
    for j, name in enumerate(names):
        if j in ones:
            continue
        col = Z[:, j]
        mean = float(col.mean())
        # one centred temporary and single-threaded dots (np.std and mean(col * col) made three
        # temporaries and five passes: 0.19 s of CPU at 10^7 rows); the values only feed thresholds and messages
        d = col - mean
        with blas_threads(1):
            sd = math.sqrt(float(d @ d) / n)
            rms = sd if ones else math.sqrt(float(col @ col) / n)
        del d
        if not (sd > 0 and np.isfinite(sd)):
            continue
        ratio = abs(mean) / sd if ones else 0.0
        size = (sd if ones else rms)
        big = max(size, 1.0 / size)
        hint = (
            f"centre it (e.g. {name} - {mean:.6g}) and rescale it to units of order 1"
            if ratio > Z_OFFSET_WARN else f"rescale it (e.g. {name} / {size:.3g}) to units of order 1"
        )
        what = (
            f"random-effects column {name!r} of term {term_text!r} has mean {mean:.6g} and standard deviation "
            f"{sd:.3g}"
        )
        if ratio > Z_OFFSET_ERROR or big > Z_SCALE_ERROR:
            raise DataError(
                f"{what}: the random-effects covariance cannot be estimated reliably on that scale; {hint}"
            )
        if ratio > Z_OFFSET_WARN or big > Z_SCALE_WARN:
            warn(f"{what}; some predictor variables are on very different scales: consider to {hint}",
                 PredictorScaleWarning)


def _stack(pieces: list[np.ndarray]) -> np.ndarray:
    """The block's columns side by side (Fortran order when every piece is, as the native path builds them)."""
    if len(pieces) == 1:
        return pieces[0]
    if all(z.flags.f_contiguous for z in pieces):
        return np.asfortranarray(np.concatenate(pieces, axis=1))
    return np.column_stack(pieces)


def build_random(
    terms: tuple[RandomTermSpec, ...],
    data: pd.DataFrame,
    nobs: int,
    residual_scale: bool = True,
    check_scale: bool = True,
    cache: ColumnCache | None = None,
):
    """Build lme4 terms, merged factor blocks and the theta map.

    ``residual_scale=False`` (GLMMs with a fixed scale: binomial, Poisson) skips the two checks that
    compare with ``nobs``; such models may have one random effect per observation, and their own
    rules are checked by the caller (:func:`memoe.glmm.design.check_identifiable`).

    ``check_scale`` refuses random-effects columns with huge offsets or scales (:func:`check_re_scale`).

    ``cache`` holds the plain numeric columns the fixed part built (:func:`memoe.core.design.fixed.build_fixed`):
    a term whose columns are among them gets a view of the fixed-effects matrix instead of a copy.

    Terms are ordered as lme4 orders them (decreasing number of levels, stable); blocks are
    ordered by their first term in that order, so block 0 has the most levels.

    Returns
    -------
    terms : list of ReTerm
    blocks : list of FactorBlock
    theta_map : ThetaMap

    Raises
    ------
    IdentifiabilityError
        lme4's checks: fewer than 2 levels, as many levels as observations, or more random
        effects than observations.
    DataError
        A random-effects column on an extreme scale.
    """
    factors: dict[str, GroupingFactor] = {}
    raw: list[tuple[str, list[str], np.ndarray, ModelSpec | LazySpec, np.ndarray, str]] = []
    for term in terms:
        gname = term.group
        if gname not in factors:
            factors[gname] = make_grouping_factor(data, term.group_factors, cache)
        f = factors[gname]
        if f.nlevels < 2:
            raise IdentifiabilityError(
                f"grouping factor {gname!r} of term {term.text!r} has {f.nlevels} level; "
                "grouping factors must have > 1 sampled level"
            )
        if residual_scale and f.nlevels >= nobs:
            raise IdentifiabilityError(
                f"number of levels of each grouping factor must be < number of observations "
                f"(grouping factor {gname!r} has {f.nlevels} levels for {nobs} observations)"
            )
        pieces = _lhs_pieces(term, data, cache)
        if check_scale:
            for _, Zp, names_p, _ in pieces:
                check_re_scale(term.text, names_p, Zp)
        for spec, Z, names, idx in pieces:
            nre = Z.shape[1] * f.nlevels
            if residual_scale and nobs <= nre:
                raise IdentifiabilityError(
                    f"number of observations (={nobs}) <= number of random effects (={nre}) for term "
                    f"{term.text!r}; the random-effects parameters and the residual variance are "
                    "probably unidentifiable"
                )
            raw.append((gname, names, Z, spec, idx, term.text))

    order = sorted(range(len(raw)), key=lambda i: -factors[raw[i][0]].nlevels)
    block_of: dict[str, int] = {}
    block_cols: list[list[str]] = []
    block_Z: list[list[np.ndarray]] = []
    block_specs: list[list[tuple[ModelSpec | LazySpec, np.ndarray]]] = []
    seen_names: dict[str, int] = {}
    re_terms: list[ReTerm] = []
    t_block, t_row, t_col, t_names = [], [], [], []
    for i in order:
        gname, names, Z, spec, idx, text = raw[i]
        if gname not in block_of:
            block_of[gname] = len(block_cols)
            block_cols.append([])
            block_Z.append([])
            block_specs.append([])
        b = block_of[gname]
        offset = len(block_cols[b])
        block_cols[b].extend(names)
        block_Z[b].append(Z)
        block_specs[b].append((spec, idx))
        k = seen_names.get(gname, 0)
        seen_names[gname] = k + 1
        start = len(t_block)
        q = len(names)
        for c in range(q):
            for r in range(c, q):
                t_block.append(b)
                t_row.append(offset + r)
                t_col.append(offset + c)
                t_names.append(f"{gname}.{names[r]}" if r == c else f"{gname}.{names[r]}.{names[c]}")
        re_terms.append(
            ReTerm(
                name=gname if k == 0 else f"{gname}.{k}",
                group=gname,
                columns=tuple(names),
                block=b,
                offset=offset,
                text=text,
                theta_slice=slice(start, len(t_block)),
            )
        )
    blocks = [
        FactorBlock(
            factor=factors[g],
            Z=_stack(block_Z[b]),
            columns=tuple(block_cols[b]),
            spec_sources=tuple(block_specs[b]),
        )
        for g, b in block_of.items()
    ]
    theta_map = ThetaMap(
        block=np.array(t_block, dtype=int),
        row=np.array(t_row, dtype=int),
        col=np.array(t_col, dtype=int),
        block_sizes=tuple(bl.q for bl in blocks),
        names=t_names,
    )
    return re_terms, blocks, theta_map

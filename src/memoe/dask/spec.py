"""The design spec learned once for a Dask DataFrame and replayed on every partition.

The fixed part's encoding must be identical in every partition: factor levels come from a
distributed ``unique()`` (small: one row per level), and formulaic's spec is fitted on a head of the
data whose factor columns carry those global levels; the spec then replays on each partition
(:func:`memoe.core.design.fixed.evaluate_matrix`). Stateful transforms (``scale(x)``, ``poly(x, 2)``,
splines) learn from the whole column in memory; with Dask they would learn from the head only and
change the estimates, so they are refused (precompute the column). Aliased fixed-effect columns are
decided from the total Gram matrix of the formulaic columns (one reduction), as lme4's rank check
on ``X`` decides them in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from formulaic.model_spec import ModelSpec

from memoe.core.covariance import ThetaMap
from memoe.core.design.fixed import RANK_TOL, FixedDesign, evaluate_matrix, model_matrix_with_contrasts
from memoe.core.design.frame import formula_variables
from memoe.core.design.random import ReTerm, build_random
from memoe.core.formula.parse import FormulaSpec, parse_formula
from memoe.errors import DataError, FormulaError

__all__ = ["DaskDesign", "DaskFormulaError", "learn_design", "partition_arrays"]

# rows of the head on which formulaic's encoding is fitted (its levels come from the whole data)
HEAD_ROWS = 5000


class DaskFormulaError(FormulaError):
    """A formula the Dask path cannot fit exactly (crossed factors, stateful transforms, weights)."""


@dataclass
class DaskDesign:
    """What the client knows about the data: spec, names, counts; nothing per row or per subject.

    Attributes
    ----------
    spec : FormulaSpec
    group : str
        The one grouping column.
    used : list of str
        Columns the formula reads (rows with a missing one are dropped, as in memory).
    fixed_spec : formulaic ModelSpec
        Replays the fixed part (global factor levels) on a partition.
    fixed_names_all : list of str
        R names of every formulaic column; ``kept`` selects the non-aliased ones.
    z_specs : tuple of (ModelSpec, numpy.ndarray)
        The random-effects columns of the single factor block.
    terms : list of ReTerm
    theta_map : ThetaMap
    columns : tuple of str
        Random-effects column names.
    contrasts : dict
    kept : numpy.ndarray of int
    n, n_dropped, nlevels : int
        Filled by the statistics pass.
    """

    spec: FormulaSpec
    group: str
    used: list[str]
    fixed_spec: ModelSpec
    fixed_names_all: list[str]
    z_specs: tuple
    terms: list[ReTerm]
    theta_map: ThetaMap
    columns: tuple[str, ...]
    contrasts: dict[str, str]
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    dropped: list[str] = field(default_factory=list)
    n: int = 0
    n_dropped: int = 0
    nlevels: int = 0
    # factors nested within ``group``: one NestedBlock per factor block (empty with one grouping factor)
    re_blocks: list = field(default_factory=list)
    block_levels: list[int] = field(default_factory=list)

    # no prior weights or offsets on the Dask path (refused): the attributes the in-memory Design has
    weights_column = None
    offset_column = None
    offset_terms: tuple[str, ...] = ()
    prior_weights = None
    offset = None

    @property
    def fixef_names(self) -> list[str]:
        return [self.fixed_names_all[j] for j in self.kept]

    @property
    def fixed(self) -> FixedDesign:
        """The fixed design without rows (``X`` has 0 rows): names, spec, contrasts, dropped columns."""
        return FixedDesign(X=np.zeros((0, len(self.kept))), names=self.fixef_names, spec_source=self.fixed_spec,
                           kept=self.kept, dropped=list(self.dropped), contrasts=dict(self.contrasts))

    @property
    def p(self) -> int:
        return len(self.kept)

    @property
    def q(self) -> int:
        return len(self.columns)


@dataclass(frozen=True)
class NestedBlock:
    """One factor block of a nested design: its name (``id:h``), factor columns, term specs and columns."""

    name: str
    factors: tuple[str, ...]
    specs: tuple
    columns: tuple[str, ...]

    @property
    def q(self) -> int:
        return len(self.columns)


def _check_scope(spec: FormulaSpec, nested: bool = False) -> str | list[str]:
    """The outer grouping factor the partitions are aligned on (``id`` in ``(1 | id/h)``).

    One grouping factor, or factors nested within one outer factor: every term's grouping factor is
    the outer one or an interaction containing it (``id:h``, ``h:id``), or (checked on the data, see
    :mod:`memoe.dask.nested`) a single factor whose levels each lie within one outer level. The outer
    factor is a single-factor term's group, contained in every other term's group when possible.
    """
    groups = list(dict.fromkeys(t.group for t in spec.random))
    factors = list(dict.fromkeys(f for t in spec.random for f in t.group_factors))
    if len(groups) == 1 and len(factors) == 1:
        return factors[0]
    if not nested:
        raise DaskFormulaError(
            f"formula {spec.text!r} has the grouping factors {groups}; with a Dask DataFrame this model (memoe.glmm, "
            "MEMoE) fits one grouping factor: factors nested within the subject (id/h) are not implemented yet for "
            "it (memoe.lmm fits them), and "
            "crossed factors couple subjects that live in different partitions. Fit them in memory"
        )
    singles = [g for g in groups if ":" not in g]
    common = set.intersection(*[set(t.group_factors) for t in spec.random])
    outer = [g for g in singles if g in common]
    if outer:
        return outer[0]
    if singles:
        # e.g. (1 | id) + (1 | h): nested only if each level of h lies within one id (checked on the data);
        # learn_design takes the candidate with the fewest levels as the outer factor
        return singles
    raise DaskFormulaError(
        f"formula {spec.text!r} has the grouping factors {groups} and no single outer factor (such as id in "
        "(1 | id/h)) that the others are nested within; with a Dask DataFrame memoe fits one grouping factor and "
        "factors nested within it. Crossed factors couple subjects that live in different partitions: fit in memory"
    )


def _stateful(spec: ModelSpec) -> list[str]:
    return [str(k) for k, v in (getattr(spec, "transform_state", {}) or {}).items() if v]


def learn_design(ddf, formula: str, contrasts=None, residual_scale: bool = True, nested: bool = False) -> DaskDesign:
    """Parse ``formula``, find global factor levels and fit the encoding on a head of ``ddf``.

    ``nested=True`` (the LMM) accepts factors nested within the outer grouping factor; their blocks are
    listed in ``re_blocks`` (see :mod:`memoe.dask.nested`).

    Raises
    ------
    DaskFormulaError
        Several grouping factors, or a stateful transform.
    DataError
        A used column is absent, or no complete row in the head.
    """
    spec = parse_formula(formula)
    if not spec.random:
        raise FormulaError(f"formula {formula!r} has no random-effects term such as (1 | group)")
    group = _check_scope(spec, nested)
    if isinstance(group, list):
        # no factor common to every term: the outer one has the fewest levels (one distributed pass each)
        missing = [c for c in group if c not in ddf.columns]
        if missing:
            raise DataError(f"grouping column(s) {missing} of the formula {formula!r} are not in the Dask DataFrame")
        counts = {c: int(ddf[c].nunique().compute()) for c in group}
        group = min(group, key=lambda c: counts[c])
    group_factors = list(dict.fromkeys(f for t in spec.random for f in t.group_factors))
    used: list[str] = []
    for part in [formula_variables(spec.response + " ~ 1", "the response"),
                 formula_variables(spec.fixed, "the fixed-effects part"),
                 *[formula_variables(t.lhs, f"random-effects term {t.text!r}") for t in spec.random],
                 [group], group_factors]:
        used += [v for v in part if v not in used]
    missing = [c for c in used if c not in ddf.columns]
    if missing:
        raise DataError(f"column(s) {missing} used by the formula {formula!r} are not in the Dask DataFrame "
                        f"(columns: {list(ddf.columns)[:20]})")
    clean = ddf[used].dropna()
    # global levels of the factor columns the encoding reads (the response and the group excluded)
    fixed_vars = set(formula_variables(spec.fixed, "the fixed-effects part"))
    factor_cols = [c for c in used if (c not in group_factors or c in fixed_vars) and c != spec.response
                   and not (pd.api.types.is_numeric_dtype(ddf.dtypes[c]) or pd.api.types.is_bool_dtype(ddf.dtypes[c]))]
    levels = {}
    for c in factor_cols:
        dt = ddf.dtypes[c]
        if isinstance(dt, pd.CategoricalDtype) and dt.categories is not None and len(dt.categories):
            levels[c] = (list(dt.categories), bool(dt.ordered))
        else:
            levels[c] = (sorted(clean[c].unique().compute().tolist()), False)
    # the lowered partition count: read_parquet fuses files once the columns are projected
    head = clean.head(HEAD_ROWS, npartitions=min(clean.optimize().npartitions, 10))
    if len(head) == 0:
        raise DataError("no complete row (every used column present) in the first partitions of the Dask DataFrame")
    head = head.copy()
    for c, (lv, ordered) in levels.items():
        head[c] = pd.Categorical(head[c], categories=lv, ordered=ordered)
    _, fixed_spec, names, resolved = model_matrix_with_contrasts(spec.fixed, head, contrasts)
    logical = {str(c) for c in head.columns if head[c].dtype == bool}
    if logical:
        names = [":".join(f"{p}TRUE" if p in logical else p for p in nm.split(":")) for nm in names]
    terms, blocks, theta_map = build_random(spec.random, head, len(head), residual_scale=False, check_scale=False)
    z_specs = blocks[0].specs
    stateful = _stateful(fixed_spec) + [s for b in blocks for zs, _ in b.specs for s in _stateful(zs)]
    if stateful:
        raise DaskFormulaError(
            f"the stateful transform(s) {stateful} learn from the whole column in memory; with a Dask DataFrame they "
            "would learn from a head of the data and change the estimates. Compute the transformed column first "
            "(e.g. ddf['x_c'] = ddf.x - ddf.x.mean()) and use it in the formula"
        )
    re_blocks = []
    if len(blocks) > 1 or blocks[0].factor.name != group:
        # the blocks in the head's order (decreasing levels, as lme4); memoe.dask.nested checks the order
        # holds for the whole data once the levels are counted
        re_blocks = [NestedBlock(b.factor.name, tuple(b.factor.name.split(":")), b.specs, tuple(b.columns))
                     for b in blocks]
    return DaskDesign(
        spec=spec, group=group, used=used, fixed_spec=fixed_spec, fixed_names_all=names, z_specs=z_specs,
        terms=terms, theta_map=theta_map, columns=tuple(blocks[0].columns), contrasts=dict(resolved),
        kept=np.arange(len(names)), re_blocks=re_blocks,
    )


def partition_arrays(pdf: pd.DataFrame, d: DaskDesign, kept: bool = True):
    """The rows of one partition as arrays: ``y``, ``X``, ``Z``, level codes and the levels.

    Rows with a missing used value are dropped (counted in ``n_dropped``); the levels are the
    partition's own subjects, sorted (a subject lives in one partition).

    Returns
    -------
    y : (n,), X : (n, p), Z : (n, q), codes : (n,) int, levels : pandas.Index, n_dropped : int, index : Index
    """
    frame = pdf[d.used]
    mask = ~frame.isna().any(axis=1).to_numpy()
    n_dropped = int((~mask).sum())
    frame = frame.loc[mask] if n_dropped else frame
    if len(frame) == 0:
        p = len(d.kept) if kept else len(d.fixed_names_all)
        return (np.zeros(0), np.zeros((0, p)), np.zeros((0, d.q)), np.zeros(0, dtype=np.intp), pd.Index([]),
                n_dropped, frame.index)
    y = pd.to_numeric(frame[d.spec.response], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(y)):
        raise DataError(f"response {d.spec.response!r} has non-numeric or non-finite values")
    X = evaluate_matrix(d.fixed_spec, frame, "the fixed effects")
    if kept:
        X = X[:, d.kept]
    Z = np.column_stack([evaluate_matrix(s, frame, "the random effects")[:, idx] for s, idx in d.z_specs])
    codes, levels = pd.factorize(frame[d.group], sort=True)
    return y, np.ascontiguousarray(X), np.ascontiguousarray(Z), codes.astype(np.intp), levels, n_dropped, frame.index


def aliased_from_gram(G: np.ndarray, tol: float = RANK_TOL) -> list[int]:
    """Columns that are combinations of earlier ones, from their Gram matrix (R's dqrdc2 criterion).

    A column is aliased when the norm of its residual on the earlier kept columns is below ``tol`` times
    its norm: ``G_jj - g' G_KK^-1 g < tol^2 G_jj``. Columns are scaled to unit norm first.
    """
    d = np.sqrt(np.clip(np.diag(G), 0.0, None))
    s = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    Gs = G * s[:, None] * s[None, :]
    kept: list[int] = []
    dropped: list[int] = []
    for j in range(G.shape[0]):
        if d[j] == 0:
            dropped.append(j)
            continue
        if kept:
            g = Gs[kept, j]
            r2 = Gs[j, j] - g @ np.linalg.solve(Gs[np.ix_(kept, kept)], g)
        else:
            r2 = Gs[j, j]
        (kept if r2 > tol**2 else dropped).append(j)
    return dropped


@dataclass(frozen=True)
class _Factor:
    name: str
    nlevels: int


@dataclass(frozen=True)
class BlockInfo:
    """The single factor block as :class:`memoe.core.design.FactorBlock` describes it, without rows."""

    factor: _Factor
    columns: tuple[str, ...]
    specs: tuple

    @property
    def q(self) -> int:
        return len(self.columns)

    @property
    def nlevels(self) -> int:
        return self.factor.nlevels


def _blocks(self: DaskDesign) -> list[BlockInfo]:
    if self.re_blocks:
        levels = self.block_levels or [0] * len(self.re_blocks)
        return [BlockInfo(_Factor(b.name, nl), b.columns, b.specs)
                for b, nl in zip(self.re_blocks, levels, strict=True)]
    return [BlockInfo(_Factor(self.group, self.nlevels), self.columns, self.z_specs)]


DaskDesign.blocks = property(_blocks)  # type: ignore[attr-defined]

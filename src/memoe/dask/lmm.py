"""The linear mixed model on a Dask DataFrame: the in-memory :class:`memoe.lmm.LMM` with a distributed objective.

Set-up (two passes over the data, both on the workers): the partitions are aligned by subject
(:mod:`memoe.dask.partition`), the design spec is learned (:mod:`memoe.dask.spec`), and each
partition's per-subject statistics are computed and persisted (:mod:`memoe.dask.stats`). Each
evaluation of the profiled deviance then sends ``lambda`` (q x q) to every partition and reduces
``(log det, C'C)`` (one float and an m x m matrix per partition) by a tree of sums; the client adds
the total ``[X y]'[X y]``, factors the m x m Schur complement and applies
:func:`memoe.lmm.deviance.profiled_deviance` -- the same arithmetic as :class:`PLSProblem`, summed in
a different order (agreement to rounding, ~1e-12 relative).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sla
from scipy.linalg import lapack

from memoe.core.optim.progress import EvaluationBar
from memoe.dask.nested import NestedProblemMixin
from memoe.dask.spec import DaskFormulaError, aliased_from_gram, learn_design
from memoe.dask.stats import add_reduced, part_counts, part_first_block, part_gram, part_stats
from memoe.errors import DataError, IdentifiabilityError, RankDeficiencyWarning, warn
from memoe.lmm.deviance import profiled_deviance, sigma_hat
from memoe.lmm.model import LMM
from memoe.lmm.objective import Factorization, PLSSolution

__all__ = ["DaskLMM", "tree_reduce"]

# partitions summed per node of the reduction tree
FAN_IN = 8


def tree_reduce(delayed_parts: list, fan_in: int = FAN_IN):
    """One delayed value: the sum of ``delayed_parts`` by a tree of ``fan_in``-ary additions."""
    import dask

    level = list(delayed_parts)
    while len(level) > 1:
        level = [dask.delayed(add_reduced, pure=True)(*level[i : i + fan_in]) for i in range(0, len(level), fan_in)]
    return level[0]


class DistributedStats:
    """Handles on the persisted per-partition statistics and the reductions over them."""

    def __init__(self, ddf, design, kept: bool, fn=part_stats) -> None:
        import dask

        parts = ddf.to_delayed()
        stats = [dask.delayed(fn, pure=True)(p, design, kept) for p in parts]
        # computed once and kept on the workers; lineage stays with the scheduler, so a lost worker's
        # partitions are recomputed from the data
        self.parts = list(dask.persist(*stats))

    def reduce(self, fn, *args):
        import dask

        return dask.compute(tree_reduce([dask.delayed(fn, pure=True)(s, *args) for s in self.parts]))[0]


class DaskPLSProblem:
    """The reduced PLS problem on the client: the deviance and solution from partition sums.

    Attributes mirror :class:`memoe.lmm.objective.PLSProblem` where :class:`memoe.lmm.result.LmmResult`
    reads them (``solve``, ``blas_threads``, ``theta_map``); nothing here is per row or per subject.
    """

    def __init__(self, stats: DistributedStats, design, XYtXY: np.ndarray) -> None:
        self.stats = stats
        self.design = design
        self.theta_map = design.theta_map
        self.XYtXY = XYtXY
        self.n = design.n
        self.p = design.p
        self.blas_threads = 1
        self.scaling = None
        self.evaluations = 0
        self.bar: EvaluationBar | None = None
        self._best = math.inf

    def _reduced(self, theta: np.ndarray):
        lam1 = self.theta_map.lambdas(np.asarray(theta, dtype=float))[0]
        logdet_Z, CtC = self.stats.reduce(part_first_block, lam1)
        self.evaluations += 1
        CtC = 0.5 * (CtC + CtC.T)
        c, info = lapack.dpotrf(self.XYtXY - CtC, lower=1, clean=0, overwrite_a=1)
        d = np.diagonal(c)
        ok = info == 0 and math.isfinite(logdet_Z) and bool(np.all(np.isfinite(d)))
        with np.errstate(divide="ignore", invalid="ignore"):
            logdet_X = 2.0 * float(np.log(d[: self.p]).sum())
        return lam1, ok, logdet_Z, logdet_X, float(d[-1] ** 2), c, info

    def deviance(self, theta: np.ndarray, reml: bool) -> float:
        *_, ok, logdet_Z, logdet_X, pwrss, _, _ = self._reduced(theta)
        dev = profiled_deviance(logdet_Z, logdet_X, pwrss, float(self.n), self.p, reml) if ok else math.inf
        if self.bar is not None:
            self._best = min(self._best, dev)
            self.bar.update(self._best)
        return dev

    def factorize(self, theta: np.ndarray) -> Factorization:
        """The reduced factor at theta: ``logdet_Z``, ``logdet_X``, ``pwrss``, ``Lr`` (no per-subject blocks)."""
        lam1, ok, logdet_Z, logdet_X, pwrss, c, info = self._reduced(theta)
        Lr = np.tril(c) if info == 0 else np.full(c.shape, np.nan)
        return Factorization(
            lambdas=[lam1], L1=np.zeros((0, 1, 1)), C=np.zeros((0, 1, self.p + 1)), G=None, Lr=Lr,
            logdet_level=np.zeros(0), logdet_Z=logdet_Z, logdet_X=logdet_X, pwrss=pwrss, n_eff=float(self.n), ok=ok,
        )

    def solve(self, theta: np.ndarray, reml: bool) -> PLSSolution:
        """beta, sigma, the criterion and ``R_X^-1`` at theta; ``u``/``b`` stay on the workers (empty here)."""
        factor = self.factorize(theta)
        p, Lr, pwrss = self.p, factor.Lr, factor.pwrss
        LXX, lyX = Lr[:p, :p], Lr[-1, :p]
        beta = sla.solve_triangular(LXX, lyX, trans="T", lower=True) if p else np.zeros(0)
        RX_inv_t = sla.solve_triangular(LXX, np.eye(p), lower=True).T if p else np.zeros((0, 0))
        dev = profiled_deviance(factor.logdet_Z, factor.logdet_X, pwrss, float(self.n), p, reml)
        sigma = sigma_hat(pwrss, float(self.n), p, reml)
        return PLSSolution(beta=beta, u=[], b=[], sigma=sigma, deviance=dev, RX_inv_t=RX_inv_t, factor=factor)


class NestedPLSProblem(NestedProblemMixin, DaskPLSProblem):
    """:class:`DaskPLSProblem` for factors nested within the outer one (:mod:`memoe.dask.nested`)."""


class DaskLMM(LMM):
    """:class:`memoe.lmm.LMM` on a Dask DataFrame (one grouping factor); see :mod:`memoe.dask`.

    Parameters
    ----------
    formula : str
        lme4 syntax with one grouping factor: ``"y ~ t + x + (t | id)"``, ``(t || id)``.
    data : dask.dataframe.DataFrame
        Partitions need not be aligned by subject (one shuffle aligns them).
    contrasts : dict, optional
        As :class:`memoe.lmm.LMM`.
    progress : bool or None, default None
        A tqdm bar over objective evaluations (None: when stderr is a terminal, after 2 s).

    Notes
    -----
    R: ``lme4::lmer(formula, data)`` -- the same estimates as the in-memory fit. Prior weights,
    offsets, stateful transforms and several grouping factors are refused (:class:`DaskFormulaError`).

    Examples
    --------
    >>> import dask.dataframe as dd, memoe                               # doctest: +SKIP
    >>> ddf = dd.read_parquet("visits/")                                 # doctest: +SKIP
    >>> fit = memoe.lmm("y ~ t + x + (t | id)", data=ddf).fit()          # doctest: +SKIP
    """

    def __init__(self, formula: str, data, contrasts=None, weights=None, offset=None, progress: bool | None = None):
        from memoe.dask.partition import align_by_subject
        from memoe.errors import FormulaTypeError

        if not isinstance(formula, str):
            raise FormulaTypeError(f"formula must be a string such as 'y ~ x + (1 | g)', got {type(formula).__name__}")
        if weights is not None or offset is not None:
            raise DaskFormulaError("weights= and offset= are not supported with a Dask DataFrame yet; fit in memory")
        self.formula = formula
        self.data_name = None
        self.progress = progress
        design = learn_design(data, formula, contrasts, nested=True)
        if "offset(" in design.spec.fixed:
            raise DaskFormulaError("offset() terms are not supported with a Dask DataFrame yet; fit in memory")
        ddf, self.shuffled = align_by_subject(data, design.group)
        self.ddf = ddf
        nested = bool(design.re_blocks)
        if nested:
            from memoe.dask.nested import nested_part_stats, part_nested_counts, part_nested_gram

            stats_fn, counts_fn, gram_fn = nested_part_stats, part_nested_counts, part_nested_gram
        else:
            stats_fn, counts_fn, gram_fn = part_stats, part_counts, part_gram
        stats = DistributedStats(ddf, design, kept=False, fn=stats_fn)
        counts = stats.reduce(counts_fn)
        G = stats.reduce(gram_fn)
        design.n, design.n_dropped, design.nlevels = (int(v) for v in counts[:3])
        if nested:
            design.block_levels = [int(v) for v in counts[3:]]
            self._check_nested(data, design)
        self._check_counts(design)
        p_all = len(design.fixed_names_all)
        drop = aliased_from_gram(G[:p_all, :p_all])
        if drop:
            design.dropped = [design.fixed_names_all[j] for j in drop]
            design.kept = np.array([j for j in range(p_all) if j not in drop], dtype=int)
            warn(f"fixed-effect model matrix is rank deficient so dropping {len(drop)} column(s) / coefficient(s): "
                 f"{design.dropped}", RankDeficiencyWarning)
            stats = DistributedStats(ddf, design, kept=True, fn=stats_fn)
            G = stats.reduce(gram_fn)
        self.design = design
        self.contrasts = dict(design.contrasts)
        self.problem = (NestedPLSProblem if nested else DaskPLSProblem)(stats, design, G)

    @staticmethod
    def _check_nested(data, d) -> None:
        """Inner factors given as their own column: nested across partitions, and the blocks' order as lme4's."""
        from memoe.dask.nested import global_levels

        for b, nl in zip(d.re_blocks, d.block_levels, strict=True):
            if d.group in b.factors:
                continue
            # levels counted per partition (each with one subject there) add up only if none spans partitions
            total = global_levels(data, d, b)
            if total != nl:
                raise DaskFormulaError(
                    f"grouping factor {b.name!r} is not nested within {d.group!r}: some of its levels occur with "
                    f"several levels of {d.group!r} (crossed factors). With a Dask DataFrame memoe fits one "
                    f"grouping factor and factors nested within it ({d.group!r}); crossed factors couple subjects "
                    "across partitions: fit in memory")
        lv = d.block_levels
        if any(lv[k + 1] > lv[k] for k in range(len(lv) - 1)):
            # the blocks (and theta) were ordered on a head of the data; lme4 orders them on all of it
            raise DaskFormulaError(
                f"the grouping factors {[b.name for b in d.re_blocks]} have {lv} levels: a head of the data ordered "
                "them differently from the whole data; fit in memory or reorder the rows")

    @staticmethod
    def _check_counts(d) -> None:
        if d.n == 0:
            raise DataError(f"no rows left after removing {d.n_dropped} rows with missing values")
        for b in d.blocks[1:] if d.re_blocks else []:
            # lme4's checks for every block but the first (checked below as the design's first block)
            if b.nlevels < 2:
                raise IdentifiabilityError(f"grouping factor {b.factor.name!r} has {b.nlevels} level; it must have > 1")
            if b.nlevels >= d.n or d.n <= b.nlevels * b.q:
                raise IdentifiabilityError(
                    f"number of observations (={d.n}) must exceed the number of random effects "
                    f"(={b.nlevels * b.q}) of grouping factor {b.factor.name!r}")
        if d.re_blocks:
            b0 = d.blocks[0]
            if b0.nlevels >= d.n or d.n <= b0.nlevels * b0.q:
                raise IdentifiabilityError(
                    f"number of observations (={d.n}) must exceed the number of random effects "
                    f"(={b0.nlevels * b0.q}) of grouping factor {b0.factor.name!r}")
        if d.nlevels < 2:
            raise IdentifiabilityError(f"grouping factor {d.group!r} has {d.nlevels} level; it must have > 1")
        if d.nlevels >= d.n or d.n <= d.nlevels * d.q:
            raise IdentifiabilityError(
                f"number of observations (={d.n}) must exceed the number of random effects (={d.nlevels * d.q}) "
                f"of grouping factor {d.group!r}")
        if len(d.fixed_names_all) >= d.n:
            raise DataError(f"the fixed effects have {len(d.fixed_names_all)} columns for {d.n} observations")

    def fit(self, reml: bool = True, start=None, control=None, warn: bool = True):
        """As :meth:`memoe.lmm.LMM.fit`; returns a :class:`memoe.dask.result.DaskLmmResult`."""
        if start is None and self.design.re_blocks:
            # the in-memory moment start for several factors reads the rows: start at lme4's default
            start = self.design.theta_map.initial()
        self.problem.bar = EvaluationBar(self.progress, f"dask lmm {'REML' if reml else 'ML'}")
        try:
            return super().fit(reml=reml, start=start, control=control, warn=warn)
        finally:
            self.problem.bar.close()
            self.problem.bar = None

    def _result(self, **kwargs):
        from memoe.dask.result import DaskLmmResult

        return DaskLmmResult(**kwargs)

    def __repr__(self) -> str:
        d = self.design
        groups = {b.factor.name: b.nlevels for b in d.blocks}
        return f"DaskLMM({self.formula!r}, nobs={d.n}, groups={groups})"

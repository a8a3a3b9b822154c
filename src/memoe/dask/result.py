"""Results of Dask fits: the in-memory result classes with per-subject and per-row outputs as Dask objects.

Which methods need the full data (and how they behave):

* from the reduced quantities only (no pass over the data): ``params``/``fixef``, ``bse``, ``vcov()``,
  ``theta``, ``sigma``, ``varcorr``, ``loglik``, ``aic``, ``bic``, ``nobs``, ``ngroups``,
  ``coef_table(ddf="residual" | "asymptotic")``, ``confint(method="wald")`` for the fixed effects,
  ``glance()``;
* one lazy pass over the persisted statistics: ``ranef`` (a Dask DataFrame, computed to pandas when the
  grouping factor has at most :data:`PANDAS_LEVELS` levels) and ``ranef_condsd``;
* lazy, partition by partition over the data: ``fitted``, ``resid``, ``residuals(type=)`` and
  ``predict(ddf)`` (Dask Series; nothing is computed until you ask);
* refused with a :class:`DaskUnsupportedError` naming the in-memory alternative: methods that need
  every row in one process (cluster-robust ``vcov(robust=)``, Satterthwaite / Kenward-Roger, profile and
  bootstrap intervals, ``caic``, ``augment``, ``save``).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd

from memoe.dask.stats import part_ranef
from memoe.errors import MemoeError
from memoe.lmm.result import LmmResult

__all__ = ["PANDAS_LEVELS", "DaskLmmResult", "DaskUnsupportedError"]

#: at most this many subjects: ``ranef`` is returned as pandas (it is small)
PANDAS_LEVELS = 100_000


class DaskUnsupportedError(MemoeError):
    """A method that needs every row of the data in one process, called on a Dask fit."""


def _part_eta(pdf, s, design, lam1, beta, sigma, population: bool) -> pd.Series:
    from memoe.dask.spec import partition_arrays

    y, X, Z, codes, _, _, index = partition_arrays(pdf, design)
    eta = X @ beta if len(beta) else np.zeros(len(y))
    if not population and len(y):
        re = part_ranef(s, lam1, beta, sigma, design.columns, design.group)
        b = re.to_numpy()[:, : design.q]
        # the statistics and the rows of a partition list the same subjects in the same (sorted) order
        eta = eta + np.einsum("nq,nq->n", Z, b[codes])
    out = pd.Series(np.nan, index=pdf.index, name="fitted")
    out.loc[index] = eta
    return out


def _part_y(pdf, design) -> pd.Series:
    from memoe.dask.spec import partition_arrays

    y, *_, index = partition_arrays(pdf, design)
    out = pd.Series(np.nan, index=pdf.index, name="y")
    out.loc[index] = y
    return out


class SummaryView:
    """The fit as a summary reads it, with ``residuals(kind)`` replaced by the five quantiles of the lazy
    residuals (Dask's approximate quantiles: one pass, nothing per row gathered)."""

    def __init__(self, fit) -> None:
        self._fit = fit

    def __getattr__(self, name):
        return getattr(self._fit, name)

    def residuals(self, type: str = "response") -> pd.Series:
        r = self._fit.residuals(type).dropna()
        return r.quantile([0.0, 0.25, 0.5, 0.75, 1.0]).compute()


class DesignCounts:
    """``nobs``, ``n_dropped`` and ``ngroups`` of a Dask fit, from its design's counts (no pass over the data)."""

    @property
    def nobs(self) -> int:
        return self.design.n

    @property
    def n_dropped(self) -> int:
        return self.design.n_dropped

    @property
    def ngroups(self) -> pd.Series:
        return pd.Series({b.factor.name: b.nlevels for b in self.design.blocks}, name="ngroups", dtype=int)


class DaskLmmResult(DesignCounts, LmmResult):
    """A :class:`memoe.lmm.LmmResult` of a Dask fit (see the module notes for what needs the data)."""

    def _stats_frame(self, population: bool = False):
        import dask.dataframe as dd

        import dask

        d = self.design
        lam1 = self.relative_factors()[0]
        beta, sigma = np.asarray(self.state.beta), self.sigma
        return d, lam1, beta, sigma, dask, dd

    @cached_property
    def ranef(self) -> dict:
        """BLUPs per grouping factor: a Dask DataFrame (subjects x terms), pandas when small."""
        if self.design.re_blocks:
            return self._nested_ranef(condsd=False)
        return {self.design.group: self._ranef_frame(condsd=False)}

    @cached_property
    def ranef_condsd(self) -> dict:
        """Conditional SDs of the BLUPs (lme4's ``condVar``), same layout as :attr:`ranef`."""
        if self.design.re_blocks:
            return self._nested_ranef(condsd=True)
        return {self.design.group: self._ranef_frame(condsd=True)}

    def _nested_ranef(self, condsd: bool) -> dict:
        """Per nested factor block: one lazy pass over the data (each partition solves its own PLS part)."""
        from memoe.dask.nested import part_nested_ranef, pick_block

        d, _, beta, sigma, dask, dd = self._stats_frame()
        theta = np.asarray(self.state.theta, dtype=float)
        parts = [dask.delayed(part_nested_ranef)(p, d, theta, beta, sigma) for p in self.model.ddf.to_delayed()]
        out = {}
        for b, nl in zip(d.re_blocks, d.block_levels, strict=True):
            cols = [f"condsd_{c}" for c in b.columns] if condsd else list(b.columns)
            names = list(b.columns) + [f"condsd_{c}" for c in b.columns]
            meta = pd.DataFrame({c: pd.Series(dtype=float) for c in names})
            frame = dd.from_delayed([dask.delayed(pick_block)(p, b.name) for p in parts], meta=meta, verify_meta=False)
            frame = frame[cols].rename(columns=dict(zip(cols, b.columns, strict=True)))
            if nl <= PANDAS_LEVELS:
                frame = frame.compute().sort_index()
                frame.index.name = b.name
            out[b.name] = frame
        return out

    def _ranef_frame(self, condsd: bool):
        d, lam1, beta, sigma, dask, dd = self._stats_frame()
        cols = list(d.columns) + [f"condsd_{c}" for c in d.columns]
        meta = pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
        parts = [dask.delayed(part_ranef)(s, lam1, beta, sigma, d.columns, d.group)
                 for s in self.model.problem.stats.parts]
        ddf = dd.from_delayed(parts, meta=meta, verify_meta=False)
        ddf = ddf[[f"condsd_{c}" for c in d.columns]] if condsd else ddf[list(d.columns)]
        if condsd:
            ddf = ddf.rename(columns={f"condsd_{c}": c for c in d.columns})
        if d.nlevels <= PANDAS_LEVELS:
            out = ddf.compute().sort_index()
            out.index.name = d.group
            return out
        return ddf

    @property
    def ranef_condvar(self):
        raise DaskUnsupportedError(
            "ranef_condvar (q x q per subject) is not gathered from a Dask fit; use ranef_condsd")

    def _lazy_eta(self, population: bool):
        d, lam1, beta, sigma, dask, dd = self._stats_frame(population)
        ddf = self.model.ddf
        if d.re_blocks and not population:
            from memoe.dask.nested import part_nested_eta

            theta = np.asarray(self.state.theta, dtype=float)
            parts = [dask.delayed(part_nested_eta)(p, d, theta, beta, sigma) for p in ddf.to_delayed()]
            return dd.from_delayed(parts, meta=pd.Series(dtype=float, name="fitted"), verify_meta=False)
        parts = [dask.delayed(_part_eta)(p, s, d, lam1, beta, sigma, population)
                 for p, s in zip(ddf.to_delayed(), self.model.problem.stats.parts, strict=True)]
        return dd.from_delayed(parts, meta=pd.Series(dtype=float, name="fitted"), verify_meta=False)

    @property
    def fitted(self):
        """Conditional fitted values ``X beta + Z b``: a lazy Dask Series (NaN where a row was dropped)."""
        return self._lazy_eta(population=False)

    def _response(self):
        import dask.dataframe as dd

        import dask

        ddf = self.model.ddf
        parts = [dask.delayed(_part_y)(p, self.design) for p in ddf.to_delayed()]
        return dd.from_delayed(parts, meta=pd.Series(dtype=float, name="y"), verify_meta=False)

    @property
    def resid(self):
        """Conditional response residuals ``y - X beta - Z b``: a lazy Dask Series."""
        return (self._response() - self.fitted).rename("resid")

    def residuals(self, type: str = "response"):
        """``"response"``, ``"pearson"`` (over sigma) or ``"marginal"`` (``y - X beta``) residuals, lazily."""
        if type == "response":
            return self.resid
        if type in ("pearson", "normalized"):
            return (self.resid / self.sigma).rename(f"resid_{type}")
        if type == "marginal":
            return (self._response() - self._lazy_eta(population=True)).rename("resid_marginal")
        raise MemoeError(f"residuals(type=) must be one of {self.residual_types}, got {type!r}")

    def predict(self, newdata=None, re_form="full", type: str = "response", allow_new_levels: bool = False, **kwargs):
        """Predictions on a Dask (or pandas) DataFrame, partition by partition (lazy for Dask input).

        ``re_form=None`` gives ``X beta``; ``"full"`` adds ``Z b`` of each row's subject (joined by id); a
        subject not in the fit raises unless ``allow_new_levels=True`` (then ``b = 0``, as lme4).
        """
        from memoe.core.design.newdata import parse_re_form
        from memoe.dask import is_dask_dataframe

        if kwargs:
            raise DaskUnsupportedError(f"predict({', '.join(kwargs)}=...) is not available for a Dask fit")
        if newdata is None:
            return self.fitted if parse_re_form(re_form) == "full" else self._lazy_eta(population=True)
        re_form = parse_re_form(re_form)
        d = self.design
        beta = np.asarray(self.state.beta)
        ranef = None
        if re_form == "full" and d.re_blocks:
            raise DaskUnsupportedError(
                f"predict(newdata, re_form='full') with the nested factors {[b.name for b in d.re_blocks]} is not "
                "available for a Dask fit yet; use re_form=None, or fitted for the data of the fit")
        if re_form == "full":
            ranef = self.ranef[d.group]
        if not is_dask_dataframe(newdata):
            return _predict_frame(newdata, d, beta, ranef, allow_new_levels)
        if ranef is not None and isinstance(ranef, pd.DataFrame):
            return newdata.map_partitions(_predict_frame, d, beta, ranef, allow_new_levels,
                                          meta=pd.Series(dtype=float, name="predict"))
        if ranef is not None:
            b = ranef.rename(columns={c: f"__b_{i}" for i, c in enumerate(d.columns)})
            newdata = newdata.merge(b, left_on=d.group, right_index=True, how="left")
        return newdata.map_partitions(_predict_frame, d, beta, "joined" if ranef is not None else None,
                                      allow_new_levels, meta=pd.Series(dtype=float, name="predict"))

    def summary(self):
        """lme4-style summary; the scaled-residual quantiles are Dask's approximate quantiles."""
        from memoe.lmm.summary import LmmSummary

        return LmmSummary(SummaryView(self))

    def anova(self, ddf: str = "residual", type: int = 3):
        self._refuse("anova() (its contrasts are built from the model matrix)")

    # ------------------------------------------------------------------ need the rows in one process
    def _refuse(self, what: str):
        raise DaskUnsupportedError(
            f"{what} needs every row of the data in one process; for a Dask fit compute the data "
            "(ddf.compute()) and refit in memory with memoe.lmm(...)")

    def _vcov(self, robust):
        if robust is not None:
            self._refuse(f"vcov(robust={robust!r})")
        return super()._vcov(None)

    def caic(self, method: str = "greven-kneib"):
        self._refuse("caic()")

    def augment(self, *args, **kwargs):
        self._refuse("augment()")

    def save(self, *args, **kwargs):
        self._refuse("save()")

    def coef_table(self, ddf: str = "residual", robust=None):
        if ddf not in ("residual", "asymptotic") or robust is not None:
            self._refuse(f"coef_table(ddf={ddf!r}, robust={robust!r})")
        return super().coef_table(ddf=ddf, robust=robust)

    def __repr__(self) -> str:
        return (f"<DaskLmmResult {self.method} {self.model.formula!r} nobs={self.nobs} "
                f"loglik={self.loglik:.4f} singular={self.singular}>")


def _predict_frame(pdf: pd.DataFrame, d, beta, ranef, allow_new_levels: bool) -> pd.Series:
    """``X beta (+ Z b)`` of one pandas partition of new data."""
    from memoe.core.design.fixed import evaluate_matrix
    from memoe.core.design.newdata import NewLevelError

    X = evaluate_matrix(d.fixed_spec, pdf, "the fixed effects")[:, d.kept]
    eta = X @ beta if len(beta) else np.zeros(len(pdf))
    if ranef is not None:
        Z = np.column_stack([evaluate_matrix(s, pdf, "the random effects")[:, idx] for s, idx in d.z_specs])
        if isinstance(ranef, str):
            b = pdf[[f"__b_{i}" for i in range(d.q)]].to_numpy(dtype=float)
            unseen = np.isnan(b).any(axis=1) & pdf[d.group].notna().to_numpy()
        else:
            pos = ranef.index.get_indexer(pdf[d.group])
            unseen = (pos < 0) & pdf[d.group].notna().to_numpy()
            b = np.where(pos[:, None] >= 0, ranef.to_numpy()[np.clip(pos, 0, None)], np.nan)
        if unseen.any():
            if not allow_new_levels:
                shown = ", ".join(repr(v) for v in pd.unique(pdf[d.group].to_numpy()[unseen])[:5])
                raise NewLevelError(
                    f"grouping factor {d.group!r} has {int(unseen.sum())} row(s) of subjects not seen in the fit "
                    f"({shown}); pass allow_new_levels=True to predict them at b = 0 (lme4's rule)")
            b[unseen] = 0.0
        eta = eta + np.einsum("nq,nq->n", Z, b)
    return pd.Series(eta, index=pdf.index, name="predict")

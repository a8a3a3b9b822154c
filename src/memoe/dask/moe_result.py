"""The result of a Dask MEMoE fit: :class:`~memoe.moe.result.MEMoEResult` with per-subject outputs on the workers.

* from the reduced quantities (no pass over the data): ``params``, ``fixef``, ``gating``, ``sigmas``,
  ``ranef_cov``, ``loglik``, ``aic``/``bic``/``icl``/``entropy``, ``criteria()``, ``vcov()`` (the inverse
  observed information) and ``vcov("sandwich")`` (its sandwich with the sum of per-subject score outer
  products), ``bse``, ``coef_table``, ``confint``, ``tidy``, ``glance``, ``test``;
* one lazy pass over the persisted statistics: ``posterior``, ``prior``, ``classify()`` and ``ranef``
  (Dask DataFrames; pandas when at most :data:`memoe.dask.result.PANDAS_LEVELS` subjects);
* lazy, partition by partition: ``fitted`` and ``predict(ddf)`` (Dask Series);
* refused (:class:`~memoe.dask.result.DaskUnsupportedError`): what needs every subject or row in one
  process (``augment``, ``resid``, ``save``, ``summary``, ``classification_table``, ``ranef_posterior``).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd

from memoe.dask.moe_parts import part_posterior, part_predict, part_summary
from memoe.dask.result import PANDAS_LEVELS, DaskUnsupportedError
from memoe.moe.inference import MoEInference, _jacobian, natural_values
from memoe.moe.result import MEMoEResult

__all__ = ["DaskMEMoEResult"]


class DaskMEMoEResult(MEMoEResult):
    """A :class:`memoe.moe.result.MEMoEResult` of a Dask fit (see the module notes).

    Attributes
    ----------
    round_trips : int
        Client <-> workers reductions the fit took.
    seconds_per_iteration : float
        Wall time per ECM iteration of the run to convergence.
    newton_iter : int
        Newton iterations of the finish.
    """

    def __init__(self, model, fit) -> None:
        from memoe.moe.multistart import canonical_order

        self.model = model
        self.k = model.k
        st = model.structure
        summ = model.stats.reduce(part_summary, fit.params)
        mass = summ[: self.k]
        order = canonical_order(fit.params, mass, model.order, st.specific)
        self._order = np.asarray(order)
        self.estimates = fit.params.permute(order)
        inv = np.argsort(order)
        self._mass = mass[order]
        self._en = -float(summ[self.k])
        self._loglik = float(fit.loglik)
        self.n_iter = fit.n_iter
        self._converged = bool(fit.converged)
        self.trace = list(fit.trace)
        self.max_decrease = fit.max_decrease
        self.starts = fit.starts
        short = np.asarray(fit.starts["short_loglik"], dtype=float)
        self.n_at_best = int(np.sum(short >= np.max(short) - 1e-3))
        self.n_empty_starts = int(fit.starts["empty"].sum())
        self.n_polished = 1
        self.n_same_partition = None
        self.empty_experts = sorted(int(inv[k]) + 1 for k in fit.empty)
        self.round_trips = int(fit.round_trips) + 1
        self.seconds_per_iteration = float(fit.seconds_per_iter)
        self.newton_iter = int(fit.newton_iter)
        self._fit_state = fit

    # ------------------------------------------------------------------ reduced quantities
    @property
    def degenerate_experts(self) -> list[int]:
        sigma = np.asarray(self.estimates.sigma)
        return [int(k) + 1 for k in np.flatnonzero(sigma <= self.model.sigma_floor * (1.0 + 1e-6))]

    @property
    def classification_entropy(self) -> float:
        return self._en

    def criteria(self) -> pd.Series:
        out = {"loglik": self.loglik, "npar": self.npar, "AIC": self.aic, "BIC": self.bic, "ICL": self.icl,
               "entropy": self.entropy, "min_class_share": float(self._mass.min() / self.n_subjects)}
        return pd.Series(out)

    @cached_property
    def inference(self) -> MoEInference:
        """Observed information and sandwich reduced over the partitions (the Newton finish's last pass)."""
        import warnings

        from memoe.dask.moe_parts import part_newton
        from memoe.errors import ConvergenceWarning, caller_stacklevel

        md, st = self.model.mdesign, self.model.structure
        psi = st.pack(self.estimates)
        # at the canonically ordered estimates: one pass (the finish's matrices are in the fit's labelling)
        d = st.size
        out = self.model.stats.reduce(part_newton, psi, 1e-5)
        g = out[1 : 1 + d]
        pert = out[1 + d : 1 + d + 2 * d * d].reshape(2 * d, d)
        h = 1e-5 * np.maximum(1.0, np.abs(psi))
        H = np.column_stack([(pert[2 * j] - pert[2 * j + 1]) / (2.0 * h[j]) for j in range(d)])
        A = -(H + H.T) / 2.0
        B = out[1 + d + 2 * d * d :].reshape(d, d)
        try:
            Ainv = np.linalg.inv(A)
            ok = bool(np.all(np.linalg.eigvalsh(A) > 0))
        except np.linalg.LinAlgError:
            Ainv, ok = np.full_like(A, np.nan), False
        if not ok:
            warnings.warn("the observed information is not positive definite (a boundary estimate, an empty expert "
                          "or a saddle point): standard errors are unreliable", ConvergenceWarning,
                          stacklevel=caller_stacklevel())
        J = _jacobian(lambda x: natural_values(st, st.unpack(x)), psi, 1e-7)
        return MoEInference(
            psi=psi, psi_names=st.names(md.fixef_names, md.z_names, md.gating_names), information=A, meat=B,
            vcov_model=Ainv, vcov_robust=Ainv @ B @ Ainv,
            natural=pd.Series(natural_values(st, self.estimates), index=self._natural_index, name="estimate"),
            jacobian=J, score_norm=float(np.max(np.abs(g))) if g.size else 0.0,
        )

    # ------------------------------------------------------------------ per-subject outputs (lazy)
    def _subject_frame(self, what: str, meta: pd.DataFrame):
        import dask.dataframe as dd

        import dask

        group = self.model.mdesign.group
        parts = [dask.delayed(part_posterior)(s, self.estimates, what, group) for s in self.model.stats.parts]
        ddf = dd.from_delayed(parts, meta=meta, verify_meta=False)
        if self.n_subjects <= PANDAS_LEVELS:
            out = ddf.compute().sort_index()
            out.index.name = group
            return out
        return ddf

    def _prob_meta(self) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in range(1, self.k + 1)},
                            index=pd.Index([], name=self.model.mdesign.group))

    @cached_property
    def posterior(self):
        """Posterior probabilities, subjects x experts: a Dask DataFrame (pandas for few subjects)."""
        out = self._subject_frame("posterior", self._prob_meta())
        out.columns = pd.Index(range(1, self.k + 1), name="expert") if isinstance(out, pd.DataFrame) else out.columns
        return out

    @cached_property
    def prior(self):
        """Gating probabilities, laid out as :attr:`posterior`."""
        return self._subject_frame("prior", self._prob_meta())

    def classify(self):
        """MAP expert of each subject (1-based): a Dask Series (pandas for few subjects)."""
        meta = pd.DataFrame({"expert": pd.Series(dtype=np.int64)}, index=pd.Index([], name=self.model.mdesign.group))
        return self._subject_frame("class", meta)["expert"]

    @cached_property
    def ranef(self) -> dict:
        """Each expert's BLUPs ``{expert: {subject column: frame subjects x terms}}`` (Dask when large)."""
        md = self.model.mdesign
        z = list(md.z_names)
        q = len(z)
        cols = [f"{k}:{c}" for k in range(1, self.k + 1) for c in z]
        meta = pd.DataFrame({i: pd.Series(dtype=float) for i in range(len(cols))}, index=pd.Index([], name=md.group))
        wide = self._subject_frame("blup", meta)
        out = {}
        for k in range(self.k):
            sub = wide[list(range(k * q, (k + 1) * q))]
            sub.columns = z
            out[k + 1] = {md.group: sub}
        return out

    def _lazy_predict(self, level: str):
        import dask.dataframe as dd

        import dask

        m = self.model
        meta = pd.Series(dtype=float, name="fitted")
        # the persisted statistics were built from these partitions, in this order
        out = [dask.delayed(part_predict)(p, s, m.design, m.gate, self.estimates, level)
               for p, s in zip(m.ddf.to_delayed(), m.stats.parts, strict=True)]
        return dd.from_delayed(out, meta=meta, verify_meta=False)

    @property
    def fitted(self):
        """Posterior-weighted fitted values of every row (a lazy Dask Series, NaN where a row was dropped)."""
        return self._lazy_predict("subject")

    def predict(self, newdata=None, re_form="full", type: str = "response", allow_new_levels: bool = False,
                kind: str = "auto", interval=None, level: float = 0.95):
        """Lazy predictions.

        On the fitted data (``newdata`` None or the Dask DataFrame the model was given): ``kind="auto"`` /
        ``"subject"`` the posterior-weighted means with each expert's BLUPs (as :attr:`fitted`),
        ``"population"`` (or ``re_form=None``) the gate-weighted fixed part. On other data (a Dask or pandas
        DataFrame): ``kind="population"`` only, partition by partition (a subject's posterior given a new
        history needs its rows in one place: fit in memory for that).
        """
        if interval is not None:
            raise DaskUnsupportedError("interval= is not available for MEMoE predictions (a mixture, see MEMoEResult)")
        if kind not in ("auto", "subject", "population"):
            raise DaskUnsupportedError(f"kind={kind!r} is not available on Dask; use 'auto', 'subject' or 'population'")
        population = kind == "population" or re_form is None
        m = self.model
        if newdata is None or newdata is m.ddf or newdata is m.data_in:
            return self._lazy_predict("population" if population else "subject")
        if not population:
            raise DaskUnsupportedError(
                "predict(newdata) on a Dask MEMoE fit gives kind='population' (the gate-weighted fixed part) for new "
                "data; subject-level predictions condition on each subject's history, which needs its rows in one "
                "place: pass kind='population', predict on the fitted data, or fit in memory")
        from memoe.dask import is_dask_dataframe
        from memoe.dask.moe_parts import part_population

        if is_dask_dataframe(newdata):
            return newdata.map_partitions(part_population, m.design, m.gate, self.estimates,
                                          meta=pd.Series(dtype=float, name="fitted"))
        from memoe.core.frames import to_pandas

        return part_population(to_pandas(newdata, "newdata"), m.design, m.gate, self.estimates)

    # ------------------------------------------------------------------ refused
    def _refuse(self, what: str):
        raise DaskUnsupportedError(
            f"{what} needs every subject's rows in one process, which a Dask MEMoE fit never gathers; fit the model in "
            "memory (memoe.MEMoE(..., data=ddf.compute())) for it")

    @property
    def resid(self):
        self._refuse("resid")

    def augment(self, *args, **kwargs):
        self._refuse("augment()")

    def save(self, *args, **kwargs):
        self._refuse("save()")

    def summary(self):
        self._refuse("summary()")

    def classification_table(self):
        self._refuse("classification_table()")

    def posterior_thresholds(self, thresholds=(0.7, 0.8, 0.9)):
        self._refuse("posterior_thresholds()")

    @cached_property
    def ranef_posterior(self):
        self._refuse("ranef_posterior")

    @cached_property
    def ranef_condsd(self):
        self._refuse("ranef_condsd")

    def __repr__(self) -> str:
        return (f"<DaskMEMoEResult k={self.k} subjects={self.n_subjects} loglik={self.loglik:.4f} "
                f"BIC={self.bic:.2f} converged={self.converged} round_trips={self.round_trips}>")

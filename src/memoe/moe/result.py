"""The frozen result of a MEMoE fit: estimates, posterior, classification, criteria, SEs, predictions."""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import pandas as pd

from memoe.moe.inference import MoEInference, compute_inference, natural_names
from memoe.moe.multistart import MultiStartResult
from memoe.moe.params import MoEParams
from memoe.moe.problem import EStep

__all__ = ["MEMoEResult"]


class MEMoEResult:
    """A fitted Mixed-Effects Mixture of Experts.

    Attributes
    ----------
    model : MEMoE
    params : MoEParams
        Estimates in canonical expert order.
    k : int
    loglik : float
        Observed-data (marginal) log-likelihood.
    n_iter : int
        EM iterations of the selected run.
    converged : bool
    starts : pandas.DataFrame
        Record of every start (see :class:`~memoe.moe.multistart.MultiStartResult`).
    n_at_best : int
        Starts that reached the best log-likelihood (within 1e-3; in practice the starts continued to
        convergence, ``n_polished`` of them).
    n_same_partition : int
        Starts whose own run ended with the best run's classification (>= 99% MAP agreement after
        matching labels), continued or not: how often the search finds this solution.
    empty_experts : list of int
        Experts (1-based, canonical order) that emptied in the selected run (normally empty).
    trace : list of float
        Log-likelihood at each EM iteration of the selected run (non-decreasing).
    """

    def __init__(self, model, params: MoEParams, estep: EStep, ms: MultiStartResult, order: np.ndarray) -> None:
        self.model = model
        self.params = params
        self._estep = estep
        self.k = model.k
        self.loglik = estep.loglik
        run = ms.best
        self.n_iter = run.n_iter
        self.converged = run.converged
        self.trace = list(run.trace)
        self.max_decrease = run.max_decrease
        self.starts = ms.starts
        self.n_at_best = ms.n_at_best
        self.n_empty_starts = ms.n_empty
        self.n_polished = ms.n_polished
        self.n_same_partition = ms.n_same_partition
        inv = np.argsort(order)
        self.empty_experts = sorted(int(inv[k]) + 1 for k in run.empty)

    # ------------------------------------------------------------------ sizes and criteria
    @property
    def degenerate_experts(self) -> list[int]:
        """Experts (1-based) whose residual SD sits at its floor: they fit a few subjects exactly (normally empty)."""
        from memoe.moe.model import _degenerate_experts

        return _degenerate_experts(self.model, self.params)

    @property
    def n_subjects(self) -> int:
        return self.model.mdesign.N

    @property
    def nobs(self) -> int:
        return self.model.mdesign.design.n

    @property
    def n_dropped(self) -> int:
        """Input rows removed for missing values."""
        return self.model.mdesign.n_dropped

    @property
    def npar(self) -> int:
        """Free parameters: gating, fixed effects, covariance entries, residual SDs."""
        return self.model.structure.size

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.npar

    @property
    def bic(self) -> float:
        """BIC with log(number of subjects), the independent units (lcmm's convention; flexmix uses nobs)."""
        return -2.0 * self.loglik + math.log(self.n_subjects) * self.npar

    @property
    def classification_entropy(self) -> float:
        """``EN = -sum_i sum_k tau_ik log tau_ik``."""
        t = self._estep.tau
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(-np.sum(np.where(t > 0, t * np.log(t), 0.0)))

    @property
    def icl(self) -> float:
        """ICL-BIC = BIC + 2 EN (Biernacki, Celeux & Govaert 2000); smaller is better."""
        return self.bic + 2.0 * self.classification_entropy

    @property
    def entropy(self) -> float:
        """Relative entropy ``1 - EN / (N log K)`` in [0, 1] (1 = perfectly separated; 1 for K = 1)."""
        if self.k == 1:
            return 1.0
        return 1.0 - self.classification_entropy / (self.n_subjects * math.log(self.k))

    def criteria(self) -> pd.Series:
        """loglik, npar, AIC, BIC, ICL, entropy and the smallest class share (posterior mass / N)."""
        return pd.Series(
            {
                "loglik": self.loglik,
                "npar": self.npar,
                "AIC": self.aic,
                "BIC": self.bic,
                "ICL": self.icl,
                "entropy": self.entropy,
                "min_class_share": float(self._estep.mass.min() / self.n_subjects),
            }
        )

    # ------------------------------------------------------------------ posterior and classes
    @cached_property
    def posterior(self) -> pd.DataFrame:
        """Posterior probabilities, subjects x experts (index = subject labels, columns 1..K)."""
        return pd.DataFrame(
            self._estep.tau, index=self.model.mdesign.subjects, columns=pd.Index(range(1, self.k + 1), name="expert")
        )

    @cached_property
    def prior(self) -> pd.DataFrame:
        """Gating probabilities ``pi_ik`` of each subject, same layout as :attr:`posterior`."""
        return pd.DataFrame(
            np.exp(self._estep.log_gate), index=self.model.mdesign.subjects, columns=self.posterior.columns
        )

    def classify(self) -> pd.Series:
        """MAP expert (1..K) of each subject."""
        return pd.Series(self._estep.tau.argmax(axis=1) + 1, index=self.model.mdesign.subjects, name="expert")

    def classification_table(self) -> pd.DataFrame:
        """lcmm's ``postprob``: class sizes and mean posterior probabilities by assigned class.

        Returns
        -------
        pandas.DataFrame
            One row per assigned (MAP) class: ``n``, ``percent``, then ``prob_1 .. prob_K``, the mean
            posterior probability of each class among the subjects assigned to the row's class (the
            diagonal measures how cleanly the class is separated).
        """
        cls = self._estep.tau.argmax(axis=1)
        rows = []
        for k in range(self.k):
            m = cls == k
            mean = self._estep.tau[m].mean(axis=0) if m.any() else np.full(self.k, np.nan)
            rows.append([int(m.sum()), 100.0 * m.mean(), *mean])
        cols = ["n", "percent", *[f"prob_{j + 1}" for j in range(self.k)]]
        return pd.DataFrame(rows, index=pd.Index(range(1, self.k + 1), name="class"), columns=cols)

    def posterior_thresholds(self, thresholds=(0.7, 0.8, 0.9)) -> pd.DataFrame:
        """Percent of each class's subjects whose posterior probability exceeds each threshold (lcmm)."""
        tau = self._estep.tau
        cls = tau.argmax(axis=1)
        pmax = tau.max(axis=1)
        out = {f"prob>{t:g}": [100.0 * np.mean(pmax[cls == k] > t) if np.any(cls == k) else np.nan
                               for k in range(self.k)] for t in thresholds}
        return pd.DataFrame(out, index=pd.Index(range(1, self.k + 1), name="class"))

    # ------------------------------------------------------------------ estimates
    @property
    def gating(self) -> pd.DataFrame:
        """Gating coefficients, experts x covariates (expert 1 = reference, zeros)."""
        md = self.model.mdesign
        return pd.DataFrame(
            self.params.gamma, index=pd.Index(range(1, self.k + 1), name="expert"), columns=md.gating_names
        )

    @property
    def fixef(self) -> pd.DataFrame:
        """Fixed effects, experts x coefficients."""
        md = self.model.mdesign
        return pd.DataFrame(self.params.beta, index=pd.Index(range(1, self.k + 1), name="expert"),
                            columns=md.fixef_names)

    @property
    def ranef_cov(self) -> list[pd.DataFrame]:
        """Random-effects covariance matrix G_k of each expert."""
        z = self.model.mdesign.z_names
        return [pd.DataFrame(G, index=z, columns=z) for G in self.params.G]

    @property
    def sigma(self) -> pd.Series:
        return pd.Series(self.params.sigma, index=pd.Index(range(1, self.k + 1), name="expert"), name="sigma")

    @cached_property
    def inference(self) -> MoEInference:
        """Observed information, sandwich and delta-method covariances (computed once)."""
        md = self.model.mdesign
        st = self.model.structure
        names = natural_names(st, md.fixef_names, md.z_names, md.gating_names)
        psi_names = st.names(md.fixef_names, md.z_names, md.gating_names)
        return compute_inference(self.model.problem, self.params, names, psi_names)

    @property
    def params_table(self) -> pd.DataFrame:
        """Every natural-scale parameter with model-based and robust SEs, robust Wald z, p and 95% CI."""
        return self.inference.table()

    def conf_int(self, level: float = 0.95) -> pd.DataFrame:
        """Robust Wald confidence intervals on the natural scale."""
        t = self.inference.table(level)
        return t.iloc[:, -2:]

    def vcov(self, robust: bool = True) -> pd.DataFrame:
        """Covariance of the natural-scale estimates (robust sandwich or model-based)."""
        return self.inference.vcov_natural(robust)

    @property
    def param_names(self) -> list[str]:
        """``part[expert]:term`` names of the natural-scale parameters, as :meth:`test` reads them."""
        from memoe.moe.wald import flat_names

        return flat_names(self.inference.natural.index)

    def test(self, hypothesis, robust: bool = True):
        """Wald chi-square test of a linear hypothesis, e.g. ``"fixed[1]:x = fixed[2]:x"``.

        See :func:`memoe.moe.wald.wald_test`; ``robust=False`` uses the inverse observed information.
        """
        from memoe.moe.wald import wald_test

        return wald_test(self, hypothesis, robust=robust)

    # ------------------------------------------------------------------ output
    def summary(self):
        """Gating coefficients and each expert's LMM with model-based and robust SEs, and fit criteria."""
        from memoe.moe.summary import MEMoESummary

        return MEMoESummary(self)

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        re_form: str | None = "full",
        type: str = "response",
        allow_new_levels: bool = False,
        kind: str = "auto",
    ) -> pd.Series | pd.DataFrame:
        """Predictions; see :func:`memoe.moe.predict.predict_memoe`.

        ``kind`` keeps its meanings (``"population"``, ``"subject"``, ``"class"``); the default
        ``"auto"`` with ``re_form="full"`` conditions on each subject's history in ``newdata`` or, without
        one, on the fit's posterior of that subject; a subject not in the fit raises unless
        ``allow_new_levels=True``.
        """
        from memoe.moe.predict import predict_memoe

        return predict_memoe(
            self, newdata, kind=kind, re_form=re_form, type=type, allow_new_levels=allow_new_levels
        )

    def save(self, path) -> None:
        """Save the fit to one ``.memoe`` file (JSON + npz in a zip, no pickle); see :func:`memoe.persist.save`.

        ``memoe.persist.load(path)`` gives it back with the same numbers.
        """
        from memoe.persist import save

        save(self, path)

    def plot_trajectories(self, time: str | None = None, **kwargs):
        """Expert mean trajectories over the subjects' trajectories coloured by MAP class."""
        from memoe.moe.plots import plot_trajectories

        return plot_trajectories(self, time=time, **kwargs)

    def plot_posterior(self, **kwargs):
        """Histogram of each subject's largest posterior probability."""
        from memoe.moe.plots import plot_posterior

        return plot_posterior(self, **kwargs)

    def __repr__(self) -> str:
        return (
            f"<MEMoEResult k={self.k} subjects={self.n_subjects} loglik={self.loglik:.4f} "
            f"BIC={self.bic:.2f} converged={self.converged} "
            f"starts with this classification={self.n_same_partition}/{len(self.starts)}>"
        )

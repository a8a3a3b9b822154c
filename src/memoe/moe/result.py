"""The frozen result of a MEMoE (or MoE) fit on the shared result interface.

Every parameter of a mixture is named ``part[expert]:term`` (``gating[2]:w1``, ``fixed[1]:time``,
``sd[1]:(Intercept)``, ``corr[1]:(Intercept):time``, ``sigma[1]``): :attr:`MEMoEResult.params`,
:meth:`~MEMoEResult.vcov`, :meth:`~MEMoEResult.coef_table` and :meth:`~MEMoEResult.confint` use these
names, and :meth:`~MEMoEResult.test` reads them. The structured estimates (arrays in canonical expert
order) are :attr:`MEMoEResult.estimates`.
"""

from __future__ import annotations

import math
from functools import cached_property
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from memoe.core.frames import to_pandas
from memoe.core.result import FitResult, coef_frame, model_frame_rows
from memoe.errors import MemoeError
from memoe.inference.criteria import CriteriaSeries
from memoe.moe.inference import MoEInference, compute_inference, natural_names, natural_values
from memoe.moe.multistart import MultiStartResult
from memoe.moe.params import MoEParams
from memoe.moe.predict import fit_blup_condsd, fit_blups, fitted_memoe, predict_memoe
from memoe.moe.problem import EStep
from memoe.moe.simulate import simulate as _simulate
from memoe.moe.summary import MEMoESummary
from memoe.moe.wald import flat_names, wald_test

__all__ = ["MEMoEResult"]

# lme4's isSingular tolerance on the diagonal of the relative covariance factor Lambda = L / sigma
SINGULAR_TOL = 1e-4
# parts of the natural parameters that are variance parameters (no Wald test on the boundary)
_VARIANCE_PARTS = ("sd", "corr", "sigma", "cor", "var")  # cor / var: residual structures (memoe.moe.structured)


class MEMoEResult(FitResult):
    """A fitted Mixed-Effects Mixture of Experts (or, for :class:`~memoe.moe.model.MoE`, of regressions).

    The shared extractors (``bse``, ``confint``, ``tidy``, ``glance``, ``augment``, ``aic``, ``save``)
    come from :class:`~memoe.core.result.FitResult`; this class adds the mixture's own.

    Attributes
    ----------
    model : MEMoE
    estimates : MoEParams
        Estimates as arrays in canonical expert order (``gamma``, ``beta``, ``L``, ``sigma``);
        :attr:`params` is the same as a labelled Series.
    k : int
    n_iter : int
        EM iterations of the selected run.
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

    robust_types: ClassVar[tuple[str | None, ...]] = (None, "sandwich")
    residual_types: ClassVar[tuple[str, ...]] = ("response",)
    confint_methods: ClassVar[tuple[str, ...]] = ("wald",)
    simulate = _simulate  # fit.simulate(nsim, seed): responses from the fitted gate and experts (moe/simulate.py)

    def __init__(self, model, params: MoEParams, estep: EStep, ms: MultiStartResult, order: np.ndarray) -> None:
        self.model = model
        self.estimates = params
        self._estep = estep
        self.k = model.k
        self._loglik = float(estep.loglik)
        run = ms.best
        self.n_iter = run.n_iter
        self._converged = bool(run.converged)
        self.trace = list(run.trace)
        self.max_decrease = run.max_decrease
        self.starts = ms.starts
        self.n_at_best = ms.n_at_best
        self.n_empty_starts = ms.n_empty
        self.n_polished = ms.n_polished
        self.n_same_partition = ms.n_same_partition
        inv = np.argsort(order)
        self.empty_experts = sorted(int(inv[k]) + 1 for k in run.empty)

    # ------------------------------------------------------------------ identity
    @property
    def family(self) -> str:  # type: ignore[override]  # "memoe" or "moe", per instance
        return "moe" if type(self.model).__name__ == "MoE" else "memoe"

    # ------------------------------------------------------------------ response family (Laplace-EM)
    @property
    def response_family(self):
        """The experts' response :class:`~memoe.glmm.families.Family` (None: Gaussian experts)."""
        return getattr(self.model, "response_family", None)

    @property
    def family_name(self) -> str:
        """``"gaussian"``, ``"binomial"`` or ``"poisson"``."""
        fam = self.response_family
        return "gaussian" if fam is None else fam.name

    @property
    def nAGQ(self) -> int | None:
        """Quadrature nodes of the E-step (1 = Laplace) when it is approximate; None for the exact Gaussian path."""
        return int(self.model.nAGQ) if getattr(self.model, "laplace", False) else None

    @property
    def estimation(self) -> str:
        """How the marginal likelihood was computed: ``"exact EM"``, ``"Laplace-EM (nAGQ = 1)"`` or
        ``"adaptive Gauss-Hermite EM (nAGQ = n)"``."""
        n = self.nAGQ
        if n is None:
            return "exact EM"
        return "Laplace-EM (nAGQ = 1)" if n == 1 else f"adaptive Gauss-Hermite EM (nAGQ = {n})"

    @property
    def response_name(self) -> str:
        return self.model.mdesign.design.spec.response

    @property
    def converged(self) -> bool:
        return self._converged

    @property
    def loglik(self) -> float:
        """Observed-data (marginal) log-likelihood."""
        return self._loglik

    # ------------------------------------------------------------------ sizes and criteria
    @property
    def degenerate_experts(self) -> list[int]:
        """Experts (1-based) whose residual SD sits at its floor: they fit a few subjects exactly (normally empty)."""
        floor = self.model.problem.expert.sigma_floor
        sigma = np.asarray(self.estimates.sigma)
        return [int(k) + 1 for k in np.flatnonzero(sigma <= floor * (1.0 + 1e-6))]

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
    def ngroups(self) -> pd.Series:
        """``{subject column: number of subjects}``."""
        return pd.Series({self.model.mdesign.group: self.n_subjects}, dtype=int, name="ngroups")

    @property
    def npar(self) -> int:
        """Free parameters: gating, fixed effects, covariance entries, residual SDs."""
        return self.model.structure.size

    @property
    def df_model(self) -> int:
        """The number of free parameters (:attr:`npar`), the penalty count of AIC / BIC."""
        return self.npar

    @property
    def n_fixef(self) -> int:
        """Free fixed-effects coefficients (shared coefficients counted once)."""
        st = self.model.structure
        return int(st.K * np.sum(st.specific) + np.sum(~np.asarray(st.specific)))

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

    def information_criteria(self) -> pd.Series:
        """AIC, AICc, BIC, HQIC, CAIC and ICL with N = the number of subjects (the independent units).

        Returns
        -------
        memoe.inference.criteria.CriteriaSeries
            ``logLik, npar, N, AIC, AICc, BIC, HQIC, CAIC, ICL``; ``BIC`` equals :attr:`bic`.
        """
        ll, k, N = self.loglik, self.npar, self.n_subjects
        dev = -2.0 * ll
        values = {
            "logLik": ll,
            "npar": float(k),
            "N": float(N),
            "AIC": dev + 2.0 * k,
            "AICc": dev + 2.0 * k + (2.0 * k * (k + 1) / (N - k - 1) if N - k - 1 > 0 else math.inf),
            "BIC": self.bic,
            "HQIC": dev + 2.0 * k * math.log(math.log(N)) if math.e < N else math.nan,
            "CAIC": dev + k * (math.log(N) + 1.0),
            "ICL": self.icl,
        }
        out = CriteriaSeries(values, name="criteria")
        out.convention = (
            f"N = {N} subjects (the independent units of a mixture; lcmm's convention), k = {k} free parameters; "
            "ICL = BIC + 2 x classification entropy"
        )
        return out

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
        for k in range(self.k):  # a loop over the K classes, not the subjects
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

    # ------------------------------------------------------------------ parameters
    @cached_property
    def _natural_index(self) -> pd.MultiIndex:
        """``(part, expert, term)`` labels of the natural parameters, in :attr:`params` order."""
        md = self.model.mdesign
        return natural_names(self.model.structure, md.fixef_names, md.z_names, md.gating_names)

    @cached_property
    def params(self) -> pd.Series:
        """Every natural-scale parameter, named ``part[expert]:term``.

        Order: gating coefficients of experts 2..K (expert 1 is the reference), then per expert its
        fixed effects, random-effect SDs, correlations and residual SD (``sigma[k]``). Parameters the
        model ties together (shared fixed effects, a common covariance or residual SD) repeat the value.
        """
        values = natural_values(self.model.structure, self.estimates)
        return pd.Series(values, index=pd.Index(flat_names(self._natural_index)), name="estimate")

    @property
    def param_names(self) -> list[str]:
        """``part[expert]:term`` names of :attr:`params`, as :meth:`test` reads them."""
        return list(self.params.index)

    @cached_property
    def inference(self) -> MoEInference:
        """Observed information, sandwich and delta-method covariances (computed once)."""
        md = self.model.mdesign
        st = self.model.structure
        psi_names = st.names(md.fixef_names, md.z_names, md.gating_names)
        return compute_inference(self.model.problem, self.estimates, self._natural_index, psi_names)

    def _vcov(self, robust: str | None) -> pd.DataFrame:
        """Delta-method covariance of :attr:`params`: inverse observed information, or the sandwich
        ``A^-1 B A^-1`` with ``B`` the sum of the per-subject score outer products."""
        V = self.inference.vcov_natural(robust == "sandwich").to_numpy().copy()
        names = self.params.index
        return pd.DataFrame(V, index=names, columns=names)

    def coef_table(self, robust: str | None = None) -> pd.DataFrame:
        """Every parameter with standard error, Wald z and p value (standard columns).

        Parameters
        ----------
        robust : {None, "sandwich"}
            Model-based SEs (inverse observed information, the default, as :attr:`bse`) or the sandwich.

        Returns
        -------
        pandas.DataFrame
            Columns ``estimate, std_error, statistic, df, p_value`` indexed by ``part[expert]:term``;
            ``attrs``: ``statistic="z"``, ``ddf="asymptotic"``, ``robust``. Variance parameters (SDs,
            correlations, sigma) get SEs but no test (a variance on the boundary is not a Wald test):
            their ``statistic`` and ``p_value`` are NaN.
        """
        V = self.vcov(robust)
        se = np.sqrt(np.clip(np.diag(V.to_numpy()), 0.0, None))
        table = coef_frame(self.params.to_numpy(), se, self.params.index, statistic="z", ddf="asymptotic")
        variance = self._natural_index.get_level_values("part").isin(_VARIANCE_PARTS)
        table.loc[variance, ["statistic", "p_value"]] = np.nan
        table.attrs["robust"] = None if robust is None else "sandwich"
        return table

    @property
    def fixef(self) -> pd.Series:
        """Fixed effects of every expert, named ``fixed[k]:term`` (the ``fixed`` rows of :attr:`params`);
        :attr:`fixef_table` has them as a terms x experts table."""
        return self.params[self._natural_index.get_level_values("part") == "fixed"]

    @property
    def fixef_table(self) -> pd.DataFrame:
        """Fixed effects, experts x coefficients."""
        md = self.model.mdesign
        return pd.DataFrame(self.estimates.beta, index=pd.Index(range(1, self.k + 1), name="expert"),
                            columns=md.fixef_names)

    @property
    def gating(self) -> pd.DataFrame:
        """Gating coefficients, experts x covariates (expert 1 = reference, zeros)."""
        md = self.model.mdesign
        return pd.DataFrame(
            self.estimates.gamma, index=pd.Index(range(1, self.k + 1), name="expert"), columns=md.gating_names
        )

    @property
    def ranef_cov(self) -> list[pd.DataFrame]:
        """Random-effects covariance matrix G_k of each expert."""
        z = self.model.mdesign.z_names
        return [pd.DataFrame(G, index=z, columns=z) for G in self.estimates.G]

    @property
    def sigmas(self) -> pd.Series:
        """Residual SD of each expert."""
        return pd.Series(self.estimates.sigma, index=pd.Index(range(1, self.k + 1), name="expert"), name="sigma")

    @property
    def sigma(self) -> float:
        """The residual SD when the experts share it (``sigma="common"`` or K = 1), else NaN (see :attr:`sigmas`)."""
        s = self.estimates.sigma
        if not self.model.structure.dispersion:
            return 1.0  # binomial / Poisson experts: no residual SD (lme4's sigma() is 1)
        return float(s[0]) if self.k == 1 or self.model.structure.sigma == "common" else math.nan

    @property
    def singular(self) -> bool:
        """Some expert's random-effects covariance is on the boundary: a diagonal entry of its relative
        Cholesky factor ``L_k / sigma_k`` below 1e-4 (lme4's ``isSingular`` rule)."""
        if not self.model.mdesign.z_names:
            return False
        rel = self.estimates.L / self.estimates.sigma[:, None, None]
        return bool(np.any(np.abs(np.diagonal(rel, axis1=1, axis2=2)) < SINGULAR_TOL))

    # ------------------------------------------------------------------ random effects
    def _require_random(self) -> None:
        if not self.model.mdesign.z_names:
            raise MemoeError(
                f"{type(self.model).__name__} experts are regressions without random effects: there are no "
                "ranef; use a MEMoE with a (terms | subject) part for per-expert BLUPs"
            )

    def _per_expert(self, arrays: list[np.ndarray]) -> dict[int, dict[str, pd.DataFrame]]:
        md = self.model.mdesign
        return {
            k + 1: {md.group: pd.DataFrame(a, index=md.subjects, columns=list(md.z_names))}
            for k, a in enumerate(arrays)
        }

    @cached_property
    def ranef(self) -> dict[int, dict[str, pd.DataFrame]]:
        """Each expert's BLUPs of every subject: ``{expert: {subject column: DataFrame subjects x terms}}``.

        ``ranef[k]`` are the conditional means ``E(b_i | y_i, z_i = k)``, the subject's random effects if
        it belongs to expert k (what :meth:`predict` weights by the posterior); for binomial / Poisson
        experts the conditional modes (glmer's ``ranef``) from the Laplace E-step. See
        :attr:`ranef_posterior` for the posterior-weighted BLUPs.

        Examples
        --------
        >>> fit.ranef[2]["id"].head()            # doctest: +SKIP
        >>> fit.ranef_posterior["id"].head()     # doctest: +SKIP
        """
        self._require_random()
        return self._per_expert(fit_blups(self))

    @cached_property
    def ranef_condsd(self) -> dict[int, dict[str, pd.DataFrame]]:
        """Conditional SDs ``sqrt(diag Var(b_i | y_i, z_i = k))`` of the per-expert BLUPs, laid out as :attr:`ranef`."""
        self._require_random()
        return self._per_expert(fit_blup_condsd(self))

    @cached_property
    def ranef_posterior(self) -> dict[str, pd.DataFrame]:
        """Posterior-weighted BLUPs ``sum_k tau_ik E(b_i | y_i, z_i = k)``: ``{subject column: DataFrame}``."""
        self._require_random()
        md = self.model.mdesign
        tau = self._estep.tau
        b = sum(tau[:, [k]] * bk for k, bk in enumerate(fit_blups(self)))
        return {md.group: pd.DataFrame(b, index=md.subjects, columns=list(md.z_names))}

    def _ran_pars(self) -> pd.DataFrame:
        """Each expert's random-effect SDs and correlations (group ``<subject>[k]``) and residual SD (group
        ``Residual[k]``, term ``sd__Observation``), broom.mixed's names, with model-based SEs."""
        table = self.coef_table()
        idx = self._natural_index
        group = self.model.mdesign.group
        rows = []
        for (part, expert, term), name in zip(idx, table.index, strict=True):
            if part == "sd":
                rows.append((f"{group}[{expert}]", f"sd__{term}", name))
            elif part == "corr":
                # natural term "a:b" (a, b random-effect columns) -> broom.mixed's "cor__a.b"
                rows.append((f"{group}[{expert}]", "cor__" + self._corr_pair(term), name))
            elif part == "sigma":
                rows.append((f"Residual[{expert}]", "sd__Observation", name))
            elif part == "cor":  # class-specific residual structures: nlme's names (Phi, Rho, ...)
                rows.append((f"corStruct[{expert}]", term, name))
            elif part == "var":
                rows.append((f"varStruct[{expert}]", self.model.problem.expert.bound_var.term(term), name))
        if not rows:
            return pd.DataFrame(columns=["group", "term", "estimate", "std_error"])
        names = [r[2] for r in rows]
        return pd.DataFrame(
            {
                "group": [r[0] for r in rows],
                "term": [r[1] for r in rows],
                "estimate": table.loc[names, "estimate"].to_numpy(),
                "std_error": table.loc[names, "std_error"].to_numpy(),
            }
        )

    def coef(self) -> dict[int, dict[str, pd.DataFrame]]:
        """Each expert's subject-specific coefficients: ``{expert: {subject column: DataFrame subjects x fixed
        effects}}``, the expert's fixed effects plus its BLUPs (:attr:`ranef`) where a coefficient is random."""
        from memoe.inference.coefficients import subject_coefficients

        table = self.fixef_table
        return {k: subject_coefficients(table.loc[k], self.ranef[k]) for k in table.index}

    def icc(self, by_group: bool = False) -> pd.DataFrame:
        """Adjusted and conditional ICC of each expert, posterior-weighted over the rows
        (:func:`memoe.inference.variance_decomposition.expert_decomposition`)."""
        from memoe.inference.variance_decomposition import icc

        self._require_gaussian("icc")
        return icc(self, by_group=by_group)

    def r2(self) -> pd.DataFrame:
        """Nakagawa-Schielzeth marginal and conditional R² of each expert (posterior-weighted)."""
        from memoe.inference.variance_decomposition import r2

        self._require_gaussian("r2")
        return r2(self)

    def _require_gaussian(self, what: str) -> None:
        if self.response_family is not None:
            raise MemoeError(
                f"{what}() decomposes Gaussian variances; this MEMoE has {self.family_name} experts (no residual "
                "variance on the response scale)"
            )
        if getattr(self.model, "weights", None) is not None:
            # the residual variance sigma_k^2 s_ij^2 differs by row under a variance function
            raise MemoeError(
                f"{what}() takes one residual variance per expert; this MEMoE's experts have the variance function "
                f"weights={self.model.weights!r} (residual SD sigma_k * s_ij, varying by row); refit without weights= "
                "for the decomposition"
            )

    def _corr_pair(self, term: str) -> str:
        """``"a:b"`` -> ``"a.b"`` for two random-effect column names (which may contain ``:``)."""
        z = self.model.mdesign.z_names
        for a in z:
            if term.startswith(a + ":") and term[len(a) + 1 :] in z:
                return f"{a}.{term[len(a) + 1:]}"
        return term.replace(":", ".", 1)

    # ------------------------------------------------------------------ fitted values and residuals
    def _align(self, values: np.ndarray, name: str) -> pd.Series:
        """Values of the used rows on every input row, NaN for dropped rows (also those dropped for a
        missing subject id or gating covariate, which the expert formula never sees)."""
        return self.model.mdesign.align(values, name)

    @cached_property
    def _fitted_kept(self) -> np.ndarray:
        return fitted_memoe(self).to_numpy()

    @property
    def fitted(self) -> pd.Series:
        """Posterior-weighted fitted values ``sum_k tau_ik (X_ij beta_k + Z_ij b_ik)`` (= ``predict()`` on
        the fitted data), aligned to the input rows (NaN for rows dropped for missing values, including a
        missing subject id or gating covariate).
        """
        return self._align(self._fitted_kept, "fitted")

    @property
    def resid(self) -> pd.Series:
        """Response residuals ``y - fitted``, aligned like :attr:`fitted`."""
        return self._align(self.model.mdesign.design.y - self._fitted_kept, "resid")

    def augment(self, newdata: pd.DataFrame | None = None) -> pd.DataFrame:
        """broom.mixed's ``augment``: the data with ``.fitted`` (posterior-weighted, as :attr:`fitted`),
        ``.resid`` and ``.fixed`` (gate-weighted population mean).

        Without ``newdata``: every input row with the input's index, as the other families; rows dropped
        for missing values are all-missing (the model keeps no copy of them; pass ``newdata=data`` to see
        their values).
        """
        return super().augment(newdata)

    def _augment_data(self) -> pd.DataFrame:
        """The used rows spread over every input row (all-missing where a row was dropped)."""
        md = self.model.mdesign
        return model_frame_rows(SimpleNamespace(data=md.data, row_mask=md.used_rows, index=md.row_index))

    # ------------------------------------------------------------------ verbs
    def tidy(
        self,
        effects: Any = ("fixed", "ran_pars"),
        conf_int: bool = False,
        level: float = 0.95,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """broom.mixed's ``tidy`` (see :meth:`memoe.core.result.FitResult.tidy`).

        ``fixed`` rows are the gating and fixed-effects coefficients (terms ``gating[k]:w``,
        ``fixed[k]:x``); ``ran_pars`` rows each expert's SDs, correlations and residual SD (groups
        ``<subject>[k]`` and ``Residual[k]``). ``robust="sandwich"`` (through ``kwargs``) uses the
        sandwich SEs for the fixed rows.
        """
        out = super().tidy(effects, conf_int=conf_int, level=level, **kwargs)
        variance = (out["effect"] == "fixed") & out["term"].str.match(r"^(sd|corr|sigma|cor|var)\[")
        return out[~variance].reset_index(drop=True)

    def glance(self) -> pd.DataFrame:
        """broom's one-row summary plus ``k`` (experts), ``ICL`` and ``entropy`` (relative entropy)."""
        row = super().glance()
        row["k"] = self.k
        row["ICL"] = self.icl
        row["entropy"] = self.entropy
        return row

    def test(self, hypothesis, robust: str | None = "sandwich"):
        """Wald chi-square test of a linear hypothesis, e.g. ``"fixed[1]:x = fixed[2]:x"``.

        See :func:`memoe.moe.wald.wald_test`; ``robust=None`` uses the inverse observed information.
        """
        return wald_test(self, hypothesis, robust=robust)

    # ------------------------------------------------------------------ output
    def summary(self):
        """Gating coefficients and each expert's LMM with model-based and robust SEs, and fit criteria:
        a :class:`~memoe.moe.summary.MEMoESummary` (``str()`` the text, ``.tables`` the DataFrames)."""
        return MEMoESummary(self)

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        re_form: str | None = "full",
        type: str = "response",
        allow_new_levels: bool = False,
        kind: str = "auto",
        interval: str | None = None,
        level: float = 0.95,
    ) -> pd.Series | pd.DataFrame:
        """Predictions; see :func:`memoe.moe.predict.predict_memoe`.

        ``interval`` must be None: a MEMoE prediction is a posterior- (or gate-) weighted mixture of
        the experts' predictions, not a normal quantity with one standard error, so ``"confidence"`` /
        ``"prediction"`` raise a :class:`~memoe.errors.MemoeError` (``level`` is accepted for the shared
        interface). Use ``kind="class"`` for the per-expert means.

        ``kind`` keeps its meanings (``"population"``, ``"subject"``, ``"class"``); the default
        ``"auto"`` with ``re_form="full"`` conditions on each subject's history in ``newdata`` or, without
        one, on the fit's posterior of that subject; a subject not in the fit raises unless
        ``allow_new_levels=True``. ``newdata`` may be a pandas or polars DataFrame or a pyarrow Table.
        """
        from memoe.inference.prediction import check_interval

        interval, level = check_interval(interval, level)
        if interval is not None:
            from memoe.core.design.newdata import PredictArgumentError

            raise PredictArgumentError(
                f"interval={interval!r} is not available for a MEMoE fit: its prediction is a mixture over the "
                "experts (weighted by the gates or the subject's posterior), not normal with one standard error; "
                "use interval=None, or kind='class' for the per-expert means"
            )

        if newdata is not None:
            newdata = to_pandas(newdata, "newdata")
        out = predict_memoe(self, newdata, kind=kind, re_form=re_form, type=type, allow_new_levels=allow_new_levels)
        if newdata is None and isinstance(out, pd.Series):
            # the fitted data: one value per input row, as fitted (NaN where a row was dropped)
            out = self._align(out.to_numpy(), out.name)
        return out

    def predict_subject(self, history, times, **kwargs):
        """Not yet available for MEMoE fits (the conditional law given a history is a posterior-weighted
        mixture of the experts' conditional normals, not one normal); raises. ``predict(newdata,
        kind="subject")`` gives the mixture's mean from a history (rows with a missing response are the
        future rows)."""
        from memoe.errors import MemoeError

        raise MemoeError(
            "predict_subject (SD and intervals of a dynamic prediction) is not available for MEMoE fits yet: the "
            "prediction is a mixture over the experts. Use predict(newdata, kind='subject') for its mean, with "
            "the future rows' response missing"
        )

    def __repr__(self) -> str:
        return (
            f"<MEMoEResult k={self.k} subjects={self.n_subjects} loglik={self.loglik:.4f} "
            f"BIC={self.bic:.2f} converged={self.converged} "
            f"starts with this classification={self.n_same_partition}/{len(self.starts)}>"
        )

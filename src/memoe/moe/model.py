"""The Mixed-Effects Mixture of Experts: ``memoe.MEMoE(formula, gating=..., k=..., data=...)``.

Subject i with baseline covariates w_i belongs to latent expert z_i with
``P(z_i = k | w_i) = softmax_k(w_i' gamma_k)`` (``gamma_1 = 0``); given ``z_i = k``,
``y_i ~ N(X_i beta_k, Z_i G_k Z_i' + sigma_k^2 I)``, a full linear mixed model. Estimation is
multi-start EM with each subject's exact marginal likelihood in the E-step.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from formulaic import model_matrix

from memoe.core.formula.names import r_column_name
from memoe.core.frames import to_pandas
from memoe.errors import ConvergenceWarning, FormulaError
from memoe.moe.data import MoEDesign, build_moe_design
from memoe.moe.experts import GaussianExpert, MStepControl
from memoe.moe.multistart import ORDER_RULES, MultiStartControl, canonical_order, fit_multistart
from memoe.moe.params import MoEParams
from memoe.moe.problem import MoEProblem
from memoe.moe.structure import COV_OPTIONS, SIGMA_OPTIONS, Structure

__all__ = ["MEMoE", "MoE"]

# above this many subject-starts a fit shows a progress bar unless told otherwise
_PROGRESS_WORK = 200_000


class MEMoE:
    """Mixed-Effects Mixture of Experts: a gate of baseline covariates routes subjects to K LMM experts.

    Parameters
    ----------
    formula : str
        lme4 formula of each expert with one grouping factor (the subject),
        e.g. ``"y ~ time + x + (time | id)"``.
    gating : str or None
        One-sided formula of baseline (within-subject constant) covariates, e.g. ``"~ w1 + w2"``.
        None: constant class proportions (a latent-class mixed model, as lcmm's hlme without classmb).
    k : int
        Number of experts; ``k = 1`` is the single LMM fitted by maximum likelihood.
    data : pandas.DataFrame
    mixture : str, optional
        One-sided formula of the class-specific fixed effects (lcmm's ``mixture``), e.g. ``"~ time"``
        (intercept and time class-specific, the other fixed effects shared). Default: all class-specific.
    random_cov : {"class", "common", "proportional"}
        Random-effects covariance per expert, shared, or ``G_k = omega_k^2 G_1`` (lcmm's ``nwg``).
    sigma : {"class", "common"}
        Residual variance per expert or shared.
    group : str, optional
        Subject column when the formula has no random-effects term (regression experts).
    order : {"intercept", "size", None}
        Canonical labelling of the experts after the fit (see
        :func:`memoe.moe.multistart.canonical_order`): by increasing class-specific intercept
        (default), by decreasing size, or as estimated.
    mstep : MStepControl, optional
        Settings of each expert's BOBYQA M-step.

    Examples
    --------
    >>> import memoe
    >>> df, truth = memoe.simulate.memoe_data(200, k=2, seed=3)
    >>> fit = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=df).fit(n_starts=4, seed=1)
    >>> fit.posterior.shape
    (200, 2)
    """

    def __init__(
        self,
        formula: str,
        gating: str | None = None,
        k: int = 2,
        data: pd.DataFrame | None = None,
        *,
        mixture: str | None = None,
        random_cov: str = "class",
        sigma: str = "class",
        group: str | None = None,
        order: str | None = "intercept",
        mstep: MStepControl | None = None,
    ) -> None:
        if data is None:
            raise FormulaError("data must be given")
        data = to_pandas(data, "data")  # polars / pyarrow tables give the numbers of the pandas one
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if random_cov not in COV_OPTIONS:
            raise ValueError(f"random_cov must be one of {COV_OPTIONS}, got {random_cov!r}")
        if sigma not in SIGMA_OPTIONS:
            raise ValueError(f"sigma must be one of {SIGMA_OPTIONS}, got {sigma!r}")
        if order not in ORDER_RULES:
            raise ValueError(f"order must be one of {ORDER_RULES}, got {order!r}")
        self.formula = formula
        self.gating = gating
        self.k = int(k)
        self.mixture = mixture
        self.random_cov = random_cov
        self.sigma_option = sigma
        self.order = order
        self.mdesign: MoEDesign = build_moe_design(formula, data, gating, group)
        md = self.mdesign
        specific = self._specific_mask(mixture, data)
        tmap = md.design.theta_map
        q = md.Z.shape[1]
        self.structure = Structure(
            K=self.k,
            p=md.design.p,
            q=q,
            r=md.W.shape[1],
            specific=specific,
            cov=random_cov if self.k > 1 else "class",
            sigma=sigma if self.k > 1 else "class",
            rows=tmap.row if q else np.zeros(0, dtype=int),
            cols=tmap.col if q else np.zeros(0, dtype=int),
        )
        if mstep is None and self.k == 1:
            # one expert: the M-step is the whole ML fit, so use the LMM's own tight tolerances
            mstep = MStepControl(maxeval=100_000, ftol_abs=1e-12, xtol_abs=1e-10)
        expert = GaussianExpert(md.stats, md.pls, tmap if q else None, mstep)
        self.problem = MoEProblem(md.W, expert, self.structure)

    def _specific_mask(self, mixture: str | None, data: pd.DataFrame) -> np.ndarray:
        names = self.mdesign.fixef_names
        if mixture is None:
            return np.ones(len(names), dtype=bool)
        rhs = mixture.split("~", 1)[-1].strip() or "1"
        try:
            mm = model_matrix(rhs, data.head(50), output="numpy", na_action="ignore")
        except Exception as exc:
            raise FormulaError(f"cannot build the mixture formula {mixture!r}: {exc}") from None
        wanted = [r_column_name(c) for c in mm.model_spec.column_names]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise FormulaError(f"mixture terms {unknown} are not fixed effects of {self.formula!r} (these are {names})")
        return np.array([n in wanted for n in names], dtype=bool)

    # ------------------------------------------------------------------
    @property
    def n_subjects(self) -> int:
        return self.mdesign.N

    def fit(
        self,
        n_starts: int = 20,
        seed: int | None = None,
        *,
        progress: bool | None = None,
        control: MultiStartControl | None = None,
        start: MoEParams | None = None,
        previous=None,
        se: bool = True,
    ):
        """Estimate by multi-start EM.

        Parameters
        ----------
        n_starts : int
            Starting points (k-means on two-stage OLS coefficients, random soft assignments, and
            splits of ``previous``); ignored for k = 1.
        seed : int, optional
            Makes the fit deterministic.
        progress : bool, optional
            tqdm progress bar; default on for long fits.
        control : MultiStartControl, optional
            Exploratory run length, how many runs go to convergence, the EM stopping rule.
        start : MoEParams, optional
            An extra user-supplied start.
        previous : MEMoEResult, optional
            A fit with k - 1 experts on the same data: its posterior seeds "split" starts.
        se : bool
            Compute standard errors now (they are otherwise computed on first use).

        Returns
        -------
        MEMoEResult
        """
        from memoe.moe.result import MEMoEResult

        if progress is None:
            progress = n_starts * self.n_subjects * self.k >= _PROGRESS_WORK
        prev_tau = None
        if previous is not None:
            if previous.k != self.k - 1 or previous.n_subjects != self.n_subjects:
                raise ValueError("previous must be a fit with k - 1 experts on the same subjects")
            prev_tau = previous.posterior.to_numpy()
        ms = fit_multistart(
            self.problem, n_starts, seed, control, previous_tau=prev_tau, start_params=start, progress=progress
        )
        run = ms.best
        order = canonical_order(run.params, run.estep.mass, self.order, self.structure.specific)
        params = run.params.permute(order)
        estep = self.problem.e_step(params)
        result = MEMoEResult(self, params, estep, ms, order)
        # a run stopped by an emptied expert is reported by EmptyExpertWarning instead
        if not result.converged and not result.empty_experts:
            warnings.warn(
                f"EM did not converge: the best start stopped after {result.n_iter} iterations "
                f"(last log-likelihood change {_last_change(result.trace):.3g}); raise control.em.max_iter "
                "or check the model",
                ConvergenceWarning,
                stacklevel=2,
            )
        if se:
            _ = result.inference
        return result

    def __repr__(self) -> str:
        return (
            f"MEMoE({self.formula!r}, gating={self.gating!r}, k={self.k}, subjects={self.n_subjects}, "
            f"random_cov={self.random_cov!r}, sigma={self.sigma_option!r})"
        )


class MoE(MEMoE):
    """Conventional mixture of experts: linear-regression experts with independent errors.

    ``memoe.MoE("y ~ time + x", gating="~ w1 + w2", k=3, data=df, group="id")``: the same gate and EM
    as :class:`MEMoE`, each expert ``y_i ~ N(X_i beta_k, sigma_k^2 I)`` (no random effects), the
    subjects' visits still sharing one latent class.
    """

    def __init__(self, formula: str, gating: str | None = None, k: int = 2, data=None, *, group: str, **kw) -> None:
        if "|" in formula:
            raise FormulaError("MoE experts are regressions: give the formula without (terms | group) parts")
        super().__init__(formula, gating, k, data, group=group, **kw)


def _last_change(trace: list[float]) -> float:
    return float(trace[-1] - trace[-2]) if len(trace) > 1 else float("nan")

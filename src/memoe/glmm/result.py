"""The frozen result of a GLMM fit (lme4's ``glmerMod``); every extractor reads from it."""

from __future__ import annotations

import dataclasses
from functools import cached_property

import numpy as np
import pandas as pd

from memoe.core.result import FitResult, coef_frame
from memoe.core.state import GlmmState, frozen_array
from memoe.errors import ArgumentTypeError
from memoe.glmm.agq import agq_deviance
from memoe.glmm.laplace import laplace_deviance, observed_laplace_deviance
from memoe.glmm.predict import predict_glmm
from memoe.glmm.summary import GlmmSummary
from memoe.lmm.result import ran_pars_frame

__all__ = ["GlmmResult", "vcov_from_hessian"]


def vcov_from_hessian(hessian: np.ndarray | None, ntheta: int) -> np.ndarray | None:
    """lme4's ``calc.vcov.hess``: the beta block of ``solve(H)``, symmetrised as ``h + h'`` (= 2 H^-1).

    The deviance is -2 log L, so the observed information of the likelihood is ``H / 2``.

    Parameters
    ----------
    hessian : numpy.ndarray, shape (ntheta + p, ntheta + p), or None
    ntheta : int

    Returns
    -------
    numpy.ndarray of shape (p, p), or None when H is missing, singular or the block is not
    positive definite.
    """
    if hessian is None:
        return None
    try:
        Hinv = np.linalg.inv(hessian)
    except np.linalg.LinAlgError:
        return None
    h = Hinv[ntheta:, ntheta:]
    v = h + h.T
    if not np.all(np.isfinite(v)) or (len(v) and np.linalg.eigvalsh(v).min() <= 0):
        return None
    return v


class GlmmResult(FitResult):
    """A fitted GLMM (lme4's ``glmerMod``).

    The shared interface (``params``, ``bse``, ``vcov()``, ``confint()``, ``coef_table()``, ``tidy()``,
    ``glance()``, ``augment()``, ``residuals(type=)``, ``save()``) comes from
    :class:`~memoe.core.result.FitResult`.

    Attributes
    ----------
    model : memoe.glmm.model.GLMM
    response_family : memoe.glmm.families.Family
        The response family and link (lme4's ``family(fit)``); ``family`` is the string ``"glmm"``,
        the family of models, as on every result.
    nAGQ : int
    stage1, stage2 : StageResult
        The two optimisations (``stage2`` is None for ``nAGQ = 0``).
    convergence : ConvergenceReport
    hessian : numpy.ndarray or None, shape (ntheta + p, ntheta + p)
        Finite-difference Hessian of the stage-2 deviance at the optimum.
    messages : list of str
    state : GlmmState
        The public fit state: theta, beta, PIRLS at the estimates (conditional modes, eta, mu, working
        weights) and the minimised deviance.

    Examples
    --------
    >>> import memoe
    >>> cbpp = memoe.datasets.load("cbpp")
    >>> fit = memoe.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, "binomial").fit()
    >>> fit.coef_table().attrs["statistic"]
    'z'
    >>> fit.ranef["herd"].shape
    (15, 1)
    """


    family = "glmm"
    robust_types = (None,)
    # lme4's residuals.glmResp types, deviance first (its default)
    residual_types = ("deviance", "pearson", "working", "response")
    confint_methods = ("wald", "profile", "bootstrap")

    def __init__(
        self, model, nAGQ, theta, beta, u_start, stage1, stage2, convergence, hessian, singular, messages,
        nb_hessian=None, laplace: str = "expected",
    ):
        self.model = model
        #: "expected" (lme4) or "observed" (glmmTMB) information in the Laplace approximation
        self.laplace = laplace
        self.design = model.design
        # the response distribution (lme4's family(fit)) as fitted (an estimated NB theta is set in it);
        # `family` is the model family, "glmm"
        self.response_family = model.problem.family
        #: Hessian of the deviance in (theta, beta, log theta_NB) when the NB theta was estimated
        self.nb_hessian = None if nb_hessian is None else np.asarray(nb_hessian, dtype=float)
        self.nAGQ = int(nAGQ)
        self.stage1, self.stage2 = stage1, stage2
        self.opt = stage2.opt if stage2 is not None else (stage1.opt if stage1 is not None else None)
        self.convergence = convergence
        self.hessian = hessian
        self._singular = bool(singular)
        self.messages = list(messages)
        theta = frozen_array(theta)
        problem = model.problem
        if self.nAGQ == 0:
            # beta is part of the conditional modes here (lme4's nAGQ = 0)
            pirls = problem.solve(theta, beta=None)
            beta = pirls.beta
        else:
            pirls = problem.solve(theta, beta=np.asarray(beta, dtype=float).copy(), u0=u_start)
        if not pirls.converged:
            self.messages.append(
                f"PIRLS did not converge at the estimates ({pirls.iterations} iterations): "
                "the conditional modes and the deviance are approximate"
            )
        if self.nAGQ > 1:
            criterion = agq_deviance(problem, pirls, theta, self.nAGQ)
        elif self.laplace == "observed":
            criterion = observed_laplace_deviance(problem, pirls, theta)
        else:
            criterion = laplace_deviance(problem, pirls)
        self.state = GlmmState(
            theta=theta, beta=frozen_array(beta), nAGQ=self.nAGQ, pirls=pirls, criterion=float(criterion)
        )
        # the numeric test only: the labelled DataFrame is built when asked for (~1 ms of pandas per fit)
        if hessian is not None and self._vcov_hessian_array is None:
            self.messages.append(
                "variance-covariance matrix computed from finite-difference Hessian is not positive definite "
                "or contains NA values: falling back to var-cov estimated from RX"
            )

    # ------------------------------------------------------------------ parameters
    @property
    def method(self) -> str:
        if self.nAGQ == 0:
            return "nAGQ=0"
        return "Laplace" if self.nAGQ == 1 else f"AGQ({self.nAGQ})"

    @property
    def converged(self) -> bool:
        return self.convergence.converged

    @property
    def singular(self) -> bool:
        """Boundary (singular) fit: a diagonal entry of a relative covariance factor is below 1e-4
        (lme4's ``isSingular``)."""
        return self._singular

    @property
    def reml(self) -> bool:
        """Always False: GLMMs are fitted by maximum likelihood (lets ``memoe.compare`` run LRTs)."""
        return False

    @cached_property
    def fixef(self) -> pd.Series:
        """Fixed effects, indexed by R's coefficient names."""
        return pd.Series(np.array(self.state.beta), index=self.design.fixef_names, name="estimate")

    @property
    def params(self) -> pd.Series:
        """The fixed effects (:attr:`fixef`)."""
        return self.fixef

    @cached_property
    def theta(self) -> pd.Series:
        """Relative covariance factor entries (lme4's order and names); sigma = 1 for these families."""
        return pd.Series(np.array(self.state.theta), index=self.design.theta_map.names, name="theta")

    @cached_property
    def vcov_rx(self) -> pd.DataFrame:
        """``(R_X' R_X)^-1`` from the weighted PLS factor at the estimates, conditional on theta.

        lme4's ``vcov(fit, use.hessian = FALSE)``.
        """
        st, problem = self.state.pirls, self.model.problem
        z = st.eta - problem.offset + (problem.y - st.mu) / problem.family.mu_eta(st.eta)
        sol = problem.wls_problem(st.w, z, with_beta=True).solve(self.state.theta, reml=False)
        names = self.design.fixef_names
        # lme4's vcov.merMod: sigma^2 (R_X' R_X)^-1, sigma = 1 without a scale
        s2 = self.sigma**2 if self.response_family.has_dispersion else 1.0
        return pd.DataFrame(s2 * sol.vcov_unscaled, index=names, columns=names)

    @cached_property
    def _vcov_hessian_array(self) -> np.ndarray | None:
        """:attr:`vcov_hessian` as an array (None when unavailable)."""
        k, p = self.design.theta_map.size, self.design.p
        if self.laplace == "observed" and self.nb_hessian is not None:
            # glmmTMB: the fixed effects' covariance from the joint Hessian, log theta_NB included
            full = vcov_from_hessian(self.nb_hessian, 0)
            return None if full is None else full[k : k + p, k : k + p]
        return vcov_from_hessian(self.hessian, k)

    @cached_property
    def vcov_hessian(self) -> pd.DataFrame | None:
        """Beta block of ``2 H^-1`` (H the finite-difference Hessian of the deviance in (theta, beta)).

        ``None`` when the Hessian was not computed or is not positive definite.
        """
        v = self._vcov_hessian_array
        if v is None:
            return None
        names = self.design.fixef_names
        return pd.DataFrame(v, index=names, columns=names)

    def _vcov(self, robust: str | None) -> pd.DataFrame:
        """lme4's default covariance of the fixed effects for GLMMs: :attr:`vcov_hessian`, or
        :attr:`vcov_rx` when the Hessian is unavailable or not positive definite (as lme4)."""
        vh = self.vcov_hessian
        return (self.vcov_rx if vh is None else vh).copy()

    @property
    def vcov_source(self) -> str:
        """``"hessian"`` or ``"RX"``: which covariance :meth:`vcov` returns."""
        return "RX" if self.vcov_hessian is None else "hessian"

    def relative_factors(self) -> list[np.ndarray]:
        return self.design.theta_map.lambdas(self.state.theta)

    def term_covariances(self) -> list[np.ndarray]:
        """Covariance matrix of each lme4 random-effects term (sigma = 1)."""
        lambdas = self.relative_factors()
        return [
            lambdas[t.block][t.offset : t.offset + t.q, t.offset : t.offset + t.q]
            @ lambdas[t.block][t.offset : t.offset + t.q, t.offset : t.offset + t.q].T
            for t in self.design.terms
        ]

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """lme4's ``as.data.frame(VarCorr(fit))``: columns ``grp, var1, var2, vcov, sdcor`` (no residual)."""
        rows = []
        for t, cov in zip(self.design.terms, self.term_covariances(), strict=True):
            sd = np.sqrt(np.diag(cov))
            for i, ci in enumerate(t.columns):
                rows.append((t.name, ci, None, cov[i, i], sd[i]))
            for j in range(t.q):
                for i in range(j + 1, t.q):
                    den = sd[i] * sd[j]
                    rows.append((t.name, t.columns[j], t.columns[i], cov[i, j], cov[i, j] / den if den > 0 else np.nan))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    @cached_property
    def varcomp(self):
        """SEs of the SDs and correlations from the (theta, beta) Hessian
        (:func:`memoe.inference.varcomp.glmm_varcomp`); NaN without a Hessian (``nAGQ = 0``)."""
        from memoe.inference.varcomp import glmm_varcomp

        return glmm_varcomp(self)

    def _ran_pars(self) -> pd.DataFrame:
        """broom.mixed's variance parameters with delta-method SEs, Wald z and boundary-aware p-values."""
        from memoe.inference.varcomp import add_varcomp_inference

        return add_varcomp_inference(ran_pars_frame(self.varcorr), self.varcomp)

    def _ran_pars_confint(self, rp: pd.DataFrame, level: float) -> pd.DataFrame:
        """Log-SD / Fisher-z Wald intervals (:func:`memoe.inference.varcomp.varpar_wald_interval`)."""
        from memoe.inference.varcomp import ran_pars_confint

        return ran_pars_confint(rp, level)

    # ------------------------------------------------------------------ intervals and tests
    def profiler(self):
        """A :class:`memoe.glmm.inference.GlmmProfiler` of this fit's deviance."""
        from memoe.glmm.inference import GlmmProfiler

        return GlmmProfiler(self)

    def _confint_other(self, method: str, level: float, parm=None, **kwargs) -> pd.DataFrame:
        """lme4's ``confint.merMod`` for ``"profile"`` (rows ``sd_...|group``, ``cor_...``, fixed effects) and
        ``"bootstrap"`` (parametric, percentile; ``nsim`` default 500, ``seed``, ``progress``); columns
        ``lower``/``upper``. ``parm``: names, positions, ``"theta_"`` or ``"beta_"`` (default all)."""
        from memoe.glmm.inference import glmm_bootstrap
        from memoe.inference.confint import select_parameters
        from memoe.inference.profile import profile_confint

        if method == "profile":
            extra = [k for k in kwargs if k != "progress"]
            if extra:
                raise ArgumentTypeError(f"unexpected arguments for method 'profile': {', '.join(extra)} "
                                        "(accepted: progress)")
            names = select_parameters(self.profiler().names, parm)
            ci = profile_confint(self, level=level, parm=names, **kwargs)
        else:
            boot = glmm_bootstrap(self, **kwargs)
            names = select_parameters(list(boot.estimates.index), parm)
            ci = boot.confint(level=level).loc[names]
        out = pd.DataFrame(ci.to_numpy(dtype=float), index=ci.index, columns=["lower", "upper"])
        out.attrs.update({"level": level, "method": method})
        return out

    def bootstrap(self, nsim: int = 500, seed=None, progress: bool | None = None):
        """Parametric bootstrap replicates (:func:`memoe.glmm.inference.glmm_bootstrap`)."""
        from memoe.glmm.inference import glmm_bootstrap

        return glmm_bootstrap(self, nsim=nsim, seed=seed, progress=progress)

    def test(self, hypothesis, ddf: str = "asymptotic"):
        """Wald test of a linear hypothesis about the fixed effects, e.g. ``fit.test("period2 = 0")`` or
        ``"period2 = period3, period4 = 0"``; a contrast vector/matrix is accepted too.

        ``ddf="asymptotic"``: Wald chi-square (``Chisq`` on ``NumDF`` df; ``F value`` = Chisq / NumDF) with
        :meth:`vcov`, the z test of lme4's summary for one coefficient. See
        :func:`memoe.glmm.inference.glmm_test`.
        """
        from memoe.glmm.inference import glmm_test

        return glmm_test(self, hypothesis, ddf=ddf)

    def anova(self, type: int | str = 3, ddf: str = "asymptotic"):
        """Wald chi-square tests of the fixed-effects terms: type III (marginal, default) or I (sequential);
        see :func:`memoe.glmm.inference.glmm_anova`. Likelihood-ratio tests between nested fits:
        :func:`memoe.compare`."""
        from memoe.glmm.inference import glmm_anova

        return glmm_anova(self, type=type, ddf=ddf)

    def coef(self) -> dict[str, pd.DataFrame]:
        """Subject-specific coefficients on the link scale, lme4's ``coef()``: {grouping factor: levels x
        fixed effects}."""
        from memoe.inference.coefficients import subject_coefficients

        return subject_coefficients(self.fixef, self.ranef)

    def icc(self, by_group: bool = False):
        """Adjusted and conditional ICC on the latent scale (Nakagawa et al. 2017): the residual variance
        is the distribution-specific one (see :mod:`memoe.inference.variance_decomposition`)."""
        from memoe.inference.variance_decomposition import icc

        return icc(self, by_group=by_group)

    def r2(self) -> pd.Series:
        """Nakagawa-Schielzeth marginal and conditional R² on the latent scale."""
        from memoe.inference.variance_decomposition import r2

        return r2(self)

    # ------------------------------------------------------------------ fit statistics
    @property
    def criterion(self) -> float:
        """The minimised objective: Laplace (with normalising constants) or AGQ deviance = -2 logLik."""
        return self.state.criterion

    @property
    def loglik(self) -> float:
        """lme4's ``logLik``. For ``nAGQ > 1`` it omits the family's normalising constants, as lme4."""
        return -0.5 * self.state.criterion

    @property
    def comparable_loglik(self) -> float:
        """The Laplace log-likelihood without R's aic ``+ 2`` of the families with a scale (Gamma, inverse
        Gaussian, Gaussian), so that it compares with a GLM's ``logLik`` (:func:`memoe.compare` uses it);
        equal to :attr:`loglik` for binomial, Poisson and negative binomial."""
        return self.loglik + 0.5 * self.response_family.aic_constant

    @property
    def deviance(self) -> float:
        """lme4's ``deviance(fit)`` for GLMMs: the sum of the squared conditional deviance residuals.

        Not -2 logLik (that is :attr:`criterion`, shown as 'deviance' in :meth:`summary` as lme4 does).
        """
        return float(self.state.pirls.dev_resid.sum())

    @property
    def df_model(self) -> int:
        """Estimated parameters: fixed effects, theta, and the dispersion (Gamma, inverse Gaussian, Gaussian:
        lme4's ``useSc``) or the estimated negative binomial theta (glmmTMB's count)."""
        extra = int(self.response_family.has_dispersion) + int(getattr(self.model, "nb_estimated", False))
        return self.design.p + self.design.theta_map.size + extra

    # ------------------------------------------------------------------ dispersion
    @property
    def sigma(self) -> float:
        """lme4's ``sigma()``: NaN for binomial, Poisson and negative binomial (scale fixed at 1); for the
        families with a scale (Gamma, inverse Gaussian, Gaussian) ``sqrt((sum r_P^2 + ||u||^2) / n)``,
        ``r_P`` the Pearson residuals (lme4 1.1's ``sigmaML`` of a GLMM: penalised weighted RSS over n)."""
        if not self.response_family.has_dispersion:
            return np.nan
        st, problem = self.state.pirls, self.model.problem
        r2 = problem.wt * (problem.y - st.mu) ** 2 / self.response_family.variance(st.mu)
        return float(np.sqrt((r2.sum() + st.sqrL) / self.nobs))

    @property
    def dispersion(self) -> float:
        """The dispersion the Laplace likelihood profiles: ``sum(d_i) / sum(wt)`` at the conditional modes
        (R's ``family$aic``; 1 for binomial, Poisson and negative binomial)."""
        problem, st = self.model.problem, self.state.pirls
        return self.response_family.dispersion_ml(problem.y, st.mu, problem.wt)

    @property
    def family_theta(self) -> float | None:
        """The negative binomial theta (``var = mu + mu^2 / theta``; lme4's ``getME(fit, "glmer.nb.theta")``,
        glmmTMB's ``sigma()``); None for other families."""
        return getattr(self.response_family, "theta", None)

    @property
    def family_theta_se(self) -> pd.Series | None:
        """SEs of ``log(theta)`` (glmmTMB's ``betadisp``) and of ``theta`` (delta method) from the joint
        Hessian of the deviance in (theta, beta, log theta_NB); None when theta was fixed or no Hessian."""
        H = self.nb_hessian
        if H is None or self.family_theta is None:
            return None
        try:
            v = 2.0 * np.linalg.inv(H)[-1, -1]
        except np.linalg.LinAlgError:
            v = np.nan
        se_log = float(np.sqrt(v)) if np.isfinite(v) and v > 0 else np.nan
        return pd.Series({"log_theta": se_log, "theta": self.family_theta * se_log}, name="std_error")

    @property
    def nobs(self) -> int:
        return self.design.n

    @property
    def n_dropped(self) -> int:
        return self.design.frame.n_dropped

    @property
    def ngroups(self) -> pd.Series:
        """Number of levels per grouping factor (lme4's ``ngrps``)."""
        return pd.Series({b.factor.name: b.nlevels for b in self.design.blocks}, name="ngroups", dtype=int)

    # ------------------------------------------------------------------ random effects
    def _per_block_frame(self, arrays: list[np.ndarray]) -> dict[str, pd.DataFrame]:
        return {
            blk.factor.name: pd.DataFrame(
                arr, index=pd.Index(blk.factor.levels, name=blk.factor.name), columns=list(blk.columns)
            )
            for blk, arr in zip(self.design.blocks, arrays, strict=True)
        }

    @cached_property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes per grouping factor: DataFrame levels x terms."""
        problem = self.model.problem
        u = problem.split_u(self.state.pirls.u)
        b = [uk @ lam.T for uk, lam in zip(u, self.relative_factors(), strict=True)]
        return self._per_block_frame(b)

    @cached_property
    def ranef_condvar(self) -> dict[str, np.ndarray]:
        """Conditional covariances ``Lambda (L L')^-1 Lambda'`` per level (lme4's ``condVar``)."""
        st, problem = self.state.pirls, self.model.problem
        beta = self.state.beta
        z = st.eta - problem.offset - problem.X @ beta + (problem.y - st.mu) / problem.family.mu_eta(st.eta)
        pls = problem.wls_problem(st.w, z, with_beta=False)
        sol = dataclasses.replace(pls.solve(self.state.theta, reml=False), sigma=1.0)
        cv = pls.conditional_variances(sol)
        return {blk.factor.name: v for blk, v in zip(self.design.blocks, cv, strict=True)}

    @cached_property
    def ranef_condsd(self) -> dict[str, pd.DataFrame]:
        """Conditional standard deviations of the modes, same layout as ``ranef``."""
        arrays = [np.sqrt(np.diagonal(v, axis1=1, axis2=2)) for v in self.ranef_condvar.values()]
        return self._per_block_frame(arrays)

    # ------------------------------------------------------------------ per-row values
    def _align(self, values: np.ndarray, name: str) -> pd.Series:
        return self.design.frame.align(values, name)

    @property
    def fitted(self) -> pd.Series:
        """Conditional means on the response scale (proportions for binomial), NaN for dropped rows."""
        return self._align(self.state.pirls.mu, "fitted")

    @property
    def linear_predictor(self) -> pd.Series:
        """Conditional linear predictor (with offset), NaN for dropped rows."""
        return self._align(self.state.pirls.eta, "eta")

    @property
    def resid(self) -> pd.Series:
        """Response residuals ``y - mu`` (proportions for binomial), aligned to the input rows.

        lme4's default residuals for GLMMs are the deviance residuals: :meth:`residuals` with no type.
        """
        return self._align(self.model.problem.y - self.state.pirls.mu, "resid")

    def _residuals(self, kind: str) -> pd.Series:
        """lme4's ``residuals(fit, type)`` for ``"deviance"``, ``"pearson"`` and ``"working"``."""
        problem, st = self.model.problem, self.state.pirls
        y, mu, wt = problem.y, st.mu, problem.wt
        if kind == "deviance":
            r = np.sign(y - mu) * np.sqrt(np.maximum(st.dev_resid, 0.0))
        elif kind == "pearson":
            r = (y - mu) * np.sqrt(wt) / np.sqrt(self.response_family.variance(mu))
        else:  # working: the PIRLS working residual on the link scale
            r = (y - mu) / self.response_family.mu_eta(st.eta)
        return self._align(r, f"resid_{kind}")

    @property
    def response_name(self) -> str:
        """The response as written in the formula (the column ``augment(newdata)`` reads)."""
        return self.design.spec.response

    # ------------------------------------------------------------------ tables
    def coef_table(self) -> pd.DataFrame:
        """Wald z tests of the fixed effects (lme4's ``summary`` coefficients).

        Columns ``estimate, std_error, statistic, df, p_value`` (``df`` infinite); ``attrs["statistic"]``
        is ``"z"``.
        """
        return coef_frame(self.fixef, self.bse, self.fixef.index, statistic="z", ddf="asymptotic")

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        re_form: str | None = "full",
        type: str = "response",
        allow_new_levels: bool = False,
        offset=None,
        interval: str | None = None,
        level: float = 0.95,
    ) -> pd.Series | pd.DataFrame:
        """Predictions on the response (default) or link scale; see :func:`memoe.glmm.predict.predict_glmm`.

        Grouping ids are matched by value; a level not seen in the fit raises unless
        ``allow_new_levels=True`` (then its random effects are 0, as lme4).

        ``interval="confidence"`` / ``"prediction"`` returns a DataFrame ``fit, se_fit, lower, upper``:
        the interval is computed on the link scale and transformed to the response scale by the
        inverse link (``se_fit`` stays on the link scale); see
        :func:`memoe.glmm.predict.predict_interval_glmm` for the variances. ``"prediction"`` is for
        the mean of a new group (it adds ``z' G z`` of the random effects left out), not for a new
        observation.
        """
        from memoe.glmm.predict import predict_interval_glmm
        from memoe.inference.prediction import check_interval

        interval, level = check_interval(interval, level)
        if interval is None:
            return predict_glmm(
                self, newdata, re_form=re_form, type=type, allow_new_levels=allow_new_levels, offset=offset
            )
        from memoe.core.design.newdata import check_type

        check_type(type)
        return predict_interval_glmm(self, newdata, re_form, type, interval, level, allow_new_levels, offset)

    def predict_subject(self, history, times, **kwargs):
        """Not available for GLMMs: the conditional distribution of future rows given a history is not
        normal (it needs the posterior of the random effects given the history's counts); raises."""
        from memoe.errors import FamilyError

        raise FamilyError(
            f"predict_subject is defined for Gaussian models (lmm, gls, lme): the {self.response_family} GLMM's "
            "future rows given a history are not normal. Use predict(newdata, re_form='full') for the "
            "subjects of the fit"
        )

    def summary(self):
        """lme4-style ``summary(glmerMod)``; ``print(fit.summary())``, tables in ``.tables``."""
        return GlmmSummary(self)

    def __repr__(self) -> str:
        return (
            f"<GlmmResult {self.response_family} {self.method}: logLik={self.loglik:.4f}, "
            f"fixef={dict(self.fixef.round(4))}, theta={dict(self.theta.round(4))}>"
        )

"""Generalised linear models: ``memoe.glmm("y ~ x", df, family).fit()`` with no random-effects term (R's ``glm``).

The fit is R's ``glm.fit``: iteratively re-weighted least squares from the family's ``mustart``, run by
the GLMM's PIRLS with no random effects (:meth:`memoe.glmm.pirls.PirlsProblem.solve` with an empty
theta). The negative binomial theta, when estimated, maximises the profile log-likelihood (MASS's
``glm.nb``). The result joins the shared interface as a :class:`GlmmResult` without random effects, so
``memoe.compare(glm_fit, glmm_fit, boundary=True)`` tests ``sigma_u^2 = 0`` against the chi-bar-square
mixture ``0.5 chi2(0) + 0.5 chi2(1)``.

Inference as R's ``summary.glm``: ``vcov = phi (X' W X)^-1`` with the Pearson dispersion
``phi = sum(wt (y - mu)^2 / V(mu)) / (n - p)`` for families with a scale (t tests on ``n - p`` df), and
``phi = 1`` for binomial, Poisson and negative binomial (z tests). ``logLik`` is R's ``logLik.glm``: the
family's ``aic`` with the ML dispersion ``deviance / n`` (without the ``+ 2`` that lme4's GLMM deviance
keeps); ``df`` counts the dispersion (and an estimated NB theta).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
from scipy import optimize, special

from memoe.core.optim.checks import ConvergenceReport
from memoe.core.result import coef_frame
from memoe.errors import ConvergenceError, ConvergenceWarning
from memoe.errors import warn as emit_warning
from memoe.glmm.result import GlmmResult

__all__ = ["GlmResult", "fit_glm", "nb_theta_se"]

# R's glm.control(epsilon = 1e-8) stops on the relative deviance change; PIRLS' step criterion is tighter
LOG_THETA_TOL = 1e-10


def nb_theta_se(y: np.ndarray, mu: np.ndarray, wt: np.ndarray, theta: float) -> float:
    """MASS's ``theta.ml`` standard error: ``1 / sqrt(i)``, ``i`` the expected information of theta given mu."""
    i = np.sum(
        wt * (special.polygamma(1, theta) - special.polygamma(1, theta + y) - 1.0 / theta + 2.0 / (mu + theta)
              - (y + theta) / (mu + theta) ** 2)
    )
    return float(1.0 / np.sqrt(i)) if i > 0 else np.nan


def fit_glm(model, control, warn: bool) -> GlmResult:
    """IRLS fit of a model without random effects (see the module notes); ``model`` is a :class:`GLMM`."""
    P = model.problem
    empty = np.zeros(0)
    theta_se = None
    if model.nb_estimated:
        def profile(lt: float) -> float:
            model.set_family_theta(np.exp(lt))
            st = P.solve(empty, beta=None)
            return P.loglik_terms(st.mu)

        # glm.nb alternates theta.ml and IRLS; minimising the profile deviance in log(theta) is the same optimum
        lt0 = np.log(P.family.theta)
        res = optimize.minimize_scalar(
            profile, bracket=(lt0 - 1.0, lt0 + 1.0), method="brent", options={"xtol": LOG_THETA_TOL},
        )
        theta = float(np.exp(np.clip(res.x, -20.0, 20.0)))
        model.set_family_theta(theta)
    state = P.solve(empty, beta=None)
    no_valid = ConvergenceError(
        f"IRLS found no valid coefficients for the {P.family} GLM: the linear predictor leaves the link's "
        "domain from the family's starting means (R's glm: 'no valid set of coefficients has been found'); "
        "try another link (e.g. link='log')"
    )
    if not np.all(np.isfinite(state.beta)):
        raise no_valid
    if model.nb_estimated:
        theta_se = nb_theta_se(P.y, state.mu, P.wt, P.family.theta)
    messages = []
    if not state.converged:
        messages.append(f"glm.fit: algorithm did not converge ({state.iterations} IRLS iterations)")
        if warn:
            emit_warning(messages[-1], ConvergenceWarning)
    report = ConvergenceReport(converged=bool(state.converged), messages=list(messages))
    result = GlmResult(model, state.beta, report, messages, theta_se=theta_se, iterations=state.iterations)
    if not np.isfinite(result.loglik):
        raise no_valid
    return result


class GlmResult(GlmmResult):
    """A fitted GLM (R's ``glm`` / MASS's ``glm.nb``): a :class:`GlmmResult` without random effects.

    Attributes
    ----------
    iterations : int
        IRLS iterations.

    R equivalent
    ------------
    ``stats::glm(cbind(incidence, size - incidence) ~ period, binomial, cbpp)``; ``MASS::glm.nb``.

    Examples
    --------
    >>> import memoe
    >>> cbpp = memoe.datasets.load("cbpp")
    >>> glm = memoe.glmm("cbind(incidence, size - incidence) ~ period", cbpp, "binomial").fit()
    >>> type(glm).__name__, round(glm.loglik, 4)
    ('GlmResult', -99.0292)
    >>> glm.fixef.round(4).tolist()
    [-1.269, -1.1708, -1.3014, -1.7823]
    """

    confint_methods = ("wald", "profile", "bootstrap")

    def __init__(self, model, beta, convergence, messages, theta_se=None, iterations=0):
        super().__init__(
            model=model, nAGQ=1, theta=np.zeros(0), beta=beta, u_start=np.zeros(0), stage1=None, stage2=None,
            convergence=convergence, hessian=None, singular=False, messages=messages,
        )
        self.iterations = int(iterations)
        self._theta_se = theta_se

    @property
    def method(self) -> str:
        return "ML (IRLS)"

    @property
    def loglik(self) -> float:
        """R's ``logLik.glm`` (``-aic/2`` with the ML dispersion, without lme4's ``+ 2``)."""
        return -0.5 * self.state.criterion + 0.5 * self.response_family.aic_constant

    @property
    def comparable_loglik(self) -> float:
        return self.loglik

    @property
    def sigma(self) -> float:
        """R's ``sigma.default`` for a glm: ``sqrt(phi)``, the Pearson dispersion (1 without a scale)."""
        return float(np.sqrt(self.dispersion_pearson))

    @cached_property
    def dispersion_pearson(self) -> float:
        """``summary.glm``'s dispersion: Pearson chi-square / residual df (1 for binomial, Poisson, NB)."""
        if not self.response_family.has_dispersion:
            return 1.0
        P, st = self.model.problem, self.state.pirls
        used = P.wt > 0
        r2 = P.wt * (P.y - st.mu) ** 2 / self.response_family.variance(st.mu)
        return float(r2[used].sum() / (int(used.sum()) - self.design.p))

    @cached_property
    def vcov_fisher(self) -> pd.DataFrame:
        """``(X' W X)^-1`` at the estimates (R's ``summary.glm``'s ``cov.unscaled``)."""
        P, st = self.model.problem, self.state.pirls
        R = np.linalg.qr(P.X * np.sqrt(st.w)[:, None], mode="r")
        Rinv = np.linalg.inv(R)
        names = self.design.fixef_names
        return pd.DataFrame(Rinv @ Rinv.T, index=names, columns=names)

    @property
    def vcov_rx(self) -> pd.DataFrame:
        return self.dispersion_pearson * self.vcov_fisher

    @property
    def vcov_hessian(self):
        return None

    def _vcov(self, robust):
        return self.vcov_rx.copy()

    @property
    def vcov_source(self) -> str:
        return "fisher"

    @property
    def df_resid(self) -> float:
        """R's ``df.residual``: n - p (the dispersion is not counted)."""
        return self.nobs - self.design.p

    def coef_table(self) -> pd.DataFrame:
        """R's ``summary.glm`` coefficients: z tests, or t tests on ``n - p`` df for families with a scale."""
        if self.response_family.has_dispersion:
            return coef_frame(self.fixef, self.bse, self.fixef.index, statistic="t", df=self.df_resid,
                              ddf="residual")
        return coef_frame(self.fixef, self.bse, self.fixef.index, statistic="z", ddf="asymptotic")

    @property
    def family_theta_se(self) -> pd.Series | None:
        """MASS's ``SE.theta`` (and the delta-method SE of log theta) for an estimated NB theta."""
        if self._theta_se is None:
            return None
        th = self.family_theta
        return pd.Series({"log_theta": self._theta_se / th, "theta": self._theta_se}, name="std_error")

    @property
    def null_deviance(self) -> float:
        """Deviance of the intercept-only (offset-only) GLM, R's ``null.deviance``."""
        P = self.model.problem
        fam = self.response_family
        has_int = "(Intercept)" in self.design.fixef_names
        if has_int:
            used = P.wt > 0
            if np.any(P.offset != 0):
                from memoe.glmm.pirls import PirlsProblem

                sub = PirlsProblem.__new__(PirlsProblem)
                sub.__dict__.update(P.__dict__)
                sub.X, sub.p = np.ones((P.n, 1)), 1
                st = sub.solve(np.zeros(0), beta=None)
                mu = st.mu
            else:
                mu = np.full(P.n, np.average(P.y[used], weights=P.wt[used]))
        else:
            mu = fam.linkinv(P.offset)
        return float(fam.dev_resids(P.y, mu, P.wt).sum())

    def summary(self):
        """R's ``summary.glm`` layout (coefficients, dispersion, deviances, AIC); ``.tables`` as for GLMMs."""
        return GlmSummary(self)

    def __repr__(self) -> str:
        return f"<GlmResult {self.response_family}: logLik={self.loglik:.4f}, coef={dict(self.fixef.round(4))}>"


class GlmSummary:
    """R's ``summary.glm`` layout: coefficients, dispersion, null and residual deviance, AIC."""

    def __new__(cls, fit):
        from memoe.glmm.summary import GlmmSummary

        class _GlmSummary(GlmmSummary):
            def text(self) -> str:
                from memoe.core.rformat import SIGNIF_LEGEND, decimals_for, format_pval, format_table, signif_stars

                f = self.fit
                fam = f.response_family
                out = ["Generalized linear model fit by maximum likelihood (IRLS) ['GlmResult']",
                       f" Family: {fam.r_name}  ( {fam.link.name} )", f"Formula: {f.model.formula}"]
                if f.model.data_name:
                    out.append(f"   Data: {f.model.data_name}")
                out.append("")
                ct = f.coef_table()
                stat = "t" if ct.attrs.get("statistic") == "t" else "z"
                dec = decimals_for(ct["std_error"], 4, anchor="min")
                p = ct["p_value"].to_numpy()
                shown = pd.DataFrame(
                    {"Estimate": [f"{v:.{dec}f}" for v in ct["estimate"]],
                     "Std. Error": [f"{v:.{dec}f}" for v in ct["std_error"]],
                     f"{stat} value": [f"{v:.3f}" for v in ct["statistic"]],
                     f"Pr(>|{stat}|)": format_pval(p), "": [c.ljust(3) for c in signif_stars(p)]},
                    index=ct.index,
                )
                out += ["Coefficients:", format_table(shown), "---", SIGNIF_LEGEND, ""]
                if fam.has_dispersion:
                    out.append(f"(Dispersion parameter for {fam.name} family taken to be {f.dispersion_pearson:.6g})")
                else:
                    out.append(f"(Dispersion parameter for {fam.r_name} family taken to be 1)")
                out.append("")
                n_used = int(np.sum(f.model.problem.wt > 0))
                has_int = "(Intercept)" in f.design.fixef_names
                df_null = n_used - int(has_int)
                out.append(f"    Null deviance: {f.null_deviance:.4f}  on {df_null}  degrees of freedom")
                out.append(f"Residual deviance: {f.deviance:.{4}f}  on {int(f.df_resid)}  degrees of freedom")
                out.append(f"AIC: {f.aic:.5g}")
                if f.family_theta is not None and f.family_theta_se is not None:
                    out += ["", f"              Theta:  {f.family_theta:.4g}",
                            f"          Std. Err.:  {f.family_theta_se['theta']:.4g}"]
                out.append("")
                out.append(f"Number of IRLS iterations: {f.iterations}")
                if f.messages:
                    out += ["", *f.messages]
                return "\n".join(out).rstrip() + "\n"

        return _GlmSummary(fit)

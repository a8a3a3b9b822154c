"""lme4's ``summary(glmerMod)`` layout as text."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.core.design.contrasts import contrasts_footer
from memoe.core.rformat import (
    SIGNIF_LEGEND,
    decimals_for,
    fixef_correlation_block,
    format_column,
    format_pval,
    format_table,
    signif_stars,
    varcorr_lines,
)
from memoe.core.summary import Summary, observation_lines

__all__ = ["GlmmSummary", "dispersion_lines"]


def rows_possible(fit) -> bool:
    return bool(fit.design.terms)


def dispersion_lines(fit) -> list[str]:
    """The dispersion of a family with a scale (lme4's ``sigma()`` and the one the Laplace likelihood
    profiles) or the negative binomial theta (with its SE when estimated)."""
    fam = fit.response_family
    if fam.has_dispersion:
        return [
            f"Dispersion: sigma = {fit.sigma:.4g} (lme4's sigma(): sqrt((Pearson RSS + ||u||^2) / n)); "
            f"the Laplace likelihood profiles phi = deviance / n = {fit.dispersion:.4g}"
        ]
    th = fit.family_theta
    if th is None:
        return []
    se = fit.family_theta_se
    if se is None:
        return [f"Negative binomial theta = {th:.4g} (fixed)"]
    return [f"Negative binomial theta = {th:.4g} (SE {se['theta']:.3g}; log(theta) SE {se['log_theta']:.3g})"]


class GlmmSummary(Summary):
    """lme4's ``summary(glmerMod)``: ``str()`` gives the text, :attr:`tables` the DataFrames."""

    def __init__(self, fit) -> None:
        self.fit = fit

    @property
    def coefficients(self) -> pd.DataFrame:
        """The coefficient table (standard columns, z statistics)."""
        return self.fit.coef_table()

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """``coefficients``, ``random_effects`` (lme4's VarCorr data frame), ``ngroups`` and ``fit`` (AIC,
        BIC, logLik, deviance = -2 logLik as lme4 prints it, df_resid)."""
        f = self.fit
        stats = {"AIC": f.aic, "BIC": f.bic, "logLik": f.loglik, "deviance": f.criterion, "df_resid": f.df_resid}
        return {
            "coefficients": self.coefficients,
            "random_effects": f.varcorr,
            "ngroups": f.ngroups.to_frame(),
            "fit": pd.DataFrame([stats]),
        }

    def _header(self) -> list[str]:
        f = self.fit
        if f.nAGQ <= 1:
            how = "Laplace Approximation" if f.nAGQ == 1 else "nAGQ = 0"
        else:
            how = f"Adaptive Gauss-Hermite Quadrature, nAGQ = {f.nAGQ}"
        out = [f"Generalized linear mixed model fit by maximum likelihood ({how}) ['GlmmResult']"]
        out.append(f" Family: {f.response_family.r_name}  ( {f.response_family.link.name} )")
        out.append(f"Formula: {f.model.formula}")
        if f.model.data_name:
            out.append(f"   Data: {f.model.data_name}")
        out.append("")
        tab = pd.DataFrame(
            [[f"{f.aic:.1f}", f"{f.bic:.1f}", f"{f.loglik:.1f}", f"{f.criterion:.1f}", str(f.df_resid)]],
            columns=["AIC", "BIC", "logLik", "deviance", "df.resid"],
        )
        out.append(format_table(tab, index=False))
        out.append("")
        return out

    def _random_effects_block(self) -> list[str]:
        f = self.fit
        covs = f.term_covariances()
        max_q = max([t.q for t in f.design.terms] + [1])
        variances = [c for cov in covs for c in np.diag(cov)]
        # R's format(digits = 4): enough decimals for 4 significant digits of the smallest value
        var_txt = format_column(variances, 4, anchor="min")
        sd_txt = format_column(np.sqrt(variances), 4, anchor="min")
        if not rows_possible(f):
            return [" none (a GLM without random effects)"]
        rows, k = [], 0
        for t, cov in zip(f.design.terms, covs, strict=True):
            sd = np.sqrt(np.diag(cov))
            for i, name in enumerate(t.columns):
                corr = [
                    f"{cov[i, j] / (sd[i] * sd[j]):.2f}" if sd[i] * sd[j] > 0 else "NaN" for j in range(i)
                ]
                rows.append([t.group if i == 0 else "", name, var_txt[k], sd_txt[k], *corr])
                k += 1
        return varcorr_lines(rows, max_q)

    def _fixed_block(self) -> list[str]:
        f = self.fit
        ct = self.coefficients
        dec = decimals_for(ct["std_error"], 4, anchor="min")
        p = ct["p_value"].to_numpy()
        shown = pd.DataFrame(
            {
                "Estimate": [f"{v:.{dec}f}" for v in ct["estimate"]],
                "Std. Error": [f"{v:.{dec}f}" for v in ct["std_error"]],
                "z value": [f"{v:.3f}" for v in ct["statistic"]],
                "Pr(>|z|)": format_pval(p),
                # R prints the codes as a left-justified column ("** " under "***")
                "": [c.ljust(3) for c in signif_stars(p)],
            },
            index=ct.index,
        )
        if f.response_family.has_dispersion:
            # lme4 labels the Wald statistic of a family with a scale "t value" (p-values still normal)
            shown = shown.rename(columns={"z value": "t value"})
        out = ["Fixed effects:", format_table(shown), "---", SIGNIF_LEGEND]
        out += fixef_correlation_block(f.vcov().to_numpy(), list(f.fixef.index))
        return out

    def text(self) -> str:
        f = self.fit
        out = self._header()
        r = f.residuals("pearson").dropna().to_numpy()
        q = np.quantile(r, [0, 0.25, 0.5, 0.75, 1.0])
        out.append("Scaled residuals: ")
        out.append(format_table(pd.DataFrame([[f"{v:.4f}" for v in q]], columns=["Min", "1Q", "Median", "3Q", "Max"]),
                                False))
        out.append("")
        out.append("Random effects:")
        out.extend(self._random_effects_block())
        out.extend(observation_lines(f))
        out.extend(dispersion_lines(f))
        out.append("")
        if len(f.fixef):
            out.extend(self._fixed_block())
        contrasts = contrasts_footer(f.design.fixed.contrasts)
        if contrasts:
            out.append(contrasts)
        if f.design.fixed.dropped:
            out.append(f"fit warnings:\nfixed-effect model matrix is rank deficient so dropping "
                       f"{len(f.design.fixed.dropped)} columns / coefficients: {f.design.fixed.dropped}")
        if f.messages:
            out.append("")
            out.extend(f.messages)
        return "\n".join(out).rstrip() + "\n"

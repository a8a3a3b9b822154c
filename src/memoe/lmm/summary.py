"""lme4's ``summary(merMod)`` layout as text."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.core.design.contrasts import contrasts_footer
from memoe.core.rformat import decimals_for, fixef_correlation_block, format_column, format_table, varcorr_lines
from memoe.core.summary import Summary, observation_lines

__all__ = ["LmmSummary"]


class LmmSummary(Summary):
    """lme4's ``summary(merMod)``: ``str()`` gives the text, :attr:`tables` the DataFrames."""

    def __init__(self, fit) -> None:
        self.fit = fit

    @property
    def coefficients(self) -> pd.DataFrame:
        """The fixed-effects table as lme4 prints it: standard columns, t statistics without df."""
        # lme4 prints no df or p-value; the model-based SE and t = estimate / SE are those of every ddf
        return self.fit.coef_table(ddf="asymptotic")[["estimate", "std_error", "statistic"]]

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """``coefficients`` (estimate, std_error, statistic), ``random_effects`` (lme4's VarCorr data
        frame), ``ngroups`` and ``fit`` (AIC, BIC, logLik, deviance, df_resid or the REML criterion)."""
        f = self.fit
        stats = {"AIC": f.aic, "BIC": f.bic, "logLik": f.loglik, "deviance": f.deviance, "df_resid": f.df_resid}
        if f.reml:
            stats = {"REML": f.deviance}
        return {
            "coefficients": self.coefficients,
            "random_effects": f.varcorr,
            "ngroups": f.ngroups.to_frame(),
            "fit": pd.DataFrame([stats]),
        }

    def _random_effects_block(self) -> list[str]:
        f = self.fit
        rows = []
        covs = f.term_covariances()
        max_q = max([t.q for t in f.design.terms] + [1])
        variances = [c for cov in covs for c in np.diag(cov)] + [f.sigma**2]
        var_txt = format_column(variances, 5)
        sd_txt = format_column(np.sqrt(variances), 5)
        k = 0
        for t, cov in zip(f.design.terms, covs, strict=True):
            sd = np.sqrt(np.diag(cov))
            for i, name in enumerate(t.columns):
                corr = []
                for j in range(i):
                    den = sd[i] * sd[j]
                    corr.append(f"{cov[i, j] / den:.2f}" if den > 0 else "NaN")
                rows.append([t.group if i == 0 else "", name, var_txt[k], sd_txt[k], *corr])
                k += 1
        rows.append(["Residual", "", var_txt[-1], sd_txt[-1]])
        return varcorr_lines(rows, max_q)

    def text(self) -> str:
        f = self.fit
        out = []
        kind = "REML" if f.reml else "maximum likelihood"
        out.append(f"Linear mixed model fit by {kind}  ['LmmResult']")
        out.append(f"Formula: {f.model.formula}")
        if f.model.data_name:
            out.append(f"   Data: {f.model.data_name}")
        # lme4 names the weights= and offset= arguments as written (values given directly: "(weights)")
        d = f.design
        if d.weights_column is not None:
            out.append(f"Weights: {d.weights_column}")
        if d.offset_column is not None:
            out.append(f" Offset: {d.offset_column}")
        out.append("")
        if f.reml:
            out.append(f"REML criterion at convergence: {f.deviance:.1f}")
        else:
            tab = pd.DataFrame(
                [[f"{f.aic:.1f}", f"{f.bic:.1f}", f"{f.loglik:.1f}", f"{f.deviance:.1f}", str(f.df_resid)]],
                columns=["AIC", "BIC", "logLik", "deviance", "df.resid"],
            )
            out.append(format_table(tab, index=False))
        out.append("")
        # lme4: residuals(fit, "pearson", scaled = TRUE), sqrt(w) (y - mu) / sigma with prior weights
        r = f.residuals("pearson").dropna().to_numpy()
        q = np.quantile(r, [0, 0.25, 0.5, 0.75, 1.0])
        out.append("Scaled residuals: ")
        out.append(
            format_table(pd.DataFrame([[f"{v:.4f}" for v in q]], columns=["Min", "1Q", "Median", "3Q", "Max"]), False)
        )
        out.append("")
        out.append("Random effects:")
        out.extend(self._random_effects_block())
        out.extend(observation_lines(f))
        out.append("")
        if len(f.fixef):
            out.append("Fixed effects:")
            ct = self.coefficients
            # printCoefmat: estimates and SEs share decimals set by the smallest SE (4 digits)
            dec = decimals_for(ct["std_error"], 4, anchor="min")
            shown = pd.DataFrame(
                {
                    "Estimate": [f"{v:.{dec}f}" for v in ct["estimate"]],
                    "Std. Error": [f"{v:.{dec}f}" for v in ct["std_error"]],
                    "t value": [f"{v:.3f}" for v in ct["statistic"]],
                },
                index=ct.index,
            )
            out.append(format_table(shown))
            out.extend(fixef_correlation_block(f.vcov().to_numpy(), list(f.fixef.index)))
        contrasts = contrasts_footer(f.design.fixed.contrasts)
        if contrasts:
            out.append(contrasts)
        if f.design.fixed.dropped:
            out.append(f"fit warnings:\nfixed-effect model matrix is rank deficient so dropping "
                       f"{len(f.design.fixed.dropped)} columns / coefficients: {f.design.fixed.dropped}")
        if f.messages:
            out.append("optimizer (nlopt LN_BOBYQA) convergence code: 0 (OK)" if f.converged else "")
            out.extend(f.messages)
        # the approximate (matrix-free) Schur complement states its method and error
        describe = getattr(getattr(getattr(f.model, "problem", None), "sparse", None), "describe", None)
        if describe is not None:
            out.append("Schur complement: " + describe())
        return "\n".join(out).rstrip() + "\n"

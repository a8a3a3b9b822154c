"""nlme's ``print(summary(gls_fit))`` / ``print(summary(lme_fit))`` as a :class:`~memoe.core.summary.Summary`.

``str(fit.summary())`` is nlme's text; ``fit.summary().tables`` the same numbers as DataFrames (the
coefficient table with the standard columns of :func:`memoe.core.result.coef_frame`).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd

from memoe.core.design.contrasts import contrasts_footer
from memoe.core.summary import Summary

__all__ = ["MarginalSummary"]


def _fmt(x: float, digits: int = 7) -> str:
    return f"{x:.{digits}g}"


def _series_block(values: pd.Series, digits: int = 7) -> list[str]:
    """A named vector printed as R does: names on one line, values under them."""
    cells = [(str(k), _fmt(float(v), digits)) for k, v in values.items()]
    width = [max(len(a), len(b)) for a, b in cells]
    return [
        " ".join(a.rjust(w) for (a, _), w in zip(cells, width, strict=True)),
        " ".join(b.rjust(w) for (_, b), w in zip(cells, width, strict=True)),
    ]


def _frame_lines(frame: pd.DataFrame) -> list[str]:
    return frame.to_string().splitlines()


class MarginalSummary(Summary):
    """nlme's summary of a :class:`~memoe.marginal.result.MarginalResult`: ``str()`` gives the text,
    :attr:`tables` the DataFrames.

    Parameters
    ----------
    fit : MarginalResult
    """

    def __init__(self, fit) -> None:
        self.fit = fit

    # ------------------------------------------------------------------ the numbers, computed once
    @cached_property
    def _coef(self) -> pd.DataFrame:
        return self.fit.coef_table()

    @cached_property
    def _fit_stats(self) -> pd.DataFrame:
        f = self.fit
        return pd.DataFrame({"AIC": [f.aic], "BIC": [f.bic], "logLik": [f.loglik]}, index=[""])

    @cached_property
    def _random_sd(self) -> pd.DataFrame | None:
        f = self.fit
        if f.kind != "lme":
            return None
        cols = list(f.ranef_cov.columns)
        sd = np.sqrt(np.diag(f.ranef_cov.to_numpy()))
        return pd.DataFrame([[*list(sd), f.sigma]], index=["StdDev:"], columns=[*cols, "Residual"])

    @cached_property
    def _random_corr(self) -> pd.DataFrame | None:
        f = self.fit
        if f.kind != "lme" or f.ranef_cov.shape[0] < 2:
            return None
        cov = f.ranef_cov.to_numpy()
        sd = np.sqrt(np.diag(cov))
        cols = list(f.ranef_cov.columns)
        return pd.DataFrame(cov / np.outer(sd, sd), index=cols, columns=cols)

    @cached_property
    def _fixef_corr(self) -> pd.DataFrame | None:
        V = self.fit.vcov().to_numpy()
        if V.shape[0] < 2:
            return None
        sd = np.sqrt(np.diag(V))
        names = list(self._coef.index)
        return pd.DataFrame(V / np.outer(sd, sd), index=names, columns=names)

    @cached_property
    def _resid_quantiles(self) -> pd.Series:
        r = self.fit.residuals("pearson").dropna().to_numpy()
        q = np.quantile(r, [0.0, 0.25, 0.5, 0.75, 1.0])
        return pd.Series(q, index=["Min", "Q1", "Med", "Q3", "Max"], name="pearson")

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """``fit`` (AIC, BIC, logLik), ``coefficients`` (columns ``estimate, std_error, statistic, df,
        p_value``), ``fixef_correlation``, ``residuals`` (quantiles of the Pearson residuals) and, where
        the model has them, ``random_effects`` (SDs), ``random_correlation``, ``correlation_structure``
        and ``variance_function`` (parameters on nlme's natural scale)."""
        f = self.fit
        out: dict[str, pd.DataFrame] = {"fit": self._fit_stats.reset_index(drop=True)}
        if self._random_sd is not None:
            out["random_effects"] = self._random_sd.reset_index(drop=True)
        if self._random_corr is not None:
            out["random_correlation"] = self._random_corr
        if len(f.cor_params):
            out["correlation_structure"] = f.cor_params.rename("estimate").to_frame()
        if len(f.var_params):
            out["variance_function"] = f.var_params.rename("estimate").to_frame()
        out["coefficients"] = self._coef.copy()
        if self._fixef_corr is not None:
            out["fixef_correlation"] = self._fixef_corr
        out["residuals"] = self._resid_quantiles.to_frame()
        return out

    # ------------------------------------------------------------------ nlme's text
    def _header(self) -> list[str]:
        f = self.fit
        how = "REML" if f.reml else "maximum likelihood"
        if f.kind == "gls":
            lines = [f"Generalized least squares fit by {how}", f"  Model: {f.model.formula}"]
        else:
            lines = [f"Linear mixed-effects model fit by {how}"]
        name = f.design.frame.data.attrs.get("name")
        if name:
            lines.append(f"  Data: {name}")
        lines += ["  " + s for s in self._fit_stats.to_string(float_format=lambda v: f"{v:.7g}").splitlines()]
        return lines

    def _random(self) -> list[str]:
        f = self.fit
        if self._random_sd is None:
            return []
        grp = f.design.blocks[0].factor.name
        cols = list(f.ranef_cov.columns)
        lhs = " + ".join("1" if c == "(Intercept)" else c for c in cols)
        lines = ["", "Random effects:", f" Formula: ~{lhs} | {grp}"]
        lines += [" " + s for s in self._random_sd.to_string(float_format=lambda v: f"{v:.7g}").splitlines()]
        if self._random_corr is not None:
            lines.append(" Corr (random effects):")
            lines += [" " + s for s in np.round(self._random_corr, 3).to_string().splitlines()]
        return lines

    def _structures(self) -> list[str]:
        f = self.fit
        P = f.model.problem
        lines: list[str] = []
        if P.cor is not None:
            s = P.cor.structure
            lines += ["", f"Correlation Structure: {s.label}", f" Formula: {s.formula(f.model.layout.name)}"]
            lines += [" Parameter estimate(s):", *_series_block(f.cor_params)]
        if P.var is not None:
            _, _, v = P.split(f.params_unconstrained)
            head = ["Variance function:"]
            if type(P.var.function).__name__ == "VarComb":
                head.append(P.var.function.label)
            lines += ["", *head, *P.var.summary_lines(v, _series_block)]
        return lines

    def _coefficients(self) -> list[str]:
        f = self.fit
        ct = self._coef
        out = pd.DataFrame(index=ct.index)
        out["Value"] = ct["estimate"].map(lambda v: f"{v:.7g}")
        out["Std.Error"] = ct["std_error"].map(lambda v: f"{v:.7g}")
        if f.kind == "lme":
            out["DF"] = ct["df"].map(lambda v: f"{v:.0f}")
        out["t-value"] = ct["statistic"].map(lambda v: f"{v:.7g}")
        # nlme prints round(p, 4), not format.pval
        out["p-value"] = ct["p_value"].map(lambda v: f"{v:.4f}")
        head = (
            "Coefficients:" if f.kind == "gls" else f"Fixed effects:  {f.design.spec.response} ~ {f.design.spec.fixed}"
        )
        lines = ["", head, *_frame_lines(out)]
        if self._fixef_corr is not None:
            corr = self._fixef_corr.to_numpy()
            names = list(ct.index)
            c = pd.DataFrame(index=names[1:], columns=names[:-1], dtype=object)
            for i in range(1, len(names)):
                for j in range(len(names) - 1):
                    # + 0.0 turns a rounded -0.000 into 0.000, as R prints it
                    c.iloc[i - 1, j] = f"{round(corr[i, j], 3) + 0.0:.3f}" if j < i else ""
            lines += ["", " Correlation: ", *_frame_lines(c)]
        return lines

    def _residuals(self) -> list[str]:
        title = "Standardized residuals:" if self.fit.kind == "gls" else "Standardized Within-Group Residuals:"
        return ["", title, *_series_block(self._resid_quantiles.rename(None))]

    def _footer(self) -> list[str]:
        f = self.fit
        if f.kind == "gls":
            return [
                "",
                f"Residual standard error: {_fmt(f.sigma, 6)} ",
                f"Degrees of freedom: {f.nobs} total; {f.nobs - f.design.p} residual",
            ]
        return ["", f"Number of Observations: {f.nobs}", f"Number of Groups: {int(f.ngroups.iloc[0])} "]

    def text(self) -> str:
        parts = self._header() + self._random() + self._structures() + self._coefficients()
        parts += self._residuals() + self._footer()
        contrasts = contrasts_footer(self.fit.design.fixed.contrasts)
        if contrasts:
            parts.append(contrasts)
        return "\n".join(parts)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython
        p.text(self.text())

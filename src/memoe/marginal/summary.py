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
    ddf : str
        The coefficient table's method (:meth:`MarginalResult.coef_table`); nlme's by default.
    """

    def __init__(self, fit, ddf: str = "nlme") -> None:
        self.fit = fit
        self.ddf = ddf

    # ------------------------------------------------------------------ the numbers, computed once
    @cached_property
    def _coef(self) -> pd.DataFrame:
        return self.fit.coef_table(ddf=self.ddf)

    @cached_property
    def _fit_stats(self) -> pd.DataFrame:
        f = self.fit
        return pd.DataFrame({"AIC": [f.aic], "BIC": [f.bic], "logLik": [f.loglik]}, index=[""])

    @cached_property
    def _random_levels(self) -> list[tuple[str, pd.DataFrame, pd.DataFrame | None]]:
        """Per grouping level (outermost first): factor, SDs (one row ``StdDev:``) and correlations."""
        f = self.fit
        if f.kind != "lme":
            return []
        out = []
        covs = f.ranef_covs
        for k, (grp, frame) in enumerate(covs.items()):
            cov = frame.to_numpy()
            cols = list(frame.columns)
            sd = np.sqrt(np.diag(cov))
            last = k == len(covs) - 1
            # nlme prints the residual SD next to the innermost level's SDs
            sd_frame = pd.DataFrame(
                [[*list(sd), f.sigma]] if last else [list(sd)],
                index=["StdDev:"],
                columns=[*cols, "Residual"] if last else cols,
            )
            corr = pd.DataFrame(cov / np.outer(sd, sd), index=cols, columns=cols) if len(cols) > 1 else None
            out.append((grp, sd_frame, corr))
        return out

    @cached_property
    def _random_sd(self) -> pd.DataFrame | None:
        """SDs of every level's random effects and the residual SD, one row ``StdDev:``; columns
        ``<factor>: <term>`` when there are several levels."""
        levels = self._random_levels
        if not levels:
            return None
        if len(levels) == 1:
            return levels[0][1]
        parts = []
        for grp, sd, _ in levels:
            parts.append(sd.rename(columns=lambda c, g=grp: c if c == "Residual" else f"{g}: {c}"))
        return pd.concat(parts, axis=1)

    @cached_property
    def _random_corr(self) -> pd.DataFrame | None:
        levels = self._random_levels
        if len(levels) != 1:
            # several levels: one correlation table per level (see tables["random_correlation_<factor>"])
            return None
        return levels[0][2]

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
        if len(self._random_levels) > 1:
            for grp, _, corr in self._random_levels:
                if corr is not None:
                    out[f"random_correlation_{grp}"] = corr
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
        """nlme's "Random effects:" block: one ``Formula: ~terms | group`` per level, outermost first;
        inner levels are written ``Side %in% Dog`` as nlme does."""
        levels = self._random_levels
        if not levels:
            return []
        lines = ["", "Random effects:"]
        for k, ((_, sd, corr), label) in enumerate(zip(levels, self._level_labels(), strict=True)):
            cols = [c for c in sd.columns if c != "Residual"]
            lhs = " + ".join("1" if c == "(Intercept)" else c for c in cols)
            if k:
                lines.append("")
            lines.append(f" Formula: ~{lhs} | {label}")
            if len(levels) > 1 and corr is not None:
                lines.append(" Structure: General positive-definite, Log-Cholesky parametrization")
            lines += [" " + s for s in sd.to_string(float_format=lambda v: f"{v:.7g}").splitlines()]
            if corr is not None:
                lines.append(" Corr (random effects):")
                lines += [" " + s for s in np.round(corr, 3).to_string().splitlines()]
        return lines

    def _structures(self) -> list[str]:
        f = self.fit
        P = f.model.problem
        lines: list[str] = []
        if P.cor is not None:
            s = P.cor.structure
            lines += ["", f"Correlation Structure: {s.label}", f" Formula: {s.formula(self._structure_group())}"]
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
        if f.kind == "lme" or self.ddf != "nlme":
            # nlme prints integer containment df; the approximate methods' df are fractional
            out["DF"] = ct["df"].map(lambda v: f"{v:.0f}" if self.ddf == "nlme" else f"{v:.4g}")
        out["t-value"] = ct["statistic"].map(lambda v: f"{v:.7g}")
        # nlme prints round(p, 4), not format.pval
        out["p-value"] = ct["p_value"].map(lambda v: f"{v:.4f}")
        head = (
            "Coefficients:" if f.kind == "gls" else f"Fixed effects:  {f.design.spec.response} ~ {f.design.spec.fixed}"
        )
        lines = ["", head, *_frame_lines(out)]
        if self.ddf != "nlme":
            lines.append(f" (standard errors and df: {self.ddf})")
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
        if len(f.ngroups) > 1:
            # nlme: "Number of Groups:" then the counts per level under their labels
            counts = pd.Series(f.ngroups.to_numpy(), index=self._level_labels())
            return ["", f"Number of Observations: {f.nobs}", "Number of Groups: ", *_series_block(counts)]
        return ["", f"Number of Observations: {f.nobs}", f"Number of Groups: {int(f.ngroups.iloc[0])} "]

    def _structure_group(self) -> str | None:
        """The groups of the residual structure as nlme writes them: ``Dog/Side`` for nested levels."""
        f = self.fit
        if not f.nested:
            return f.model.layout.name
        seen: list[str] = []
        for grp in f.level_names:
            parts = grp.split(":")
            seen.append(":".join(p for p in parts if p not in seen) or grp)
        return "/".join(seen)

    def _level_labels(self) -> list[str]:
        """nlme's level labels: ``Dog``, ``Side %in% Dog``, ``c %in% b %in% a`` (the factor's own part,
        then the levels that contain it, innermost first); from the interaction names ``Dog:Side``."""
        out: list[str] = []
        seen: list[str] = []  # own parts of the levels so far, outermost first
        for grp in self.fit.level_names:
            parts = grp.split(":")
            own = ":".join(p for p in parts if p not in seen) or grp
            out.append(" %in% ".join([own, *reversed(seen)]))
            seen.append(own)
        return out

    def text(self) -> str:
        parts = self._header() + self._random() + self._structures() + self._coefficients()
        parts += self._residuals() + self._footer()
        contrasts = contrasts_footer(self.fit.design.fixed.contrasts)
        if contrasts:
            parts.append(contrasts)
        return "\n".join(parts)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython
        p.text(self.text())

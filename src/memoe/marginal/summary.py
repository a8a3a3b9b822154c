"""Text summary laid out as nlme's ``print(summary(gls_fit))`` / ``print(summary(lme_fit))``."""

from __future__ import annotations

import numpy as np
import pandas as pd

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


class MarginalSummary:
    """nlme's summary print of a :class:`~memoe.marginal.result.MarginalResult`; ``str()`` gives the text."""

    def __init__(self, fit) -> None:
        self.fit = fit

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
        stats = pd.DataFrame({"AIC": [f.aic], "BIC": [f.bic], "logLik": [f.loglik]}, index=[""])
        lines += ["  " + s for s in stats.to_string(float_format=lambda v: f"{v:.7g}").splitlines()]
        return lines

    def _random(self) -> list[str]:
        f = self.fit
        if f.kind != "lme":
            return []
        grp = f.design.blocks[0].factor.name
        cols = list(f.ranef_cov.columns)
        lhs = " + ".join("1" if c == "(Intercept)" else c for c in cols)
        sd = np.sqrt(np.diag(f.ranef_cov.to_numpy()))
        table = pd.DataFrame([[*list(sd), f.sigma]], index=["StdDev:"], columns=[*cols, "Residual"])
        lines = ["", "Random effects:", f" Formula: ~{lhs} | {grp}"]
        lines += [" " + s for s in table.to_string(float_format=lambda v: f"{v:.7g}").splitlines()]
        if len(cols) > 1:
            cov = f.ranef_cov.to_numpy()
            corr = cov / np.outer(sd, sd)
            lines.append(" Corr (random effects):")
            c = pd.DataFrame(np.round(corr, 3), index=cols, columns=cols)
            lines += [" " + s for s in c.to_string().splitlines()]
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
            v = P.var.function
            lines += ["", "Variance function:", f" Structure: {v.label}", f" Formula: {v.formula()}"]
            lines += [" Parameter estimates:", *_series_block(f.var_params)]
        return lines

    def _coefficients(self) -> list[str]:
        f = self.fit
        ct = f.coef_table()
        out = pd.DataFrame(index=ct.index)
        out["Value"] = ct["Estimate"].map(lambda v: f"{v:.7g}")
        out["Std.Error"] = ct["Std.Error"].map(lambda v: f"{v:.7g}")
        if f.kind == "lme":
            out["DF"] = ct["df"].map(lambda v: f"{v:.0f}")
        out["t-value"] = ct["t-value"].map(lambda v: f"{v:.7g}")
        out["p-value"] = ct["p-value"].map(lambda v: f"{v:.4f}")
        head = (
            "Coefficients:" if f.kind == "gls" else f"Fixed effects:  {f.design.spec.response} ~ {f.design.spec.fixed}"
        )
        lines = ["", head, *_frame_lines(out)]
        V = f.vcov.to_numpy()
        if V.shape[0] > 1:
            sd = np.sqrt(np.diag(V))
            corr = V / np.outer(sd, sd)
            names = list(ct.index)
            c = pd.DataFrame(index=names[1:], columns=names[:-1], dtype=object)
            for i in range(1, len(names)):
                for j in range(len(names) - 1):
                    # + 0.0 turns a rounded -0.000 into 0.000, as R prints it
                    c.iloc[i - 1, j] = f"{round(corr[i, j], 3) + 0.0:.3f}" if j < i else ""
            lines += ["", " Correlation: ", *_frame_lines(c)]
        return lines

    def _residuals(self) -> list[str]:
        f = self.fit
        r = f.resid_pearson.dropna().to_numpy()
        q = np.quantile(r, [0.0, 0.25, 0.5, 0.75, 1.0])
        title = "Standardized residuals:" if f.kind == "gls" else "Standardized Within-Group Residuals:"
        return ["", title, *_series_block(pd.Series(q, index=["Min", "Q1", "Med", "Q3", "Max"]))]

    def _footer(self) -> list[str]:
        f = self.fit
        if f.kind == "gls":
            return [
                "",
                f"Residual standard error: {_fmt(f.sigma, 6)} ",
                f"Degrees of freedom: {f.nobs} total; {f.nobs - f.design.p} residual",
            ]
        return ["", f"Number of Observations: {f.nobs}", f"Number of Groups: {f.ngroups} "]

    def __str__(self) -> str:
        parts = self._header() + self._random() + self._structures() + self._coefficients()
        parts += self._residuals() + self._footer()
        return "\n".join(parts)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython
        p.text(str(self))

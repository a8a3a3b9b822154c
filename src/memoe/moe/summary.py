"""Printed summary of a MEMoE fit: criteria, multi-start record, gate, each expert's LMM, class table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.core.design.contrasts import contrasts_footer
from memoe.core.summary import Summary

__all__ = ["MEMoESummary"]


def _fmt_table(df: pd.DataFrame, digits: int = 4) -> str:
    def f(x):
        if isinstance(x, float | np.floating):
            if np.isnan(x):
                return ""
            return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
        return str(x)

    return df.map(f).to_string()


def _structures_line(model) -> str:
    """nlme's ``Correlation Structure`` / ``Variance function`` names and formulas of a structured MEMoE."""
    parts = []
    if model.correlation is not None:
        c = model.correlation
        parts.append(f"correlation {c.label} ({c.formula(model.mdesign.group)})")
    if model.weights is not None:
        parts.append(f"variance {type(model.weights).__name__} ({model.weights.formula()})")
    return "; ".join(parts)


class MEMoESummary(Summary):
    """Summary of a :class:`~memoe.moe.result.MEMoEResult`: ``str()`` the text, :attr:`tables` the DataFrames.

    The printed table of each part has model-based and sandwich SEs and robust Wald z, p and 95% CI,
    read from the fit's standard outputs (:meth:`~memoe.moe.result.MEMoEResult.coef_table` with
    ``robust=None`` and ``"sandwich"``, and :meth:`~memoe.core.result.FitResult.confint`).

    Attributes
    ----------
    table : pandas.DataFrame
        Every parameter, index ``(part, expert, term)``: ``estimate, se_model, se_robust, z, p,
        lower 95%, upper 95%``.
    criteria : pandas.Series
    gating : pandas.DataFrame
        Gating coefficients (experts 2..K against expert 1) with model-based and robust SEs.
    experts : dict of int -> pandas.DataFrame
        Each expert's fixed effects, random-effect SDs / correlations and residual SD.
    classification : pandas.DataFrame
    """

    def __init__(self, fit) -> None:
        self.fit = fit
        model = fit.coef_table()
        robust = fit.coef_table(robust="sandwich")
        ci = fit.confint(0.95, robust="sandwich")
        tab = pd.DataFrame(
            {
                "estimate": model["estimate"].to_numpy(),
                "se_model": model["std_error"].to_numpy(),
                "se_robust": robust["std_error"].to_numpy(),
                "z": robust["statistic"].to_numpy(),
                "p": robust["p_value"].to_numpy(),
                "lower 95%": ci["lower"].to_numpy(),
                "upper 95%": ci["upper"].to_numpy(),
            },
            index=fit._natural_index,
        )
        self.table = tab
        self._coef = model
        self._coef_robust = robust
        self.criteria = fit.criteria()
        parts = tab.index.get_level_values("part")
        self.gating = tab[parts == "gating"].droplevel("part")
        self.experts = {
            k: tab[(parts != "gating") & (tab.index.get_level_values("expert") == k)].droplevel("expert")
            for k in range(1, fit.k + 1)
        }
        self.classification = fit.classification_table()

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """``criteria`` (one row), ``coefficients`` and ``coefficients_robust`` (standard columns
        ``estimate, std_error, statistic, df, p_value``, rows ``part[expert]:term``), ``gating`` and
        ``expert_<k>`` (the printed tables) and ``classification``."""
        out = {
            "criteria": self.criteria.to_frame().T.reset_index(drop=True),
            "coefficients": self._coef,
            "coefficients_robust": self._coef_robust,
        }
        if self.fit.k > 1:
            out["gating"] = self.gating
        out.update({f"expert_{k}": t for k, t in self.experts.items()})
        out["classification"] = self.classification
        return out

    def text(self) -> str:
        return self._text()

    def _text(self) -> str:
        fit = self.fit
        m = fit.model
        st = m.structure
        link = fit.response_family.link.name if fit.response_family is not None else "identity"
        method = (
            "maximum likelihood (EM)" if fit.nAGQ is None
            else f"maximum likelihood ({fit.estimation})"
        )
        lines = [
            f"Mixed-Effects Mixture of Experts fit by {method}",
            *([f" Family: {fit.family_name} ( {link} )"] if fit.nAGQ is not None else []),
            f" Formula: {m.formula}",
            f" Gating: {m.gating if m.gating is not None else 'none (constant class proportions)'}",
            f" Experts: {fit.k}; random-effects covariance: {st.cov}; "
            f"residual variance: {st.sigma if st.dispersion else 'none'}; "
            f"class-specific fixed effects: "
            f"{', '.join(n for n, s in zip(m.mdesign.fixef_names, st.specific, strict=True) if s) or 'none'}",
            *([f" Residual structures (each expert its own): {_structures_line(m)}"] if getattr(m, "structured", False)
              else []),
            f" Subjects: {fit.n_subjects}; observations: {fit.nobs}"
            + (f" ({fit.n_dropped} rows deleted due to missingness)" if fit.n_dropped else ""),
            "",
            " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in self.criteria.items()),
            f"EM: {fit.n_iter} iterations, converged={fit.converged}; max |score| {fit.inference.score_norm:.2e}",
            f"Starts: {len(fit.starts)}; {fit.n_same_partition} ended with the selected classification (>= 99% "
            f"MAP agreement), {fit.n_at_best} within 1e-3 of the best log-likelihood ({fit.n_polished} continued "
            "to convergence, the others stopped after their short run)",
        ]
        if fit.empty_experts:
            lines.append(f"WARNING: expert(s) {fit.empty_experts} emptied during EM")
        if fit.k > 1:
            lines += ["", "Gating (multinomial logit, reference expert 1):", _fmt_table(self.gating)]
        for k, t in self.experts.items():
            share = float(fit.posterior[k].mean())
            lines += ["", f"Expert {k} (posterior share {share:.3f}):", _fmt_table(t)]
        lines += [
            "",
            "SEs: se_model = inverse observed information; se_robust = sandwich A^-1 B A^-1 (z, p, CI robust).",
        ]
        if fit.k > 1:
            lines += ["", "Posterior classification (rows: MAP class):", _fmt_table(self.classification)]
        contrasts = contrasts_footer(m.contrasts)
        if contrasts:
            lines += ["", contrasts]
        return "\n".join(lines)

"""``fit.plot``: the diagnostic and prediction figures of every fitted model.

Every method returns a :class:`matplotlib.figure.Figure` (made without pyplot, never shown; save it with
``fig.savefig("file.png")`` or let a notebook display it). A figure that does not apply to the fit's
family (e.g. random-effect plots of a GEE) raises a :class:`~memoe.errors.MemoeError` saying why.

Large data stay readable: marks get fainter as their number grows (``alpha``), and ``max_subjects`` /
``max_groups`` / ``max_points`` draw a random (``seed``) or evenly thinned subset.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from memoe.errors import ArgumentError, MemoeError
from memoe.plot._backend import (
    auto_alpha,
    bold,
    check_max,
    colors,
    new_figure,
    normal_quantiles,
    sample_indices,
    subject_segments,
)
from memoe.plot._view import FitView

__all__ = ["PlotAccessor"]

_FIGURES = (
    "residuals",
    "qq",
    "ranef_qq",
    "caterpillar",
    "shrinkage",
    "trajectories",
    "variance_components",
    "predictions",
    "posterior",
    "gate_effects",
)
_SMOOTH_POINTS = 5000  # lowess on at most this many points: it is O(n^2 frac) and the curve is stable long before


def _qq_line(ax, sample: np.ndarray, theo: np.ndarray) -> None:
    """R's ``qqline``: the line through the first and third quartiles."""
    q = np.quantile(sample, [0.25, 0.75])
    from scipy import stats

    t = stats.norm.ppf([0.25, 0.75])
    slope = (q[1] - q[0]) / (t[1] - t[0])
    ax.axline((t[0], q[0]), slope=slope if np.isfinite(slope) else 0.0, color="C3", lw=1.2)


def _thin_sorted(values: np.ndarray, max_points: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and their normal quantiles, evenly thinned over the order statistics (keeps the tails)."""
    v = np.sort(values[np.isfinite(values)])
    theo = normal_quantiles(len(v))
    if max_points is not None and len(v) > max_points:
        idx = np.unique(np.linspace(0, len(v) - 1, max_points).round().astype(int))
        v, theo = v[idx], theo[idx]
    return v, theo


def _interval_columns(pred) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Estimate, lower and upper from what ``predict(..., interval=...)`` returned (Series or DataFrame)."""
    if isinstance(pred, pd.Series):
        return pred.to_numpy(dtype=float), None, None
    cols = {c.lower(): c for c in pred.columns}
    est = next((cols[c] for c in ("fit", "estimate", "predicted", "prediction", "mean") if c in cols), pred.columns[0])
    lo = next((cols[c] for c in ("lower", "lwr", "conf_low", "pi_lower", "ci_lower") if c in cols), None)
    hi = next((cols[c] for c in ("upper", "upr", "conf_high", "pi_upper", "ci_upper") if c in cols), None)
    as_array = lambda c: None if c is None else pred[c].to_numpy(dtype=float)  # noqa: E731
    return as_array(est), as_array(lo), as_array(hi)


class PlotAccessor:
    """The figures of one fit: ``fit.plot.residuals()``, ``fit.plot.qq()``, ...

    Parameters
    ----------
    fit : FitResult
        Any fitted model (LMM, GLMM, gls, lme, GEE, MEMoE, MoE).

    Examples
    --------
    >>> import memoe
    >>> fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).fit()
    >>> "caterpillar" in fit.plot.available()
    True
    >>> fig = fit.plot.residuals()       # a matplotlib Figure; fig.savefig("residuals.png")
    """

    def __init__(self, fit) -> None:
        self._fit = fit
        self._view = FitView(fit)

    def __repr__(self) -> str:
        return f"<PlotAccessor of {type(self._fit).__name__}: {', '.join(self.available())}>"

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_FIGURES))

    def available(self) -> list[str]:
        """Names of the figures that apply to this fit."""
        v = self._view
        out = ["residuals", "qq", "trajectories", "predictions"]
        if v.has_ranef():
            out += ["ranef_qq"]
            if v.family != "memoe":
                out += ["caterpillar", "variance_components"]
            if v.family in ("lmm", "lme"):
                out += ["shrinkage"]
        if v.family in ("memoe", "moe"):
            out += ["posterior"]
            if self._fit.model.mdesign.gating_vars:
                out += ["gate_effects"]
        return [f for f in _FIGURES if f in out]

    # ------------------------------------------------------------------ residual diagnostics
    def residuals(
        self,
        type: str | None = None,
        by: str | None = None,
        smoother: bool = True,
        max_points: int | None = None,
        seed: int = 0,
        alpha: float | None = None,
        ax=None,
    ):
        """Residuals against fitted values with a lowess smoother (statsmodels) and the zero line.

        Parameters
        ----------
        type : str, optional
            A residual type of the fit (``fit.residual_types``); default response residuals (Pearson for
            GLMM and GEE).
        by : str, optional
            A column of the data to colour the points by (e.g. the treatment group).
        smoother : bool
            Draw the lowess curve (on at most 5,000 randomly chosen points).
        max_points : int, optional
            Draw at most this many randomly chosen points (all by default; they are rasterized).
        seed : int
            Chooses the points drawn and smoothed.
        alpha : float, optional
            Point transparency (default from the number of points).
        ax : matplotlib Axes, optional

        Returns
        -------
        matplotlib.figure.Figure
        """
        v = self._view
        max_points = check_max(max_points, "max_points")
        r, label = v.residuals(type)
        f = v.fitted
        ok = np.flatnonzero(np.isfinite(r) & np.isfinite(f))
        shown = ok[sample_indices(len(ok), max_points, seed)]
        fig, axes = new_figure(ax=ax)
        a = axes[0, 0]
        alpha = auto_alpha(len(shown)) if alpha is None else float(alpha)
        if by is None:
            a.scatter(f[shown], r[shown], s=8, alpha=alpha, color="C0", rasterized=True, linewidths=0)
        else:
            col = v.column(by, "by").to_numpy()[shown]
            for i, level in enumerate(pd.unique(col)):
                m = col == level
                a.scatter(f[shown][m], r[shown][m], s=8, alpha=alpha, color=colors()[i % len(colors())],
                          rasterized=True, linewidths=0, label=str(level))
            a.legend(title=by, markerscale=2)
        a.axhline(0.0, color="0.3", lw=0.8, label="_zero")
        if smoother and len(ok) > 3:
            from statsmodels.nonparametric.smoothers_lowess import lowess

            pts = ok[sample_indices(len(ok), _SMOOTH_POINTS, seed)]
            span = float(np.ptp(f[pts])) or 1.0
            curve = lowess(r[pts], f[pts], frac=2.0 / 3.0, it=3, delta=0.01 * span, return_sorted=True)
            a.plot(curve[:, 0], curve[:, 1], color="C3", lw=2, label="lowess")
        a.set_xlabel(f"fitted {v.response}")
        a.set_ylabel(label)
        a.set_title(f"Residuals vs fitted: {v.formula}", fontsize=10)
        return fig

    def qq(self, type: str | None = None, max_points: int | None = 5000, ax=None):
        """Normal QQ plot of the residuals with R's ``qqline``.

        ``type`` defaults to the residuals that are N(0, 1) under the model where the family has them
        (Pearson for LMM, normalized for gls / lme, deviance for GLMM). ``max_points`` thins the order
        statistics evenly (the tails are kept).
        """
        v = self._view
        max_points = check_max(max_points, "max_points")
        r, label = v.residuals(type, qq=True)
        sample, theo = _thin_sorted(r, max_points)
        fig, axes = new_figure(figsize=(5.5, 5.0), ax=ax)
        a = axes[0, 0]
        a.scatter(theo, sample, s=8, alpha=auto_alpha(len(sample)), color="C0", rasterized=True, linewidths=0)
        _qq_line(a, sample, theo)
        a.set_xlabel("standard normal quantile")
        a.set_ylabel(f"{label} of {v.response}")
        a.set_title(f"Normal QQ plot of {label}s", fontsize=10)
        return fig

    # ------------------------------------------------------------------ random effects
    def _ranef_panels(self) -> list[tuple[str, str, pd.Series]]:
        out = []
        for factor, frame in self._view.ranef().items():
            for col in frame.columns:
                out.append((factor, col, frame[col]))
        return out

    def ranef_qq(self, max_points: int | None = 5000):
        """Normal QQ plot of the predicted random effects (BLUPs), one panel per term and grouping factor.

        For a MEMoE the posterior-weighted BLUPs (``fit.ranef_posterior``).
        """
        v = self._view
        v.require_ranef("ranef_qq")
        max_points = check_max(max_points, "max_points")
        panels = self._ranef_panels()
        ncols = min(3, len(panels))
        nrows = -(-len(panels) // ncols)
        fig, axes = new_figure(nrows, ncols, figsize=(4.2 * ncols, 3.8 * nrows))
        for a, (factor, col, values) in zip(axes.flat, panels, strict=False):
            sample, theo = _thin_sorted(values.to_numpy(dtype=float), max_points)
            a.scatter(theo, sample, s=10, alpha=auto_alpha(len(sample)), color="C0", linewidths=0)
            _qq_line(a, sample, theo)
            a.set_xlabel("standard normal quantile")
            a.set_ylabel(f"BLUP of {col}")
            a.set_title(f"{col} | {factor}", fontsize=10)
        for a in list(axes.flat)[len(panels):]:
            a.set_visible(False)
        fig.suptitle("QQ plots of the predicted random effects")
        return fig

    def caterpillar(self, level: float = 0.95, max_groups: int | None = 100, seed: int = 0):
        """BLUPs sorted, with conditional intervals ``BLUP +- z * condSD`` (lme4's ``dotplot(ranef(condVar=TRUE))``).

        One panel per grouping factor and term; ``max_groups`` draws a random subset of the groups.
        """
        from memoe.core.arguments import check_level

        v = self._view
        v.require_ranef("caterpillar")
        if v.family == "memoe":
            raise MemoeError(
                "caterpillar does not apply to a MEMoE: its BLUPs are per expert (fit.ranef[k], fit.ranef_condsd[k]) "
                "and a subject's random effect is a mixture over the experts"
            )
        level = check_level(level)
        max_groups = check_max(max_groups, "max_groups")
        from scipy import stats

        z = stats.norm.ppf(0.5 + level / 2.0)
        condsd = self._fit.ranef_condsd
        panels = self._ranef_panels()
        ncols = min(3, len(panels))
        nrows = -(-len(panels) // ncols)
        fig, axes = new_figure(nrows, ncols, figsize=(4.2 * ncols, 5.0 * nrows))
        for a, (factor, col, values) in zip(axes.flat, panels, strict=False):
            idx = sample_indices(len(values), max_groups, seed)
            est = values.to_numpy(dtype=float)[idx]
            sd = condsd[factor][col].to_numpy(dtype=float)[idx]
            labels = values.index[idx]
            order = np.argsort(est, kind="stable")
            est, sd, labels = est[order], sd[order], labels[order]
            pos = np.arange(len(est))
            a.hlines(pos, est - z * sd, est + z * sd, color="C0", lw=1.0, alpha=max(auto_alpha(len(est)), 0.4))
            a.plot(est, pos, "o", color="C0", ms=3)
            a.axvline(0.0, color="0.3", lw=0.8)
            if len(pos) <= 40:
                a.set_yticks(pos, [str(s) for s in labels], fontsize=7)
            else:
                a.set_yticks([])
            a.set_xlabel(f"BLUP of {col} ({100 * level:g}% conditional interval)")
            a.set_ylabel(factor)
            shown = "" if len(idx) == len(values) else f" ({len(idx)} of {len(values)} groups)"
            a.set_title(f"{col} | {factor}{shown}", fontsize=10)
        for a in list(axes.flat)[len(panels):]:
            a.set_visible(False)
        fig.suptitle("Predicted random effects")
        return fig

    def shrinkage(self, factor: str | None = None, terms: list[str] | None = None, max_groups: int | None = 300,
                  seed: int = 0, ax=None):
        """Per-group OLS estimates against the BLUPs, an arrow from each to the other, marker size by group size.

        The OLS estimate of a group regresses its marginal residuals ``y - X beta`` on its random-effects
        columns (all groups at once from per-group cross-products); the BLUP pulls it towards the
        population, more for small or noisy groups. Where a random-effects column is also a fixed
        effect the population value is added, so both are the group's own coefficient. One random-effects
        column: OLS (left) and BLUP (right) on one axis; two or more: the plane of ``terms`` (default the
        first two). Groups whose OLS fit is not identified (fewer rows than columns) are left out.
        """
        v = self._view
        v.require_ranef("shrinkage")
        if v.family not in ("lmm", "lme"):
            raise MemoeError(
                f"shrinkage does not apply to a {v.family} fit: the per-group OLS estimates it compares the BLUPs "
                "with exist for a Gaussian response with identity link (lmm, lme); a GLMM's per-group ML fits can "
                "fail to exist (separation)"
            )
        max_groups = check_max(max_groups, "max_groups")
        d = self._fit.design
        names = [b.factor.name for b in d.blocks]
        if factor is None:
            bi = 0
        elif factor in names:
            bi = names.index(factor)
        else:
            raise ArgumentError(f"factor={factor!r} is not a grouping factor of the fit; choose one of {names}")
        blk = d.blocks[bi]
        cols = list(blk.columns)
        if terms is None:
            use = list(range(min(2, len(cols))))
        else:
            bad = [t for t in terms if t not in cols]
            if bad or not 1 <= len(terms) <= 2:
                raise ArgumentError(f"terms must be one or two of the random-effects columns {cols}, got {terms!r}")
            use = [cols.index(t) for t in terms]
        codes, G, q = blk.factor.codes, blk.nlevels, blk.q
        Z = blk.Z
        r = v.kept(self._fit.residuals(type="marginal"))
        if len(d.blocks) > 1:
            # the other factors' BLUPs are part of this group's signal neither way: remove them first
            for other, bo in enumerate(d.blocks):
                if other != bi:
                    b_o = self._fit.ranef[bo.factor.name].to_numpy()
                    r = r - np.einsum("ij,ij->i", bo.Z, b_o[bo.factor.codes])
        # per-group normal equations Z_g'Z_g a = Z_g'r_g from q(q+1)/2 + q bincounts over the rows
        ZtZ = np.empty((G, q, q))
        for a_ in range(q):
            for b_ in range(a_, q):
                ZtZ[:, a_, b_] = ZtZ[:, b_, a_] = np.bincount(codes, Z[:, a_] * Z[:, b_], minlength=G)
        Ztr = np.stack([np.bincount(codes, Z[:, a_] * r, minlength=G) for a_ in range(q)], axis=1)
        sizes = np.bincount(codes, minlength=G)
        eig = np.linalg.eigvalsh(ZtZ)
        ok = (sizes >= q) & (eig[:, 0] > 1e-10 * np.maximum(eig[:, -1], 1e-300))
        ols = np.full((G, q), np.nan)
        if ok.any():
            ols[ok] = np.linalg.solve(ZtZ[ok], Ztr[ok][:, :, None])[:, :, 0]
        blup = self._fit.ranef[blk.factor.name].to_numpy(dtype=float)
        fixef = self._fit.fixef
        pop = np.array([float(fixef[c]) if c in fixef.index else 0.0 for c in cols])
        ols, blup = ols + pop, blup + pop
        groups = np.flatnonzero(ok)
        groups = groups[sample_indices(len(groups), max_groups, seed)]
        size = 12.0 + 80.0 * sizes[groups] / max(sizes.max(), 1)
        fig, axes = new_figure(figsize=(6.5, 5.5), ax=ax)
        a = axes[0, 0]
        alpha = max(auto_alpha(len(groups)), 0.3)
        label = lambda c: f"{cols[c]} ({blk.factor.name}-specific)"  # noqa: E731
        if len(use) == 1:
            c = use[0]
            y0, y1 = ols[groups, c], blup[groups, c]
            a.scatter(np.zeros(len(groups)), y0, s=size, color="C1", alpha=alpha, label="per-group OLS")
            a.scatter(np.ones(len(groups)), y1, s=size, color="C0", alpha=alpha, label="BLUP")
            a.quiver(np.zeros(len(groups)), y0, np.ones(len(groups)), y1 - y0, angles="xy", scale_units="xy",
                     scale=1, width=0.003, color="0.4", alpha=alpha)
            a.axhline(pop[c], color="C3", lw=1.2, label="population")
            a.set_xticks([0, 1], ["per-group OLS", "BLUP"])
            a.set_xlim(-0.3, 1.3)
            a.set_xlabel("estimate")
            a.set_ylabel(label(c))
        else:
            c0, c1 = use
            x0, y0 = ols[groups, c0], ols[groups, c1]
            x1, y1 = blup[groups, c0], blup[groups, c1]
            a.scatter(x0, y0, s=size, facecolors="none", edgecolors="C1", alpha=alpha, label="per-group OLS")
            a.scatter(x1, y1, s=size, color="C0", alpha=alpha, label="BLUP")
            a.quiver(x0, y0, x1 - x0, y1 - y0, angles="xy", scale_units="xy", scale=1, width=0.003, color="0.4",
                     alpha=alpha)
            a.plot([pop[c0]], [pop[c1]], marker="P", ms=12, color="C3", ls="none", label="population")
            a.set_xlabel(label(c0))
            a.set_ylabel(label(c1))
        a.legend(fontsize=8)
        shown = "" if len(groups) == int(ok.sum()) else f", {len(groups)} of {int(ok.sum())} groups"
        a.set_title(f"Shrinkage: per-group OLS to BLUP (marker size: group size{shown})", fontsize=10)
        return fig

    # ------------------------------------------------------------------ trajectories and predictions
    def trajectories(
        self,
        by: str | None = None,
        time: str | None = None,
        y: str = "observed",
        group: str | None = None,
        max_subjects: int | None = 300,
        seed: int = 0,
        alpha: float | None = None,
        ax=None,
    ):
        """Subject trajectories (thin lines) over the population-level curve (bold).

        Parameters
        ----------
        by : str, optional
            A column to colour subjects by, with one population curve per level. For a MEMoE without
            ``by`` the subjects are coloured by their MAP class and the class mean curves are drawn.
        time : str, optional
            The time axis (default the first numeric variable of a random-effects term, else of the
            fixed part).
        y : {"observed", "fitted"}
            Draw the observed response or the subject-level fitted values.
        group : str, optional
            The subject column (default the fit's first grouping factor / cluster / subject).
        max_subjects : int or None
            Draw at most this many subjects, chosen at random with ``seed``.
        alpha : float, optional
            Line transparency (default from the number of subjects).
        ax : matplotlib Axes, optional

        Notes
        -----
        Population curves are ``predict(grid, re_form=None)`` on a grid of ``time`` with the other
        covariates at their mean (most frequent level for categorical ones).
        """
        v = self._view
        if v.family in ("memoe", "moe") and by is None:
            from memoe.plot.mixture import class_trajectories

            return class_trajectories(self._fit, time=time, y=y, max_subjects=max_subjects, seed=seed,
                                      alpha=alpha, ax=ax)
        if y not in ("observed", "fitted"):
            raise ArgumentError(f"y must be 'observed' or 'fitted', got {y!r}")
        max_subjects = check_max(max_subjects, "max_subjects")
        g = v.require_groups(group, "trajectories")
        time = v.time(time)
        t = v.data[time].to_numpy(dtype=float)
        values = v.y if y == "observed" else v.fitted
        subjects = sample_indices(len(g.levels), max_subjects, seed)
        fig, axes = new_figure(ax=ax)
        a = axes[0, 0]
        alpha = auto_alpha(len(subjects), lines=True) if alpha is None else float(alpha)
        self._subject_lines(a, g, t, values, subjects, by, alpha)
        grid = v.grid(time, by)
        pop = self._fit.predict(grid, re_form=None)
        pop = np.asarray(pop.iloc[:, 0] if isinstance(pop, pd.DataFrame) else pop, dtype=float)
        levels = [None] if by is None else list(pd.unique(grid[by]))
        n = len(grid) // len(levels)
        for i, level in enumerate(levels):
            sl = slice(i * n, (i + 1) * n)
            color = "black" if by is None else colors()[i % len(colors())]
            a.plot(grid[time].to_numpy()[sl], pop[sl], color=color, **bold(),
                   label="population" if by is None else f"population: {by} = {level}")
        a.set_xlabel(time)
        a.set_ylabel(v.response if y == "observed" else f"fitted {v.response}")
        a.legend(fontsize=8)
        shown = "" if len(subjects) == len(g.levels) else f" ({len(subjects)} of {len(g.levels)} subjects)"
        a.set_title(f"{v.response} by {g.name}{shown}; population curve bold", fontsize=10)
        return fig

    def _subject_lines(self, a, g, t, values, subjects, by, alpha) -> None:
        from matplotlib.collections import LineCollection

        if by is None:
            segs = subject_segments(g.codes, t, values, subjects)
            a.add_collection(LineCollection(segs, colors="0.45", alpha=alpha, linewidths=0.7))
        else:
            col = self._view.column(by, "by").to_numpy()
            for i, level in enumerate(pd.unique(col)):
                # a subject is drawn in the colour of its rows' level (rows of a subject may differ: each piece)
                rows = col == level
                segs = subject_segments(g.codes[rows], t[rows], values[rows], subjects)
                a.add_collection(LineCollection(segs, colors=colors()[i % len(colors())], alpha=alpha,
                                                linewidths=0.7))
        a.autoscale_view()

    def predictions(
        self,
        newdata: pd.DataFrame | None = None,
        time: str | None = None,
        by: str | None = None,
        interval: str | None = "prediction",
        level: float = 0.95,
        max_subjects: int | None = 4,
        seed: int = 0,
        ax=None,
    ):
        """Population and subject predictions over time, with interval bands where ``predict`` gives them.

        Parameters
        ----------
        newdata : pandas.DataFrame, optional
            Rows to predict. Without it: the population curve on a time grid (per level of ``by``) and
            the subject-level predictions of ``max_subjects`` randomly chosen subjects at their observed
            times, over their observations. With it: its rows' population predictions and, where it has
            the subject column and the model random effects, each subject's predictions.
        time, by : str, optional
            Time axis and a column giving one population curve per level.
        interval : {"prediction", "confidence", None}
            Bands drawn when the fit's ``predict`` accepts ``interval=`` (lines only otherwise).
        level : float
        max_subjects : int or None
        seed : int
        ax : matplotlib Axes, optional
        """
        from memoe.core.arguments import check_level

        v = self._view
        level = check_level(level)
        if interval not in (None, "prediction", "confidence"):
            raise ArgumentError(f"interval must be 'prediction', 'confidence' or None, got {interval!r}")
        max_subjects = check_max(max_subjects, "max_subjects")
        time = v.time(time)
        g = v.groups()
        fig, axes = new_figure(ax=ax)
        a = axes[0, 0]
        banded = False
        if newdata is None:
            pop_frame = v.grid(time, by)
        else:
            from memoe.core.frames import to_pandas

            pop_frame = to_pandas(newdata, "newdata")
            if time not in pop_frame.columns:
                raise ArgumentError(f"newdata has no column {time!r} (the time axis); pass time='<column>'")
        levels = [None] if by is None else list(pd.unique(pop_frame[by]))
        for i, lev in enumerate(levels):
            part = pop_frame if lev is None else pop_frame[pop_frame[by] == lev]
            part = part.sort_values(time, kind="stable")
            est, lo, hi = self._predict(part, None, interval, level)
            color = "black" if lev is None else colors()[i % len(colors())]
            tt = part[time].to_numpy(dtype=float)
            a.plot(tt, est, color=color, lw=2.5, label="population" if lev is None else f"population: {by} = {lev}")
            if lo is not None and hi is not None:
                a.fill_between(tt, lo, hi, color=color, alpha=0.15, lw=0)
                banded = True
        if g is not None and v.has_ranef():
            if newdata is None:
                chosen = sample_indices(len(g.levels), max_subjects, seed)
                rows = np.isin(g.codes, chosen)
                sub = v.data[rows].assign(__observed__=v.y[rows])
            else:
                sub = pop_frame if g.name in pop_frame.columns else pop_frame.iloc[:0]
            for j, (name, rows_j) in enumerate(sub.groupby(g.name, observed=True, sort=True)):
                if max_subjects is not None and j >= max_subjects:
                    break
                rows_j = rows_j.sort_values(time, kind="stable")
                est, lo, hi = self._predict(rows_j, "full", interval, level)
                color = colors()[(j + len(levels)) % len(colors())]
                tt = rows_j[time].to_numpy(dtype=float)
                a.plot(tt, est, color=color, lw=1.5, ls="--", label=f"{g.name} {name}")
                if "__observed__" in rows_j:
                    a.scatter(tt, rows_j["__observed__"], s=14, color=color, zorder=3)
                if lo is not None and hi is not None:
                    a.fill_between(tt, lo, hi, color=color, alpha=0.12, lw=0)
                    banded = True
        a.set_xlabel(time)
        a.set_ylabel(f"predicted {v.response}")
        a.legend(fontsize=7)
        band = f" with {100 * level:g}% {interval} intervals" if banded else ""
        a.set_title(f"Population and subject predictions{band}", fontsize=10)
        return fig

    def _predict(self, frame: pd.DataFrame, re_form, interval, level):
        fit = self._fit
        kwargs: dict[str, Any] = {"re_form": re_form}
        if re_form == "full":
            kwargs["allow_new_levels"] = True
        if interval is not None:
            try:
                return _interval_columns(fit.predict(frame, interval=interval, level=level, **kwargs))
            except TypeError:
                pass  # this family's predict has no intervals (yet): lines without bands
        return _interval_columns(fit.predict(frame, **kwargs))

    def variance_components(self, ax=None):
        """Between- vs within-subject variance with the ICC in the title (see
        :func:`memoe.plot.components.variance_components_table`)."""
        from memoe.plot.components import variance_components_table

        table = variance_components_table(self._fit)
        fig, axes = new_figure(figsize=(6.0, 4.0), ax=ax)
        a = axes[0, 0]
        labels = [f"between: {c}" if c != "Residual" else "within (residual)" for c in table.index]
        bars = a.bar(labels, table["variance"], color=[*["C0"] * (len(table) - 1), "C1"])
        for rect, share in zip(bars, table["share"], strict=True):
            a.annotate(f"{100 * share:.1f}%", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                       ha="center", va="bottom", fontsize=9)
        a.set_ylabel(f"variance of {self._view.response}" + (" (latent scale)" if self._view.family == "glmm" else ""))
        a.set_xlabel("component")
        a.set_title(f"Variance components: ICC = {table.attrs['icc']:.3f}", fontsize=10)
        return fig

    # ------------------------------------------------------------------ mixtures
    def posterior(self, bins: int = 20, ax=None):
        """MEMoE / MoE: histogram of each subject's largest posterior probability, stacked by MAP class."""
        from memoe.plot.mixture import posterior

        self._require_mixture("posterior")
        return posterior(self._fit, bins=bins, ax=ax)

    def gate_effects(self, n: int = 50):
        """MEMoE / MoE: the gating probability of each expert against each gating covariate, the others
        at their mean (most frequent level)."""
        from memoe.plot.mixture import gate_effects

        self._require_mixture("gate_effects")
        return gate_effects(self._fit, n=n)

    def _require_mixture(self, what: str) -> None:
        if self._view.family not in ("memoe", "moe"):
            raise MemoeError(f"{what} applies to mixtures (MEMoE, MoE) only; this is a {self._view.family} fit")

"""Figures of a MEMoE fit (matplotlib is imported only when a figure is drawn)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.core.design.frame import formula_variables

__all__ = ["plot_posterior", "plot_trajectories"]


def _time_variable(fit) -> str:
    md = fit.model.mdesign
    spec = md.design.spec
    for term in spec.random:
        vars_ = formula_variables(term.lhs, "random term")
        if vars_:
            return vars_[0]
    vars_ = formula_variables(spec.fixed, "fixed part")
    if not vars_:
        raise ValueError("no covariate to use as time: pass time='column'")
    return vars_[0]


def _grid_frame(fit, time: str, n: int = 100) -> pd.DataFrame:
    """Time grid with every other covariate at its mean (numeric) or most frequent value."""
    data = fit.model.mdesign.data
    tgrid = np.linspace(data[time].min(), data[time].max(), n)
    cols = {}
    for c in data.columns:
        if c == time:
            continue
        col = data[c]
        cols[c] = np.repeat(col.mean() if pd.api.types.is_numeric_dtype(col) else col.mode().iloc[0], n)
    frame = pd.DataFrame(cols)
    frame[time] = tgrid
    return frame


def plot_trajectories(fit, time: str | None = None, max_subjects: int | None = 300, ax=None, seed: int = 0):
    """Expert mean trajectories over observed subject trajectories coloured by MAP class.

    Parameters
    ----------
    fit : MEMoEResult
    time : str, optional
        Time column (default: the first variable of the random-effects term, else of the fixed part).
    max_subjects : int or None
        Draw at most this many (randomly chosen) subject trajectories.
    ax : matplotlib Axes, optional
    seed : int
        Chooses the subjects drawn.

    Returns
    -------
    matplotlib Axes

    Notes
    -----
    The class curves are ``X(t) beta_k`` on a grid of ``time`` with the other covariates held at their
    means (categorical ones at their most frequent level).
    """
    import matplotlib.pyplot as plt  # deferred: pyplot takes ~0.5 s to import and picks a GUI backend

    md = fit.model.mdesign
    time = time or _time_variable(fit)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    data = md.data
    y = md.design.y
    cls = fit.classify().to_numpy()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    subjects = np.arange(md.N)
    if max_subjects is not None and max_subjects < md.N:
        subjects = np.sort(np.random.default_rng(seed).choice(md.N, max_subjects, replace=False))
    t = data[time].to_numpy(float)
    codes = md.codes
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(md.N + 1))
    for i in subjects:
        rows = order[bounds[i] : bounds[i + 1]]
        rows = rows[np.argsort(t[rows])]
        ax.plot(t[rows], y[rows], color=colors[(cls[i] - 1) % len(colors)], alpha=0.25, lw=0.7)
    grid = _grid_frame(fit, time)
    X = md.design.fixed.matrix_for(grid)
    for k in range(fit.k):
        share = float(fit.posterior[k + 1].mean())
        ax.plot(grid[time], X @ fit.estimates.beta[k], color=colors[k % len(colors)], lw=3,
                label=f"expert {k + 1} ({100 * share:.0f}%)")
    ax.set_xlabel(time)
    ax.set_ylabel(md.design.spec.response)
    ax.legend()
    ax.set_title("Expert mean trajectories; subjects coloured by MAP expert")
    return ax


def plot_posterior(fit, bins: int = 20, ax=None):
    """Histogram of each subject's maximum posterior probability, stacked by MAP class.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt  # deferred: pyplot takes ~0.5 s to import and picks a GUI backend

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    tau = fit.posterior.to_numpy()
    pmax = tau.max(axis=1)
    cls = tau.argmax(axis=1)
    ax.hist([pmax[cls == k] for k in range(fit.k)], bins=np.linspace(1.0 / fit.k, 1.0, bins + 1), stacked=True,
            label=[f"expert {k + 1}" for k in range(fit.k)])
    ax.set_xlabel("maximum posterior probability")
    ax.set_ylabel("subjects")
    ax.legend()
    ax.set_title(f"Posterior classification (relative entropy {fit.entropy:.3f})")
    return ax

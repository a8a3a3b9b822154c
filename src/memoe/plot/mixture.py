"""Figures of a mixture fit (MEMoE, MoE): class trajectories, posterior classification, gate effects."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.errors import ArgumentError, MemoeError
from memoe.plot._backend import auto_alpha, bold, check_max, colors, new_figure, sample_indices, subject_segments
from memoe.plot._view import FitView

__all__ = ["class_trajectories", "gate_effects", "posterior"]


def class_trajectories(fit, time: str | None = None, y: str = "observed", max_subjects: int | None = 300,
                       seed: int = 0, alpha: float | None = None, ax=None):
    """Subject trajectories coloured by MAP expert under each expert's mean curve (bold).

    The expert curves are ``X(t) beta_k`` on a grid of ``time`` with the other covariates at their mean
    (categorical ones at their most frequent level); the legend gives each expert's share of the
    posterior mass.
    """
    from matplotlib.collections import LineCollection

    if y not in ("observed", "fitted"):
        raise ArgumentError(f"y must be 'observed' or 'fitted', got {y!r}")
    max_subjects = check_max(max_subjects, "max_subjects")
    view = FitView(fit)
    md = fit.model.mdesign
    time = view.time(time)
    t = view.data[time].to_numpy(dtype=float)
    values = view.y if y == "observed" else view.fitted
    cls = fit.classify().to_numpy() - 1
    subjects = sample_indices(md.N, max_subjects, seed)
    fig, axes = new_figure(ax=ax)
    a = axes[0, 0]
    pal = colors()
    alpha = auto_alpha(len(subjects), lines=True) if alpha is None else float(alpha)
    for k in range(fit.k):
        chosen = subjects[cls[subjects] == k]
        segs = subject_segments(md.codes, t, values, chosen)
        a.add_collection(LineCollection(segs, colors=pal[k % len(pal)], alpha=alpha, linewidths=0.7))
    a.autoscale_view()
    grid = view.grid(time)
    X = md.design.fixed.matrix_for(grid)
    share = fit.posterior.mean(axis=0).to_numpy()
    for k in range(fit.k):
        a.plot(grid[time], X @ fit.estimates.beta[k], color=pal[k % len(pal)], **bold(),
               label=f"expert {k + 1} ({100 * share[k]:.0f}%)")
    a.set_xlabel(time)
    a.set_ylabel(view.response if y == "observed" else f"fitted {view.response}")
    a.legend(fontsize=8)
    shown = "" if len(subjects) == md.N else f" ({len(subjects)} of {md.N} subjects)"
    a.set_title(f"Expert mean trajectories; subjects coloured by MAP expert{shown}", fontsize=10)
    return fig


def posterior(fit, bins: int = 20, ax=None):
    """Histogram of each subject's maximum posterior probability, stacked by MAP class."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ArgumentError(f"bins must be a positive int, got {bins!r}")
    fig, axes = new_figure(figsize=(6.0, 4.0), ax=ax)
    a = axes[0, 0]
    tau = fit.posterior.to_numpy()
    pmax = tau.max(axis=1)
    cls = tau.argmax(axis=1)
    a.hist([pmax[cls == k] for k in range(fit.k)], bins=np.linspace(1.0 / fit.k, 1.0, bins + 1), stacked=True,
           label=[f"expert {k + 1}" for k in range(fit.k)], color=colors()[: fit.k])
    a.set_xlabel("maximum posterior probability")
    a.set_ylabel("subjects")
    a.legend(fontsize=8)
    a.set_title(f"Posterior classification (relative entropy {fit.entropy:.3f})", fontsize=10)
    return fig


def gate_effects(fit, n: int = 50):
    """Gating probability of each expert against each gating covariate (one panel per covariate).

    The other gating covariates are held at their mean over subjects (most frequent level for categorical
    ones); numeric covariates span their observed range on ``n`` points, categorical ones show each level.
    """
    from memoe.moe.data import gating_matrix

    md = fit.model.mdesign
    if not md.gating_vars:
        raise MemoeError("gate_effects needs gating covariates: this mixture was fitted without a gating formula")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ArgumentError(f"n must be an int >= 2, got {n!r}")
    # one row per subject: gating covariates are constant within a subject
    subj = md.data.groupby(md.group, observed=True, sort=False)[md.gating_vars].first()
    gamma = np.asarray(fit.estimates.gamma)
    nv = len(md.gating_vars)
    ncols = min(3, nv)
    nrows = -(-nv // ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(4.5 * ncols, 3.8 * nrows))
    pal = colors()
    for a, var in zip(axes.flat, md.gating_vars, strict=False):
        col = subj[var]
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        values = np.linspace(col.min(), col.max(), n) if numeric else pd.unique(col.dropna())
        frame = {}
        for other in md.gating_vars:
            if other == var:
                continue
            oc = subj[other]
            if pd.api.types.is_numeric_dtype(oc) and not pd.api.types.is_bool_dtype(oc):
                frame[other] = np.repeat(float(oc.mean()), len(values))
            else:
                frame[other] = pd.Categorical([oc.mode().iloc[0]] * len(values), categories=oc.cat.categories) if (
                    isinstance(oc.dtype, pd.CategoricalDtype)) else [oc.mode().iloc[0]] * len(values)
        grid = pd.DataFrame(frame)
        grid[var] = pd.Categorical(values, categories=col.cat.categories) if isinstance(
            col.dtype, pd.CategoricalDtype) else values
        W = gating_matrix(md, grid)
        eta = W @ gamma.T
        prob = np.exp(eta - eta.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        x = values if numeric else np.arange(len(values))
        for k in range(fit.k):
            a.plot(x, prob[:, k], color=pal[k % len(pal)], lw=2, marker=None if numeric else "o",
                   label=f"expert {k + 1}")
        if not numeric:
            a.set_xticks(x, [str(s) for s in values])
        a.set_ylim(0.0, 1.0)
        a.set_xlabel(var)
        a.set_ylabel("gating probability")
        a.set_title(f"Gate effect of {var}", fontsize=10)
        a.legend(fontsize=8)
    for a in list(axes.flat)[nv:]:
        a.set_visible(False)
    fig.suptitle("Expert membership probability by gating covariate")
    return fig

"""matplotlib, imported only when a figure is drawn, and the small helpers every figure shares.

Figures are :class:`matplotlib.figure.Figure` objects made without pyplot: nothing is registered with a
GUI backend, nothing is shown, and rendering (``fig.savefig``) uses Agg whatever the session's backend.
"""

from __future__ import annotations

import numpy as np

from memoe.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "auto_alpha",
    "bold",
    "check_max",
    "colors",
    "new_figure",
    "normal_quantiles",
    "sample_indices",
    "subject_segments",
]


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (7.0, 4.5), ax=None):
    """A Figure with a grid of Axes (2-D array), or the figure of ``ax`` when one is given (then 1 x 1)."""
    if ax is not None:
        if nrows * ncols != 1:
            raise ArgumentError(f"ax= takes one Axes; this figure has {nrows * ncols} panels, leave ax=None")
        return ax.figure, np.array([[ax]])
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def colors() -> list[str]:
    import matplotlib

    return list(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])


def auto_alpha(n: int, lines: bool = False) -> float:
    """Transparency for ``n`` overlaid marks: opaque for a few, faint for thousands (dense regions stay visible).

    Lines cover far more of the axes than points, so they fade sooner.
    """
    scale = 5.0 if lines else 20.0
    return float(np.clip(scale / np.sqrt(max(n, 1)), 0.03, 0.8))


def bold(lw: float = 3.0) -> dict:
    """Line style of a curve drawn over many others: thick, with a white outline that separates it from them."""
    from matplotlib import patheffects

    return {"lw": lw, "path_effects": [patheffects.withStroke(linewidth=lw + 2.0, foreground="white")]}


def check_max(value, argument: str) -> int | None:
    """``None`` (draw all) or a positive int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"{argument} must be a positive int or None (draw all), got {value!r}")
    if value < 1:
        raise ArgumentError(f"{argument} must be a positive int or None (draw all), got {value}")
    return int(value)


def sample_indices(n: int, max_n: int | None, seed) -> np.ndarray:
    """Sorted indices of at most ``max_n`` of ``n`` items, chosen at random with ``seed`` (all when fewer)."""
    if max_n is None or n <= max_n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_n, replace=False))


def normal_quantiles(n: int) -> np.ndarray:
    """Theoretical N(0, 1) quantiles of ``n`` ordered values (R's ``ppoints``: a = 3/8 for n <= 10, else 1/2)."""
    from scipy import stats

    a = 0.375 if n <= 10 else 0.5
    return stats.norm.ppf((np.arange(1, n + 1) - a) / (n + 1 - 2 * a))


def subject_segments(codes: np.ndarray, t: np.ndarray, y: np.ndarray, subjects: np.ndarray) -> list[np.ndarray]:
    """Per chosen subject, its (t, y) points in time order: the segments of one LineCollection.

    One sort of all rows and one split (no per-row Python work); the list has one entry per subject
    because that is what a LineCollection takes.
    """
    keep = np.isin(codes, subjects) & np.isfinite(t) & np.isfinite(y)
    c, tt, yy = codes[keep], t[keep], y[keep]
    order = np.lexsort((tt, c))
    c, pts = c[order], np.column_stack([tt[order], yy[order]])
    cuts = np.flatnonzero(np.diff(c)) + 1
    return [p for p in np.split(pts, cuts) if len(p)]

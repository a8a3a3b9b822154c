"""Per-group cross-products computed in one pass over the rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["group_crossprod"]


def group_crossprod(
    codes: np.ndarray,
    ngroups: int,
    left: Sequence[np.ndarray],
    right: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Per-group sums of products of columns: ``out[g, a, b] = sum_{rows in g} left[a] * right[b]``.

    Parameters
    ----------
    codes : numpy.ndarray of int, shape (n,)
        Group of each row.
    ngroups : int
    left, right : sequence of numpy.ndarray, each shape (n,)
        Columns; ``right`` defaults to ``left`` and then only the upper triangle is computed.

    Returns
    -------
    numpy.ndarray, shape (ngroups, len(left), len(right))

    Notes
    -----
    One ``np.bincount`` per pair of columns keeps the temporary memory at one n-vector, so the
    per-group statistics of a million rows cost far less memory than an (n, a, b) product array.
    """
    symmetric = right is None
    right = left if right is None else right
    out = np.empty((ngroups, len(left), len(right)))
    for a, ca in enumerate(left):
        for b, cb in enumerate(right):
            if symmetric and b < a:
                out[:, a, b] = out[:, b, a]
                continue
            out[:, a, b] = np.bincount(codes, weights=ca * cb, minlength=ngroups)
    return out

"""geepack's working correlation structures: independence, exchangeable, AR(1) and unstructured.

Each structure gives R(alpha) for every cluster of a :class:`~memoe.gee.clusters.Batch` at once, the
working correlation of every within-cluster pair, and d rho / d alpha per pair (geepack's ``E``), which
the moment step for alpha and the joint sandwich use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from memoe.gee.clusters import Batch

__all__ = ["CORSTRS", "WorkingCorrelation"]

CORSTRS = ("independence", "exchangeable", "ar1", "unstructured")


class WorkingCorrelation:
    """R(alpha) per cluster and dR/dalpha per pair for one structure over waves 1..T."""

    def __init__(self, corstr: str, T: int) -> None:
        self.corstr = corstr
        self.T = T
        if corstr == "independence":
            self.q = 0
        elif corstr in ("exchangeable", "ar1"):
            self.q = 1
        else:
            self.q = T * (T - 1) // 2

    def names(self) -> list[str]:
        """geepack's parameter names: ``alpha``, or ``alpha.1:2``, ``alpha.1:3``, ... for unstructured."""
        if self.corstr in ("exchangeable", "ar1"):
            return ["alpha"]
        if self.corstr == "unstructured":
            a, b = np.triu_indices(self.T, 1)
            return [f"alpha.{i + 1}:{j + 1}" for i, j in zip(a, b, strict=True)]
        return []

    def pair_rho(self, b: Batch, alpha: np.ndarray) -> np.ndarray:
        """Working correlation of every within-cluster pair, (G, m)."""
        if self.corstr == "independence":
            return np.zeros(b.lag.shape)
        if self.corstr == "exchangeable":
            return np.full(b.lag.shape, alpha[0])
        if self.corstr == "ar1":
            return alpha[0] ** b.lag
        return alpha[b.pair_param]

    def matrix(self, b: Batch, alpha: np.ndarray) -> np.ndarray:
        """R(alpha) of every cluster of the batch, (G, s, s)."""
        G, s = b.y.shape
        R = np.broadcast_to(np.eye(s), (G, s, s)).copy()
        if self.corstr != "independence" and s > 1:
            rho = self.pair_rho(b, alpha)
            R[:, b.pj, b.pk] = rho
            R[:, b.pk, b.pj] = rho
        return R

    def E(self, b: Batch, alpha: np.ndarray) -> np.ndarray:
        """d rho_pair / d alpha, (G, m, q) (geepack's ``cor_rho`` times the identity correlation link)."""
        G, m = b.lag.shape
        if self.corstr == "exchangeable":
            return np.ones((G, m, 1))
        if self.corstr == "ar1":
            lag = b.lag
            # geepack special-cases lag 1 (avoids 0^0 when alpha is 0)
            d = np.where(lag == 1.0, 1.0, lag * alpha[0] ** np.maximum(lag - 1.0, 0.0))
            return d[:, :, None]
        E = np.zeros((G, m, self.q))
        if m:
            g_idx = np.repeat(np.arange(G), m)
            E[g_idx, np.tile(np.arange(m), G), b.pair_param.ravel()] = 1.0
        return E

    def full_matrix(self, alpha: np.ndarray) -> pd.DataFrame:
        """The T x T working correlation over waves 1..T (rows and columns labelled by wave)."""
        T = self.T
        w = np.arange(1, T + 1)
        if self.corstr == "independence":
            R = np.eye(T)
        elif self.corstr == "exchangeable":
            R = np.where(np.eye(T, dtype=bool), 1.0, alpha[0])
        elif self.corstr == "ar1":
            R = alpha[0] ** np.abs(np.subtract.outer(w, w)).astype(float)
        else:
            R = np.eye(T)
            i, j = np.triu_indices(T, 1)
            R[i, j] = alpha
            R[j, i] = alpha
        return pd.DataFrame(R, index=w, columns=w)

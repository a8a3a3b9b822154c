"""Random-effects covariance parameterisation: theta -> relative covariance factors (lme4's contract).

Each lme4 term with q columns owns q(q+1)/2 entries of theta: the lower triangle (diagonal
included) of the Cholesky factor of (term covariance / sigma^2), stored column by column.
Terms sharing a grouping factor are merged into one factor block whose relative factor
``lambda_k`` is block-diagonal; the map below records where each theta entry lands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ThetaMap", "term_covariances"]


@dataclass(frozen=True)
class ThetaMap:
    """Where each entry of theta lives.

    Attributes
    ----------
    block, row, col : numpy.ndarray of int, shape (ntheta,)
        Factor block index and position (row >= col) in that block's relative factor.
    block_sizes : tuple of int
        q of each factor block.
    names : list of str
        lme4's names (``Subject.(Intercept)``, ``Subject.Days.(Intercept)``, ``Subject.Days``).
    """

    block: np.ndarray
    row: np.ndarray
    col: np.ndarray
    block_sizes: tuple[int, ...]
    names: list[str]

    @property
    def size(self) -> int:
        return len(self.block)

    @property
    def lower_bounds(self) -> np.ndarray:
        """0 for diagonal entries (standard deviations), -inf for off-diagonal ones."""
        return np.where(self.row == self.col, 0.0, -np.inf)

    @property
    def is_diagonal(self) -> np.ndarray:
        return self.row == self.col

    def initial(self) -> np.ndarray:
        """lme4's starting value: identity relative factors."""
        return np.where(self.row == self.col, 1.0, 0.0)

    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """Relative covariance factors, one lower-triangular (q_k, q_k) array per factor block."""
        out = [np.zeros((q, q)) for q in self.block_sizes]
        for t, b, i, j in zip(theta, self.block, self.row, self.col, strict=True):
            out[b][i, j] = t
        return out

    def theta_of(self, lambdas: list[np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`lambdas` (used to map starting values)."""
        return np.array([lambdas[b][i, j] for b, i, j in zip(self.block, self.row, self.col, strict=True)])


def term_covariances(terms, lambdas: list[np.ndarray], sigma: float) -> list[np.ndarray]:
    """Covariance matrix of each lme4 random-effects term on the natural scale.

    Parameters
    ----------
    terms : sequence
        The design's random-effects terms (each with ``block``, ``offset`` and ``q``).
    lambdas : list of numpy.ndarray
        Relative covariance factor of each block (:meth:`ThetaMap.lambdas`).
    sigma : float
        Residual standard deviation.

    Returns
    -------
    list of numpy.ndarray
        ``sigma^2 lambda_t lambda_t'`` for each term's slice of its block.
    """
    out = []
    for t in terms:
        lam = lambdas[t.block][t.offset : t.offset + t.q, t.offset : t.offset + t.q]
        out.append(sigma**2 * lam @ lam.T)
    return out

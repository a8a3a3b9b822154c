"""Parameters of a mixture of Gaussian experts on their natural scale (structure-free container)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memoe.errors import ArgumentError, ArgumentTypeError

__all__ = ["MoEParams"]


@dataclass(frozen=True)
class MoEParams:
    """Gating and expert parameters.

    Attributes
    ----------
    gamma : numpy.ndarray, shape (K, r)
        Gating coefficients; row 0 (the reference expert) is zero.
    beta : numpy.ndarray, shape (K, p)
        Fixed effects of each expert (shared coefficients repeat the same value).
    L : numpy.ndarray, shape (K, q, q)
        Lower Cholesky factor of each expert's random-effects covariance, ``G_k = L_k L_k'``.
    sigma : numpy.ndarray, shape (K,)
        Residual standard deviation of each expert.
    """

    gamma: np.ndarray
    beta: np.ndarray
    L: np.ndarray
    sigma: np.ndarray

    @property
    def K(self) -> int:
        return self.beta.shape[0]

    @property
    def G(self) -> np.ndarray:
        """Random-effects covariances, shape (K, q, q)."""
        return np.einsum("kab,kcb->kac", self.L, self.L)

    def relative_factor(self, k: int) -> np.ndarray:
        """``Lambda_k = L_k / sigma_k`` (lme4's relative covariance factor), shape (q, q)."""
        return self.L[k] / self.sigma[k]

    def replace(self, **kw) -> MoEParams:
        d = dict(gamma=self.gamma, beta=self.beta, L=self.L, sigma=self.sigma)
        d.update(kw)
        return MoEParams(**d)

    def permute(self, order: np.ndarray) -> MoEParams:
        """Relabel the experts: new expert j is old expert ``order[j]``; gating re-referenced to it."""
        order = np.asarray(order)
        g = self.gamma[order] - self.gamma[order[0]]
        return MoEParams(gamma=g, beta=self.beta[order], L=self.L[order], sigma=self.sigma[order])

    def distance(self, other: MoEParams) -> float:
        """Largest relative change of any parameter (for the EM stopping rule)."""
        out = 0.0
        for a, b in ((self.gamma, other.gamma), (self.beta, other.beta), (self.L, other.L), (self.sigma, other.sigma)):
            if a.size:
                out = max(out, float(np.max(np.abs(a - b) / (np.abs(b) + 1e-3))))
        return out


def check_start(start, st) -> None:
    """A user start must have the shapes of ``st`` (a :class:`memoe.moe.structure.Structure`) and finite values
    with positive SDs."""
    if not isinstance(start, MoEParams):
        raise ArgumentTypeError(f"start must be a memoe.moe.params.MoEParams or None, got {type(start).__name__}")
    want = {"gamma": (st.K, st.r), "beta": (st.K, st.p), "L": (st.K, st.q, st.q), "sigma": (st.K,)}
    for name, shape in want.items():
        a = np.asarray(getattr(start, name))
        if a.shape != shape:
            raise ArgumentError(
                f"start.{name} has shape {a.shape}, this model (k = {st.K}, {st.p} fixed effects, {st.q} random "
                f"effects, {st.r} gating columns) needs {shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ArgumentError(f"start.{name} has non-finite values")
    if np.any(np.asarray(start.sigma) <= 0):
        raise ArgumentError(f"start.sigma must be positive, got {np.asarray(start.sigma).tolist()}")
    extra = getattr(start, "extra", None)
    n_extra = getattr(st, "n_extra", 0)
    if n_extra and extra is not None:
        # residual-structure parameters of structured experts (unconstrained scale), one row per expert
        want_extra = (st.K, n_extra)
        if np.shape(extra) != want_extra or not np.all(np.isfinite(np.asarray(extra, dtype=float))):
            raise ArgumentError(
                f"start.extra must be finite with shape {want_extra} (per expert: {', '.join(st.extra_names)}), "
                f"got shape {np.shape(extra)}"
            )

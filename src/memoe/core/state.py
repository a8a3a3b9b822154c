"""The public fit state of the mixed models: what inference needs from a fit, frozen and documented.

``fit.state`` replaces the private attributes that :mod:`memoe.inference` used to read (``fit._theta``,
``fit._solution``): the estimates on the optimiser's scale and the factorisation at them. The arrays
are read-only copies, so nothing downstream can change a fit.

* :class:`LmmState` -- a linear mixed model at its theta: theta, beta, sigma, the criterion, and the
  penalised least-squares solution (conditional modes, ``(R_X' R_X)^-1``, the factorisation).
* :class:`GlmmState` -- a GLMM at its (theta, beta): the PIRLS state (conditional modes, eta, mu,
  working weights) and the minimised deviance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only for the annotations: core does not import the families at run time
    from memoe.glmm.pirls import PirlsState
    from memoe.lmm.objective import PLSSolution

__all__ = ["GlmmState", "LmmState", "frozen_array"]


def frozen_array(values) -> np.ndarray:
    """A read-only float copy of ``values``."""
    out = np.array(values, dtype=float, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class LmmState:
    """A linear mixed model fit at its estimates.

    Attributes
    ----------
    theta : numpy.ndarray, shape (k,)
        Relative covariance factor entries in lme4's order (read-only).
    reml : bool
        The criterion: REML (True) or ML.
    solution : memoe.lmm.objective.PLSSolution
        The penalised least-squares solution at ``theta``: ``beta``, the spherical and natural conditional
        modes ``u`` and ``b`` (one array per grouping factor), ``sigma``, the criterion ``deviance``, the
        inverse ``R_X`` factor and the factorisation of the random-effects block.
    """

    theta: np.ndarray
    reml: bool
    solution: PLSSolution

    @property
    def beta(self) -> np.ndarray:
        """Fixed effects, in the order of ``fit.design.fixef_names``."""
        return self.solution.beta

    @property
    def sigma(self) -> float:
        """Residual standard deviation."""
        return float(self.solution.sigma)

    @property
    def deviance(self) -> float:
        """The minimised criterion: -2 log-likelihood (ML) or the REML criterion."""
        return float(self.solution.deviance)

    @property
    def b(self) -> list[np.ndarray]:
        """Conditional modes on the natural scale, one (levels, q) array per grouping factor."""
        return self.solution.b

    @property
    def vcov_unscaled(self) -> np.ndarray:
        """``(R_X' R_X)^-1``; ``sigma^2`` times it is the covariance of beta."""
        return self.solution.vcov_unscaled


@dataclass(frozen=True)
class GlmmState:
    """A GLMM at its estimates.

    Attributes
    ----------
    theta : numpy.ndarray, shape (k,)
        Relative covariance factor entries in lme4's order (read-only).
    beta : numpy.ndarray, shape (p,)
        Fixed effects (read-only; from PIRLS for ``nAGQ = 0``).
    nAGQ : int
        0 (beta from PIRLS), 1 (Laplace) or the number of adaptive Gauss-Hermite nodes.
    pirls : memoe.glmm.pirls.PirlsState
        PIRLS at the estimates: spherical conditional modes ``u``, ``eta``, ``mu``, working weights ``w``,
        unit deviances, ``log det(L L')``, iterations and convergence.
    criterion : float
        The minimised objective: the Laplace or AGQ deviance (-2 log-likelihood).
    """

    theta: np.ndarray
    beta: np.ndarray
    nAGQ: int
    pirls: PirlsState
    criterion: float

    @property
    def eta(self) -> np.ndarray:
        """Conditional linear predictor (with offset) at the estimates."""
        return self.pirls.eta

    @property
    def mu(self) -> np.ndarray:
        """Conditional mean at the estimates."""
        return self.pirls.mu

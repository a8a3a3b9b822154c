"""Optimiser backends and the convergence checks applied to their results."""

from memoe.core.optim.bobyqa import OptSummary, minimize_bounded
from memoe.core.optim.checks import ConvergenceReport, check_convergence, finite_difference_derivatives

__all__ = [
    "ConvergenceReport",
    "OptSummary",
    "check_convergence",
    "finite_difference_derivatives",
    "minimize_bounded",
]

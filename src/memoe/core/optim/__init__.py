"""Optimiser backends and the convergence checks applied to their results."""

from memoe.core.optim.bobyqa import OptSummary, minimize_bounded
from memoe.core.optim.checks import (
    ConvergenceReport,
    check_convergence,
    finite_difference_derivatives,
    gradient_difference_hessian,
)
from memoe.core.optim.quasi_newton import minimize_bounded_gradient

__all__ = [
    "ConvergenceReport",
    "OptSummary",
    "check_convergence",
    "finite_difference_derivatives",
    "gradient_difference_hessian",
    "minimize_bounded",
    "minimize_bounded_gradient",
]

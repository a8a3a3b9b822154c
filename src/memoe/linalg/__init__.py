"""Small dense kernels batched over groups, and per-group sufficient statistics."""

from memoe.linalg.batched import (
    batched_backward_solve_t,
    batched_cholesky,
    batched_forward_solve,
    batched_logdet_chol,
)
from memoe.linalg.sufficient import group_crossprod

__all__ = [
    "batched_backward_solve_t",
    "batched_cholesky",
    "batched_forward_solve",
    "batched_logdet_chol",
    "group_crossprod",
]

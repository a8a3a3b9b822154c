"""Small dense kernels batched over groups, per-group sufficient statistics, the crossed-factor Schur
complement, and the BLAS thread cap used while fitting."""

from memoe.core.linalg.batched import (
    batched_backward_solve_t,
    batched_cholesky,
    batched_forward_solve,
    batched_logdet_chol,
)
from memoe.core.linalg.soa import (
    soa_backward_solve_t,
    soa_cholesky,
    soa_congruence,
    soa_forward_solve,
    soa_lincomb,
    soa_logdet_chol,
)
from memoe.core.linalg.sufficient import GroupSums, group_crossprod, group_segments
from memoe.core.linalg.threads import blas_threads

__all__ = [
    "GroupSums",
    "batched_backward_solve_t",
    "batched_cholesky",
    "batched_forward_solve",
    "batched_logdet_chol",
    "blas_threads",
    "group_crossprod",
    "group_segments",
    "soa_backward_solve_t",
    "soa_cholesky",
    "soa_congruence",
    "soa_forward_solve",
    "soa_lincomb",
    "soa_logdet_chol",
]

"""Mixed-Effects Mixture of Experts: a gate of baseline covariates routing subjects to LMM experts.

Modules, in the order data flows: ``data`` (designs, per-subject statistics) -> ``experts``
(per-subject marginal likelihood, gradients, weighted M-step) and ``gating`` (multinomial logit) ->
``structure`` (parameter sharing, the unconstrained vector psi) -> ``problem`` (E-step, M-step,
scores) -> ``em`` (one run) -> ``init`` and ``multistart`` (starts, label order) -> ``model``
(:class:`MEMoE`, :class:`MoE`) -> ``results``, ``inference``, ``summary``, ``predict``, ``plots``;
``selection`` (:func:`select_k`).
"""

# registers the family's .memoe codec with memoe.core.persist (which imports no family)
from memoe.moe import persist as _persist  # noqa: F401
from memoe.moe.model import MEMoE, MoE
from memoe.moe.selection import select_k

__all__ = ["MEMoE", "MoE", "select_k"]

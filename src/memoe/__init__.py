"""memoe: mixed-effects models and the Mixed-Effects Mixture of Experts (MEMoE) for longitudinal data."""

from memoe import datasets, errors, persist, simulate
from memoe.inference import compare
from memoe.lmm import LMM, lmm
from memoe.moe import MEMoE, MoE, select_k

__version__ = "0.1.0"

__all__ = [
    "LMM",
    "MEMoE",
    "MoE",
    "__version__",
    "compare",
    "datasets",
    "errors",
    "lmm",
    "persist",
    "select_k",
    "simulate",
]

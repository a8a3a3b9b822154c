"""memoe: mixed-effects models and the Mixed-Effects Mixture of Experts (MEMoE) for longitudinal data."""

from memoe import datasets, errors
from memoe.inference import compare
from memoe.lmm import LMM, lmm

__version__ = "0.1.0"

__all__ = ["LMM", "__version__", "compare", "datasets", "errors", "lmm"]

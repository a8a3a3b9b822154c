"""Linear mixed models (lme4's ``lmer``): the model, its profiled-deviance objective, the result."""

from memoe.lmm.model import LMM, FitControl, lmm
from memoe.lmm.result import LmmResult

__all__ = ["LMM", "FitControl", "LmmResult", "lmm"]

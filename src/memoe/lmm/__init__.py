"""Linear mixed models (lme4's ``lmer``): the model, its profiled-deviance objective, the result."""

# registers the family's .memoe codec with memoe.core.persist (which imports no family)
from memoe.lmm import lmlist_persist as _lmlist_persist  # noqa: F401
from memoe.lmm import persist as _persist  # noqa: F401
from memoe.lmm.factory import lmm
from memoe.lmm.lmlist import LmList, LmListResult, lmlist
from memoe.lmm.model import LMM, FitControl
from memoe.lmm.result import LmmResult

__all__ = ["LMM", "FitControl", "LmList", "LmListResult", "LmmResult", "lmlist", "lmm"]

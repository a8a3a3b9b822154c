"""Generalised estimating equations (geepack's ``geeglm``).

Modules: :mod:`~memoe.gee.model` (the model and geepack's iteration), :mod:`~memoe.gee.clusters`,
:mod:`~memoe.gee.correlation`, :mod:`~memoe.gee.families`, :mod:`~memoe.gee.variance`,
:mod:`~memoe.gee.result`, :mod:`~memoe.gee.summary`, :mod:`~memoe.gee.validation`,
:mod:`~memoe.gee.persist`.
"""

# registers the family's .memoe codec with memoe.core.persist (which imports no family)
from memoe.gee import persist as _persist  # noqa: F401
from memoe.gee.clusters import GEEOrderWarning
from memoe.gee.model import GEE, gee
from memoe.gee.result import GEEResult
from memoe.gee.summary import GEESummary

__all__ = ["GEE", "GEEOrderWarning", "GEEResult", "GEESummary", "gee"]

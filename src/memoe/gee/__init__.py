"""Generalised estimating equations (geepack's ``geeglm``)."""

# registers the family's .memoe codec with memoe.core.persist (which imports no family)
from memoe.gee import persist as _persist  # noqa: F401
from memoe.gee.model import GEE, GEEOrderWarning, GEEResult, gee

__all__ = ["GEE", "GEEOrderWarning", "GEEResult", "gee"]

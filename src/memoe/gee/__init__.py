"""Generalised estimating equations (geepack's ``geeglm``)."""

from memoe.gee.model import GEE, GEEOrderWarning, GEEResult, gee

__all__ = ["GEE", "GEEOrderWarning", "GEEResult", "gee"]

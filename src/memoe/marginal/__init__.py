"""Residual correlation and variance structures: nlme's ``gls`` and ``lme`` with ``correlation=`` / ``weights=``.

The second likelihood path of memoe: per-group marginal covariances
``V_i = Z_i G Z_i' + sigma^2 S_i C_i S_i`` (random effects, correlation structure C, variance
function S), factored in batches of groups with the same size, beta and sigma^2 profiled out as in
nlme. See :mod:`memoe.marginal.problem` for the objective.

>>> from memoe.marginal import gls, lme, AR1, CAR1, Exp, Symm, VarIdent  # doctest: +SKIP
>>> from memoe.marginal import VarPower, VarExp, VarConstPower, VarFixed, VarComb, ARMA, Gaus, Spher, Lin, Ratio
>>> fit = lme("follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)",
...           ovary, correlation=AR1()).fit(reml=True)  # doctest: +SKIP
"""

# registers the family's .memoe codec with memoe.core.persist (which imports no family)
from memoe.marginal import persist as _persist  # noqa: F401
from memoe.marginal.arma import ARMA
from memoe.marginal.correlation import AR1, CAR1, CompSymm, CorStruct, Symm
from memoe.marginal.model import GLS, LME, gls, lme
from memoe.marginal.result import MarginalResult
from memoe.marginal.spatial import Exp, Gaus, Lin, Ratio, Spher
from memoe.marginal.varcomb import VarComb
from memoe.marginal.varfunc import VarConstPower, VarExp, VarFixed, VarPower
from memoe.marginal.variance import VarIdent

__all__ = [
    "AR1",
    "ARMA",
    "CAR1",
    "GLS",
    "LME",
    "CompSymm",
    "CorStruct",
    "Exp",
    "Gaus",
    "Lin",
    "MarginalResult",
    "Ratio",
    "Spher",
    "Symm",
    "VarComb",
    "VarConstPower",
    "VarExp",
    "VarFixed",
    "VarIdent",
    "VarPower",
    "gls",
    "lme",
]

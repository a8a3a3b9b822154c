"""All residual structures in one place: correlation structures and variance functions."""

from memoe.marginal.arma import ARMA
from memoe.marginal.correlation import AR1, CAR1, CompSymm, CorStruct, Symm
from memoe.marginal.spatial import Exp, Gaus, Lin, Ratio, Spher
from memoe.marginal.varcomb import VarComb
from memoe.marginal.varfunc import VarConstPower, VarExp, VarFixed, VarPower
from memoe.marginal.variance import VarIdent

__all__ = [
    "AR1",
    "ARMA",
    "CAR1",
    "CompSymm",
    "CorStruct",
    "Exp",
    "Gaus",
    "Lin",
    "Ratio",
    "Spher",
    "Symm",
    "VarComb",
    "VarConstPower",
    "VarExp",
    "VarFixed",
    "VarIdent",
    "VarPower",
]

"""All residual structures in one place: correlation structures and variance functions."""

from memoe.marginal.correlation import AR1, CAR1, CompSymm, CorStruct, Exp, Symm
from memoe.marginal.variance import VarIdent

__all__ = ["AR1", "CAR1", "CompSymm", "CorStruct", "Exp", "Symm", "VarIdent"]

"""lme4 formula syntax: bar terms are parsed here, the fixed part is handed to formulaic."""

from memoe.core.formula.names import r_column_name
from memoe.core.formula.parse import FormulaSpec, RandomTermSpec, parse_formula

__all__ = ["FormulaSpec", "RandomTermSpec", "parse_formula", "r_column_name"]

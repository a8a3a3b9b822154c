"""lme4 formula syntax: bar terms are parsed here, the fixed part is handed to formulaic."""

from memoe.formula.names import r_column_name
from memoe.formula.parse import FormulaSpec, RandomTermSpec, parse_formula

__all__ = ["FormulaSpec", "RandomTermSpec", "parse_formula", "r_column_name"]

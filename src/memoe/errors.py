"""Exception and warning hierarchy for memoe.

Every error raised on bad user input derives from :class:`MemoeError`, so a caller can catch
one class; the subclasses say which stage rejected the input. Messages name the column, term,
row count or level at fault.
"""

from __future__ import annotations


class MemoeError(Exception):
    """Base class of every memoe error."""


class FormulaError(MemoeError, ValueError):
    """The model formula cannot be parsed; the message quotes the offending term."""


class DataError(MemoeError, ValueError):
    """The data do not fit the formula (missing column, wrong type, nothing left after NA removal)."""


class IdentifiabilityError(MemoeError, ValueError):
    """The random-effects structure cannot be identified from the data (lme4's checks)."""


class ConvergenceError(MemoeError, RuntimeError):
    """An optimiser or EM run failed outright (not merely a convergence warning)."""


class ModelComparisonError(MemoeError, ValueError):
    """Models cannot be compared (different data, not nested, ...)."""


class HypothesisError(MemoeError, ValueError):
    """A hypothesis or contrast cannot be interpreted (unknown coefficient, wrong shape)."""


class FamilyError(MemoeError, ValueError):
    """Unknown response family, or a link the family does not support."""


class QuadratureError(MemoeError, ValueError):
    """``nAGQ`` is invalid or not available for the model's random-effects structure."""


class PersistenceError(MemoeError, ValueError):
    """A fit cannot be saved (unsupported content) or a file cannot be loaded (wrong type or version)."""


class PersistenceTypeError(PersistenceError, TypeError):
    """``memoe.persist.save`` / ``load`` got an object that is neither a path nor a binary file (or bytes)."""


class MemoeWarning(UserWarning):
    """Base class of memoe warnings."""


class ConvergenceWarning(MemoeWarning):
    """The optimiser stopped but the convergence checks (gradient, Hessian) are not satisfied."""


class SingularFitWarning(MemoeWarning):
    """Boundary (singular) fit: a random-effects covariance matrix is not of full rank."""


class RankDeficiencyWarning(MemoeWarning):
    """Aliased fixed-effects columns were dropped."""


class EmptyExpertWarning(MemoeWarning):
    """An expert of a mixture lost (almost) all of its posterior mass during EM."""


class NonIntegerResponseWarning(MemoeWarning):
    """Counts (Poisson) or numbers of successes (binomial) are not whole numbers, as R warns."""


class ArgumentError(MemoeError, ValueError):
    """A function argument has the wrong value or is out of range; the message names it and what is accepted."""


class ArgumentTypeError(ArgumentError, TypeError):
    """A function argument has the wrong type; the message names it, the type given and the types accepted."""

"""Public entry point for saving and loading fits: ``memoe.persist.save(fit, path)``, ``memoe.persist.load(path)``.

The archive format and the codec registry live in :mod:`memoe.core.persist`; each model family
registers its own codec. Loading is safe on files from others: no code runs (formulas are checked
against an allow-list by :mod:`memoe.core.persist.formula_check`), sizes are capped (:class:`Limits`).
"""

from memoe.core.persist import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    Limits,
    PersistenceError,
    PersistenceTypeError,
    load,
    save,
)

__all__ = ["DEFAULT_LIMITS", "FORMAT_VERSION", "Limits", "PersistenceError", "PersistenceTypeError", "load", "save"]

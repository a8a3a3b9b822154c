"""Public entry point for saving and loading fits: ``memoe.persist.save(fit, path)``, ``memoe.persist.load(path)``.

The archive format and the codec registry live in :mod:`memoe.core.persist`; each model family
registers its own codec.
"""

from memoe.core.persist import FORMAT_VERSION, PersistenceError, load, save

__all__ = ["FORMAT_VERSION", "PersistenceError", "load", "save"]

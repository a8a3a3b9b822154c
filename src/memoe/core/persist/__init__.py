"""Save fitted models to one safe file and load them back: ``memoe.persist.save(fit, "m.memoe")``.

A ``.memoe`` file is a zip archive of two members:

* ``meta.json``: format name and version, the memoe version, the result and model classes, the
  formula(s) and options, the fit's record (convergence, messages, multi-start table), the
  categorical levels and string columns of the data, and a readable copy of the estimates;
* ``arrays.npz``: ``numpy.savez`` arrays (parameters, numeric data columns, categorical codes,
  optimiser record), read back with ``allow_pickle=False``.

Nothing is pickled, so loading a file cannot run code. The fitted numbers are not stored as the
source of truth: loading rebuilds the model from the saved formula and data columns and constructs
the result at the saved parameters without optimising, so every extractor of the loaded fit is the
same code path as the original and gives the same numbers; the saved log-likelihood is checked (for a
GEE, which has none, the robust standard errors). Structure objects (GLMM family and link,
correlation structures, variance functions) are stored as plain JSON descriptions and rebuilt on load.
The codecs: :mod:`memoe.lmm.persist`, :mod:`~memoe.moe.persist`, :mod:`~memoe.glmm.persist`,
:mod:`~memoe.marginal.persist`, :mod:`~memoe.gee.persist`.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np

from memoe.core.persist.archive import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PathOrFile,
    PersistenceError,
    read_archive,
    write_archive,
)

__all__ = ["FORMAT_VERSION", "PersistenceError", "load", "save"]

_RESULT_CLASSES = ("LmmResult", "MEMoEResult", "GlmmResult", "MarginalResult", "GEEResult")


def save(fit, path: PathOrFile) -> None:
    """Save a fitted model to one ``.memoe`` file (zip of ``meta.json`` and ``arrays.npz``, no pickle).

    Parameters
    ----------
    fit : LmmResult, MEMoEResult, GlmmResult, MarginalResult or GEEResult
        From ``memoe.lmm(...).fit()``, ``memoe.MEMoE(...).fit()``, ``memoe.MoE(...).fit()``,
        ``memoe.glmm(...).fit()`` (or ``.result_at(...)``), ``memoe.gls(...).fit()``,
        ``memoe.lme(...).fit()`` or ``memoe.gee(...).fit()``.
    path : str, path-like or binary file object
        Written (overwritten) as given; ``.memoe`` is the customary suffix.

    Raises
    ------
    PersistenceError
        Another kind of object, or a data column holding values that JSON cannot represent.

    Examples
    --------
    >>> import memoe, memoe.persist, tempfile, os
    >>> fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).fit()
    >>> path = os.path.join(tempfile.mkdtemp(), "sleep.memoe")
    >>> memoe.persist.save(fit, path)
    >>> memoe.persist.load(path).fixef.equals(fit.fixef)
    True
    """
    kind, encode = _encoder(fit)
    arrays: dict[str, np.ndarray] = {}
    body = encode(fit, arrays)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "memoe_version": _memoe_version(),
        "saved_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "class": kind,
        **body,
    }
    write_archive(path, meta, arrays)


def load(path: PathOrFile):
    """Load a fit saved by :func:`save`.

    Parameters
    ----------
    path : str, path-like or binary file object

    Returns
    -------
    LmmResult, MEMoEResult, GlmmResult, MarginalResult or GEEResult
        The class that was saved, with the same numbers as the saved fit.

    Raises
    ------
    PersistenceError
        Not a memoe file, an unsupported or newer format version, content that would need unpickling,
        or a file whose rebuilt fit does not reproduce the saved log-likelihood (GEE: standard errors).
    """
    meta, arrays = read_archive(path)
    kind = meta.get("class")
    if kind == "LmmResult":
        from memoe.lmm.persist import decode_lmm

        return decode_lmm(meta, arrays)
    if kind == "MEMoEResult":
        from memoe.moe.persist import MODEL_CLASSES, decode_memoe

        model_class = meta.get("model", {}).get("class")
        if model_class not in MODEL_CLASSES:
            raise PersistenceError(
                f"unsupported model class {model_class!r} (this memoe loads {sorted(MODEL_CLASSES)})"
            )
        return decode_memoe(meta, arrays)
    if kind == "GlmmResult":
        from memoe.glmm.persist import decode_glmm

        return decode_glmm(meta, arrays)
    if kind == "MarginalResult":
        from memoe.marginal.persist import MODEL_CLASSES as MARGINAL_CLASSES
        from memoe.marginal.persist import decode_marginal

        model_class = meta.get("model", {}).get("class")
        if model_class not in MARGINAL_CLASSES:
            raise PersistenceError(
                f"unsupported model class {model_class!r} (this memoe loads {sorted(MARGINAL_CLASSES)})"
            )
        return decode_marginal(meta, arrays)
    if kind == "GEEResult":
        from memoe.gee.persist import decode_gee

        return decode_gee(meta, arrays)
    raise PersistenceError(f"unsupported result class {kind!r} (this memoe loads {list(_RESULT_CLASSES)})")


def _encoder(fit):
    # exact classes only: a subclass may hold state this format does not keep
    from memoe.gee.model import GEE, GEEResult
    from memoe.glmm.model import GLMM
    from memoe.glmm.result import GlmmResult
    from memoe.lmm.model import LMM
    from memoe.lmm.result import LmmResult
    from memoe.marginal.result import MarginalResult
    from memoe.moe.result import MEMoEResult

    if type(fit) is LmmResult and type(fit.model) is LMM:
        from memoe.lmm.persist import encode_lmm

        return "LmmResult", encode_lmm
    if type(fit) is MEMoEResult:
        from memoe.moe.persist import MODEL_CLASSES, encode_memoe

        if type(fit.model) in MODEL_CLASSES.values():
            return "MEMoEResult", encode_memoe
    if type(fit) is GlmmResult and type(fit.model) is GLMM:
        from memoe.glmm.persist import encode_glmm

        return "GlmmResult", encode_glmm
    if type(fit) is MarginalResult:
        from memoe.marginal.persist import MODEL_CLASSES as MARGINAL_CLASSES
        from memoe.marginal.persist import encode_marginal

        if type(fit.model) in MARGINAL_CLASSES.values():
            return "MarginalResult", encode_marginal
    if type(fit) is GEEResult and type(fit.model) is GEE:
        from memoe.gee.persist import encode_gee

        return "GEEResult", encode_gee
    raise PersistenceError(
        f"memoe.persist saves LmmResult (of memoe.lmm), MEMoEResult (of memoe.MEMoE / memoe.MoE), GlmmResult "
        f"(of memoe.glmm), MarginalResult (of memoe.gls / memoe.lme) and GEEResult (of memoe.gee) fits, "
        f"not {type(fit).__name__}"
    )


def _memoe_version() -> str:
    # imported at call time: memoe/__init__ may import this module before it defines __version__
    import memoe

    return str(getattr(memoe, "__version__", "unknown"))

"""Save fitted models to one safe file and load them back: ``memoe.persist.save(fit, "m.memoe")``.

A ``.memoe`` file is a zip archive of two members:

* ``meta.json``: format name and version, the memoe version, the result and model classes, the
  formula(s) and options, the fit's record (convergence, messages, multi-start table), the
  categorical levels and string columns of the data, and a readable copy of the estimates;
* ``arrays.npz``: ``numpy.savez`` arrays (parameters, numeric data columns, categorical codes,
  optimiser record).

A file from someone else is data: loading it never unpickles, never evaluates anything but
allow-listed formula pieces (:mod:`~memoe.core.persist.formula_check`, applied before the model is
rebuilt), caps every size before allocating (:class:`~memoe.core.persist.archive.Limits`), and
reports every problem as a :class:`~memoe.errors.PersistenceError`. The fitted numbers are not
stored as the source of truth: loading rebuilds the model from the saved formula and data columns
and constructs the result at the saved parameters without optimising, so every extractor of the
loaded fit is the same code path as the original and gives the same numbers; the saved
log-likelihood is checked (for a GEE, which has none, the robust standard errors).

Each family registers its codec (:mod:`~memoe.core.persist.registry`) from its own ``persist``
module: :mod:`memoe.lmm.persist`, :mod:`~memoe.moe.persist`, :mod:`~memoe.glmm.persist`,
:mod:`~memoe.marginal.persist`, :mod:`~memoe.gee.persist`. This package imports no family.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np

from memoe.core.persist.archive import (
    DEFAULT_LIMITS,
    FORMAT_NAME,
    FORMAT_VERSION,
    Limits,
    PathOrFile,
    PersistenceError,
    Source,
    read_archive,
    write_archive,
)
from memoe.core.persist.registry import codec_for_fit, codec_named, register_codec, registered
from memoe.errors import MemoeError, PersistenceTypeError

__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "Limits",
    "PersistenceError",
    "PersistenceTypeError",
    "load",
    "register_codec",
    "save",
]


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
    PersistenceTypeError
        ``path`` is not a path or a binary file object.
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
    codec = codec_for_fit(fit)
    if codec is None:
        kinds = ", ".join(c.description for c in registered())
        raise PersistenceError(f"memoe.persist saves {kinds} fits, not {type(fit).__name__}")
    arrays: dict[str, np.ndarray] = {}
    body = codec.encode(fit, arrays)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "memoe_version": _memoe_version(),
        "saved_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "class": codec.name,
        **body,
    }
    write_archive(path, meta, arrays)


def load(source: Source, *, limits: Limits | None = None):
    """Load a fit saved by :func:`save`; safe on files from others (no code runs, sizes are capped).

    Parameters
    ----------
    source : str, path-like, bytes-like or binary file object
        A path, the file's contents (``bytes``, ``bytearray``, ``memoryview``) or a binary file object
        open for reading (not closed here).
    limits : Limits, optional
        Size caps (:data:`DEFAULT_LIMITS`: 2 GiB decompressed, JSON 64 levels deep, ...).

    Returns
    -------
    LmmResult, MEMoEResult, GlmmResult, MarginalResult or GEEResult
        The class that was saved, with the same numbers as the saved fit.

    Raises
    ------
    PersistenceTypeError
        ``source`` is none of the accepted types (e.g. None, a number, a text-mode file).
    PersistenceError
        Anything else that stops the load: not a memoe file, an unsupported or newer format version,
        a size beyond ``limits``, content that would need unpickling, a formula with pieces outside the
        allow-list, missing or mistyped entries, or a file whose rebuilt fit does not reproduce the
        saved log-likelihood (GEE: standard errors).

    Examples
    --------
    >>> import memoe
    >>> fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).fit()
    >>> fit.save("sleep.memoe")
    >>> same = memoe.load("sleep.memoe")
    >>> bool((same.params == fit.params).all())
    True
    """
    meta, arrays = read_archive(source, limits)
    name = _describe(source)
    kind = meta.get("class")
    codec = codec_named(kind)
    if codec is None:
        known = [c.name for c in registered()]
        raise PersistenceError(f"unsupported result class {_short(kind)} (this memoe loads {known})")
    model = meta.get("model")
    if not isinstance(model, dict):
        raise PersistenceError(f"{name}: the saved {kind} has no 'model' record (found {type(model).__name__})")
    model_class = model.get("class")
    if not isinstance(model_class, str) or model_class not in codec.model_types:
        raise PersistenceError(
            f"unsupported model class {_short(model_class)} for {kind} (this memoe loads {sorted(codec.model_types)})"
        )
    try:
        # before anything evaluates a string from the file
        codec.check(meta)
        return codec.decode(meta, arrays)
    except PersistenceError:
        raise
    except MemoeError as exc:
        raise PersistenceError(f"{name}: the saved {kind} cannot be rebuilt: {exc}") from exc
    except Exception as exc:
        raise PersistenceError(
            f"{name}: the saved {kind} is malformed or inconsistent ({type(exc).__name__}: {_clip(str(exc))})"
        ) from exc


def _describe(source: object) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    return repr(str(getattr(source, "name", source)))


def _short(value: object) -> str:
    return _clip(repr(value), 80)


def _clip(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _memoe_version() -> str:
    # imported at call time: memoe/__init__ may import this module before it defines __version__
    import memoe

    return str(getattr(memoe, "__version__", "unknown"))

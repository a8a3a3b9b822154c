"""The codec registry: each model family registers how its fits are saved and rebuilt.

:mod:`memoe.core.persist` imports no family. A family's ``persist`` module calls
:func:`register_codec` at import time, and the family package imports that module, so a family's
codec is registered whenever the family is (``import memoe`` imports every family).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["Codec", "codec_for_fit", "codec_named", "register_codec", "registered"]

Encode = Callable[[Any, dict[str, np.ndarray]], dict]
Decode = Callable[[dict, dict[str, np.ndarray]], Any]
Check = Callable[[dict], None]


@dataclasses.dataclass(frozen=True)
class Codec:
    """How one result class is written to and rebuilt from a ``.memoe`` file.

    Attributes
    ----------
    name : str
        The ``class`` recorded in ``meta.json`` (``"LmmResult"``).
    result_type : type
        The exact result class saved (subclasses may hold state the format does not keep).
    model_types : Mapping[str, type]
        The model classes whose fits this codec saves, by the name recorded in ``meta["model"]["class"]``.
    encode : callable
        ``encode(fit, arrays) -> dict``: the ``model``/``fit``/``estimates`` parts of ``meta.json``;
        arrays go to ``arrays``.
    decode : callable
        ``decode(meta, arrays) -> fit``: rebuilds the model and the result (no optimisation).
    check : callable
        ``check(meta)``: refuses (with :class:`~memoe.errors.PersistenceError`) a file whose formulas or
        column fields are not on the allow-list of :mod:`memoe.core.persist.formula_check`; called
        before ``decode``, which is the only step that evaluates anything from the file.
    description : str
        How messages name the fits (``"LmmResult (of memoe.lmm)"``).
    """

    name: str
    result_type: type
    model_types: Mapping[str, type]
    encode: Encode
    decode: Decode
    check: Check
    description: str


_CODECS: dict[str, Codec] = {}


def register_codec(
    name: str,
    *,
    result_type: type,
    model_types: Mapping[str, type],
    encode: Encode,
    decode: Decode,
    check: Check,
    description: str | None = None,
) -> Codec:
    """Register the codec of one result class (a later registration of the same name replaces it).

    Parameters
    ----------
    name, result_type, model_types, encode, decode, check, description
        See :class:`Codec`; ``description`` defaults to ``name``.

    Returns
    -------
    Codec
    """
    codec = Codec(
        name=name, result_type=result_type, model_types=dict(model_types), encode=encode, decode=decode,
        check=check, description=description or name,
    )
    # replacing (not refusing) keeps importlib.reload of a family module working
    _CODECS[name] = codec
    return codec


def codec_for_fit(fit: object) -> Codec | None:
    """The codec saving ``fit``: its exact result class and the exact class of its model."""
    model_type = type(getattr(fit, "model", None))
    for codec in _CODECS.values():
        if type(fit) is codec.result_type and any(model_type is t for t in codec.model_types.values()):
            return codec
    return None


def codec_named(name: object) -> Codec | None:
    """The codec registered under ``name`` (the ``class`` of ``meta.json``), or None."""
    return _CODECS.get(name) if isinstance(name, str) else None


def registered() -> list[Codec]:
    """The registered codecs, in registration order."""
    return list(_CODECS.values())

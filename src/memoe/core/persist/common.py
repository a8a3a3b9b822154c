"""Pieces shared by the LMM and MEMoE codecs: plain JSON values, dataclass records, the model frame."""

from __future__ import annotations

import dataclasses

import numpy as np

from memoe.core.design import Design
from memoe.core.design.frame import ModelFrame
from memoe.core.persist.archive import PersistenceError
from memoe.core.persist.formula_check import check_column
from memoe.core.persist.frames import decode_index, encode_index

__all__ = [
    "check_columns",
    "check_equal",
    "check_loglik",
    "decode_dataclass",
    "encode_dataclass",
    "encode_frame_record",
    "encode_model_frame",
    "plain",
    "restore_frame_record",
    "restore_model_frame",
    "saved_columns",
]

# a rebuilt fit must reproduce the saved log-likelihood to this relative accuracy: the same code on the
# same numbers gives the same bits; across machines BLAS may move the last few digits, never more
LOGLIK_RTOL = 1e-9


def plain(v):
    """``v`` with numpy scalars and tuples turned into JSON types (NaN and infinities kept as floats)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def encode_dataclass(obj, key: str, arrays: dict[str, np.ndarray]) -> dict:
    """Record of a dataclass instance: array fields go to ``arrays``, the others to JSON.

    Generic over the fields, so a new field of :class:`~memoe.core.optim.OptSummary` or
    :class:`~memoe.core.optim.checks.ConvergenceReport` is saved without touching this module.
    """
    values, array_fields = {}, []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, np.ndarray):
            arrays[f"{key}.{f.name}"] = v
            array_fields.append(f.name)
        else:
            values[f.name] = plain(v)
    return {"values": values, "arrays": array_fields}


def decode_dataclass(cls, spec: dict, key: str, arrays: dict[str, np.ndarray]):
    """Instance of ``cls`` from a record of :func:`encode_dataclass` (unknown fields refused)."""
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = dict(spec["values"])
    kwargs.update({name: arrays[f"{key}.{name}"] for name in spec["arrays"]})
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise PersistenceError(f"the saved {cls.__name__} has fields {unknown} this memoe does not know")
    return cls(**kwargs)


def encode_frame_record(frame: ModelFrame, key: str, arrays: dict[str, np.ndarray]) -> dict:
    """The missing-value record of a model frame (which input rows were kept, and why not the others).

    Only the kept rows are saved (the fit never keeps the dropped ones); this record restores
    ``n_dropped``, the per-column counts and the alignment of per-row outputs to the input rows.
    """
    arrays[f"{key}.row_mask"] = np.asarray(frame.row_mask, dtype=bool)
    return {
        "index": encode_index(frame.index, f"{key}.index", arrays),
        "n_dropped": int(frame.n_dropped),
        "dropped_by_column": [[plain(c), int(k)] for c, k in frame.dropped_by_column.items()],
    }


def restore_frame_record(frame: ModelFrame, spec: dict, key: str, arrays: dict[str, np.ndarray]) -> ModelFrame:
    """``frame`` (rebuilt from the kept rows) with the saved missing-value record put back."""
    out = dataclasses.replace(
        frame,
        row_mask=arrays[f"{key}.row_mask"],
        index=decode_index(spec["index"], f"{key}.index", arrays),
        n_dropped=int(spec["n_dropped"]),
        dropped_by_column={c: int(k) for c, k in spec["dropped_by_column"]},
    )
    n = len(frame.data)
    if int(out.row_mask.sum()) != n or len(out.row_mask) != len(out.index):
        raise PersistenceError(
            f"the saved row record ({int(out.row_mask.sum())} kept of {len(out.row_mask)}) does not match "
            f"the {n} rows rebuilt from the saved data"
        )
    return out


def encode_model_frame(design: Design, key: str, arrays: dict[str, np.ndarray]) -> dict:
    """:func:`encode_frame_record` of ``design.frame``."""
    return encode_frame_record(design.frame, key, arrays)


def restore_model_frame(design: Design, spec: dict, key: str, arrays: dict[str, np.ndarray]) -> Design:
    """``design`` rebuilt from the kept rows, with the saved missing-value record put back."""
    frame = restore_frame_record(design.frame, spec, key, arrays)
    if len(frame.data) != design.n:
        raise PersistenceError(f"the rebuilt model frame has {len(frame.data)} rows, the design {design.n}")
    return dataclasses.replace(design, frame=frame)


def saved_columns(model: dict, key: str = "data") -> list[str]:
    """Names of the columns of the saved data ``model[key]`` (an :func:`~memoe.core.persist.frames.encode_frame` spec).

    The names the saved formulas may read; refuses a malformed spec before anything uses it.
    """
    spec = model.get(key) if isinstance(model, dict) else None
    columns = spec.get("columns") if isinstance(spec, dict) else None
    if not isinstance(columns, list) or not all(isinstance(c, dict) and "name" in c for c in columns):
        raise PersistenceError(f"the saved model has no readable {key!r} record (a list of columns with names)")
    names = [c["name"] for c in columns]
    bad = [n for n in names if not isinstance(n, str | int | float | bool) and n is not None]
    if bad:
        raise PersistenceError(f"the saved data have column names of unsupported types: {bad[:3]!r}")
    return [str(n) for n in names]


def check_columns(model: dict, fields: dict[str, str], columns: list[str], what: str) -> None:
    """Refuse saved column-name fields (``{"group": "the group of ..."}``) that are not saved columns.

    ``None`` is accepted (an optional column); anything else must be a string naming a saved column.
    """
    for field, desc in fields.items():
        check_column(model.get(field), columns, what=f"{desc} of the saved {what}")


def check_equal(what: str, saved, rebuilt) -> None:
    """Refuse a file whose rebuilt model differs from the saved one in ``what``."""
    if plain(saved) != plain(rebuilt):
        raise PersistenceError(f"the rebuilt model's {what} {plain(rebuilt)!r} differ from the saved {plain(saved)!r}")


def check_loglik(saved: float, rebuilt: float) -> None:
    """Refuse a rebuilt fit that does not reproduce the saved log-likelihood (a changed engine or file)."""
    if not abs(rebuilt - saved) <= LOGLIK_RTOL * max(1.0, abs(saved)):
        raise PersistenceError(
            f"the rebuilt fit has log-likelihood {rebuilt!r}, the saved fit {saved!r}: the file does not "
            "reproduce its fit (edited file or a changed memoe engine)"
        )

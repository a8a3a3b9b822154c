"""Save and rebuild an :class:`~memoe.lmm.lmlist.LmListResult`.

The file keeps the formula, the pool setting and the used columns of the kept rows; loading refits
the per-group least squares (no optimiser: the same numbers) and checks the log-likelihood.
"""

from __future__ import annotations

import numpy as np

from memoe.core.persist.common import (
    check_loglik,
    encode_frame_record,
    plain,
    restore_frame_record,
    saved_columns,
)
from memoe.core.persist.formula_check import check_formula
from memoe.core.persist.frames import decode_frame, encode_frame
from memoe.core.persist.registry import register_codec
from memoe.errors import PersistenceError
from memoe.lmm.lmlist import LmList, LmListResult

__all__ = ["check_lmlist", "decode_lmlist", "encode_lmlist"]


def encode_lmlist(fit: LmListResult, arrays: dict[str, np.ndarray]) -> dict:
    """The ``model`` and ``fit`` parts of ``meta.json`` for an lmList fit."""
    m = fit.model
    return {
        "model": {
            "class": "LmList",
            "formula": m.formula,
            "pool": m.pool,
            "data_name": m.data_name,
            "data": encode_frame(m.frame.data, "data", arrays, "the model frame"),
            "frame": encode_frame_record(m.frame, "frame", arrays),
            "names": list(m.names),
        },
        "fit": {"loglik": float(fit.loglik)},
        "estimates": {"coef": plain(fit.coef().to_dict()), "sigma": float(fit.sigma), "nobs": fit.nobs},
    }


def check_lmlist(meta: dict) -> None:
    """Refuse a file whose formula has pieces outside the allow-list (before anything evaluates it)."""
    m = meta["model"]
    check_formula(m.get("formula"), saved_columns(m), what="the saved lmList formula")
    if not isinstance(m.get("pool"), bool):
        raise PersistenceError(f"the saved lmList's pool must be true or false, the file holds {m.get('pool')!r}")


def decode_lmlist(meta: dict, arrays: dict[str, np.ndarray]) -> LmListResult:
    """Refit the per-group least squares on the saved rows."""
    m = meta["model"]
    data = decode_frame(m["data"], "data", arrays)
    if m.get("data_name") is not None:
        data.attrs["name"] = m["data_name"]
    model = LmList(m["formula"], data, pool=m["pool"])
    if list(model.names) != list(m["names"]):
        raise PersistenceError(f"the rebuilt lmList has coefficients {model.names}, the file {m['names']}")
    model.frame = restore_frame_record(model.frame, m["frame"], "frame", arrays)
    fit = LmListResult(model)
    check_loglik(meta["fit"]["loglik"], fit.loglik)
    return fit


register_codec(
    "LmListResult", result_type=LmListResult, model_types={"LmList": LmList}, encode=encode_lmlist,
    decode=decode_lmlist, check=check_lmlist, description="LmListResult (of memoe.lmlist)",
)


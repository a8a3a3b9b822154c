"""Save and rebuild an :class:`~memoe.lmm.result.LmmResult`.

The file keeps the formula, the used columns of the kept rows, the missing-value record, theta and
the optimiser's record. Loading rebuilds the model from formula and data and constructs the result
at the saved theta exactly as :meth:`memoe.lmm.LMM.fit` does after optimising (no optimisation).
"""

from __future__ import annotations

import numpy as np

from memoe.core.design.contrasts import check_saved_contrasts
from memoe.core.design.prior import same_transform_states, transform_states
from memoe.core.linalg.threads import blas_threads
from memoe.core.optim import ConvergenceReport, OptSummary
from memoe.core.persist.common import (
    check_equal,
    check_loglik,
    decode_dataclass,
    encode_dataclass,
    encode_model_frame,
    plain,
    restore_model_frame,
    saved_columns,
)
from memoe.core.persist.formula_check import check_column, check_formula
from memoe.core.persist.frames import decode_frame, encode_frame
from memoe.core.persist.registry import register_codec
from memoe.errors import PersistenceError
from memoe.lmm.model import LMM
from memoe.lmm.result import LmmResult

__all__ = ["check_lmm", "decode_lmm", "encode_lmm"]


def encode_lmm(fit: LmmResult, arrays: dict[str, np.ndarray]) -> dict:
    """The ``model`` and ``fit`` parts of ``meta.json`` for an LMM fit; arrays go to ``arrays``."""
    model, design = fit.model, fit.design
    arrays["fit.theta"] = np.asarray(fit.state.theta, dtype=float)
    return {
        "model": {
            "class": "LMM",
            "formula": model.formula,
            "data_name": model.data_name,
            "data": encode_frame(design.frame.data, "data", arrays, "the model frame"),
            "frame": encode_model_frame(design, "frame", arrays),
            "fixef_names": list(design.fixef_names),
            "contrasts": dict(design.fixed.contrasts),
            "theta_names": list(design.theta_map.names),
            # model-frame columns of the weights= / offset= arguments (saved with the data), or None
            "weights": design.weights_column,
            "offset": design.offset_column,
            # what the stateful transforms (scale, poly, bs, ...) learned: re-learned from the saved rows on
            # load and compared, so the file holds numbers to check, never code
            "transform_state": transform_states(design),
        },
        "fit": {
            "reml": fit.reml,
            "singular": fit.singular,
            "messages": list(fit.messages),
            "opt": encode_dataclass(fit.opt, "fit.opt", arrays),
            "convergence": encode_dataclass(fit.convergence, "fit.convergence", arrays),
            "loglik": float(fit.loglik),
        },
        # for a human reading meta.json; loading recomputes them from theta
        "estimates": {
            "theta": plain(fit.state.theta),
            "fixef": plain(fit.fixef.to_dict()),
            "sigma": float(fit.sigma),
            "nobs": fit.nobs,
        },
    }


def check_lmm(meta: dict) -> None:
    """Refuse a file whose formula has pieces outside the allow-list (before anything evaluates it)."""
    m = meta["model"]
    check_formula(m.get("formula"), saved_columns(m), what="the saved LMM formula")
    check_saved_contrasts(m.get("contrasts"), saved_columns(m), what="the saved LMM contrasts")
    check_column(m.get("weights"), saved_columns(m), what="the weights column of the saved LMM")
    check_column(m.get("offset"), saved_columns(m), what="the offset column of the saved LMM")


def decode_lmm(meta: dict, arrays: dict[str, np.ndarray]) -> LmmResult:
    """Rebuild the model from the saved formula and data and the result at the saved theta."""
    m, f = meta["model"], meta["fit"]
    data = decode_frame(m["data"], "data", arrays)
    if m.get("data_name") is not None:
        data.attrs["name"] = m["data_name"]
    model = LMM(m["formula"], data, contrasts=m.get("contrasts"), weights=m.get("weights"), offset=m.get("offset"))
    model.design = restore_model_frame(model.design, m["frame"], "frame", arrays)
    check_equal("fixed-effects names", m["fixef_names"], model.design.fixef_names)
    check_equal("theta names", m["theta_names"], model.design.theta_map.names)
    saved_state = m.get("transform_state")
    if saved_state is not None and not same_transform_states(saved_state, transform_states(model.design)):
        raise PersistenceError(
            "the formula's transforms (scale, poly, bs, ...) learned on the saved rows differ from the saved "
            "state: the file does not reproduce its fit"
        )
    # the same BLAS setting as LMM.fit when it builds its result
    with blas_threads(model.problem.blas_threads):
        fit = LmmResult(
            model=model,
            reml=f["reml"],
            theta=arrays["fit.theta"],
            opt=decode_dataclass(OptSummary, f["opt"], "fit.opt", arrays),
            convergence=decode_dataclass(ConvergenceReport, f["convergence"], "fit.convergence", arrays),
            singular=f["singular"],
            messages=f["messages"],
        )
    check_loglik(f["loglik"], fit.loglik)
    return fit


register_codec(
    "LmmResult", result_type=LmmResult, model_types={"LMM": LMM}, encode=encode_lmm, decode=decode_lmm,
    check=check_lmm, description="LmmResult (of memoe.lmm)",
)

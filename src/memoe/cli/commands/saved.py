"""Subcommands on a saved ``.memoe`` fit: ``show``, ``predict`` and ``report``."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from memoe.cli.commands.common import load_data, run_report, wants_glance
from memoe.cli.io import records, write_table
from memoe.errors import ArgumentError, PersistenceError

__all__ = ["cmd_predict", "cmd_report", "cmd_show", "load_fit"]


def load_fit(path: str) -> Any:
    """``memoe.load(path)`` with a missing file reported as such (not as a persistence failure)."""
    import memoe

    p = Path(path)
    if not p.exists():
        raise ArgumentError(f"saved fit '{p}' not found")
    if p.is_dir():
        raise ArgumentError(f"saved fit '{p}' is a directory, not a .memoe file")
    try:
        return memoe.load(p)
    except PersistenceError as exc:
        raise PersistenceError(f"'{p}' is not a readable .memoe fit: {exc}") from None


def cmd_show(args: argparse.Namespace) -> int:
    """Print (or with ``--output`` write) the summary, tidy table or glance row of a saved fit."""
    fit = load_fit(args.fit)
    what = args.what
    if args.output:
        what = what or ("glance" if wants_glance(args.output) else "tidy")
        if what == "summary":
            Path(args.output).write_text(str(fit.summary()) + "\n", encoding="utf-8")
        elif what == "glance":
            write_table(fit.glance(), args.output, "--output", one_row=True)
        else:
            write_table(fit.tidy(conf_int=args.conf_int), args.output, "--output")
        return 0
    what = what or "summary"
    if what == "summary":
        print(fit.summary())
    elif what == "glance":
        # one JSON object on stdout: what a pipeline parses
        print(json.dumps(records(fit.glance())[0], indent=2, allow_nan=False))
    else:
        fit.tidy(conf_int=args.conf_int).to_csv(sys.stdout, index=False)
    return 0


def _re_form(text: str | None) -> str | None:
    if text is None:
        return "full"
    if text.strip().lower() in ("none", "na", "~0", "0"):
        return None
    return text


def cmd_predict(args: argparse.Namespace) -> int:
    """Predictions of a saved fit for ``--data``: the data with the prediction column(s) appended."""
    fit = load_fit(args.fit)
    kw: dict[str, Any] = {"re_form": _re_form(args.re_form), "type": args.type}
    if args.allow_new_levels:
        kw["allow_new_levels"] = True
    if args.interval is not None:
        params = inspect.signature(fit.predict).parameters
        if "interval" not in params:
            raise ArgumentError(f"--interval: {type(fit).__name__}.predict has no interval option in this version of "
                                "memoe; omit --interval for point predictions")
        kw["interval"] = args.interval
    data = load_data(args)
    pred = fit.predict(data, **kw)
    out = data.reset_index(drop=True).copy()
    if isinstance(pred, pd.DataFrame):
        for col in pred.columns:
            out[str(col)] = pred[col].to_numpy()
    else:
        out["predicted"] = pd.Series(pred).to_numpy()
    if args.output:
        write_table(out, args.output, "--output")
    else:
        out.to_csv(sys.stdout, index=False)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``memoe.report(fit, path)`` on a saved fit."""
    fit = load_fit(args.fit)
    run_report(fit, args.output)
    return 0

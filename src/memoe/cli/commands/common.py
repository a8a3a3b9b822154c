"""What every fitting command shares: reading the data, progress, and writing the results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from memoe.cli.io import apply_factors, parse_levels, read_table, write_table
from memoe.errors import ArgumentError

__all__ = ["finish", "load_data", "progress_flag", "run_report", "save_fit", "write_result"]


def load_data(args: argparse.Namespace) -> pd.DataFrame:
    """``--data`` read, with ``--factor`` / ``--levels`` applied."""
    df = read_table(args.data, "--data")
    return apply_factors(df, getattr(args, "factor", None), parse_levels(getattr(args, "levels", None)))


def progress_flag(args: argparse.Namespace) -> bool | None:
    """``False`` with ``--no-progress`` / ``--quiet``; else ``None`` (the fit shows bars when stderr is a terminal)."""
    if getattr(args, "no_progress", False) or getattr(args, "quiet", False) or not sys.stderr.isatty():
        return False
    return None


def wants_glance(path: str | Path) -> bool:
    """An ``--output`` path whose name ends in ``glance`` (``glance.json``, ``fit-glance.csv``) gets the glance row."""
    return Path(path).stem.lower().endswith("glance")


def write_result(fit: Any, path: str, conf_int: bool = False, what: str | None = None) -> None:
    """Write the tidy table, or the glance row, of ``fit`` to ``path`` (format by extension).

    Parameters
    ----------
    what : {"tidy", "glance"}, optional
        Default: glance when the file name ends in ``glance``, else tidy.
    """
    what = what or ("glance" if wants_glance(path) else "tidy")
    if what == "glance":
        write_table(fit.glance(), path, "--output", one_row=True)
    else:
        write_table(fit.tidy(conf_int=True) if conf_int else fit.tidy(), path, "--output")


def run_report(fit: Any, path: str) -> None:
    """``memoe.report(fit, path)``, imported lazily (the plotting extra may be missing)."""
    report = None
    try:
        import memoe

        report = getattr(memoe, "report", None)
        if report is None:
            from memoe.plot.report import report  # type: ignore[no-redef]
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        if missing and not str(missing).startswith("memoe"):
            raise ArgumentError(
                f"writing a report needs the plotting dependencies ({missing} is not installed)"
            ) from None
        raise ArgumentError("writing a report needs memoe.report (memoe.plot.report), which this installation of memoe "
                            "does not have") from None
    report(fit, path)


def save_fit(fit: Any, path: str) -> None:
    """``fit.save(path)`` with an unwritable path reported as an argument error."""
    try:
        fit.save(path)
    except OSError as exc:
        raise ArgumentError(f"--save '{path}' cannot be written: {exc.strerror or exc}") from None


def finish(fit: Any, args: argparse.Namespace, printed: Any = None) -> int:
    """Print the summary (unless ``--quiet``), then ``--output``, ``--save`` and ``--report``.

    ``--save`` comes first among the files: a fit worth minutes is kept even if a later file fails.
    """
    if not args.quiet:
        print(printed if printed is not None else fit.summary())
    if getattr(args, "save", None):
        save_fit(fit, args.save)
    if getattr(args, "output", None):
        write_result(fit, args.output, conf_int=getattr(args, "conf_int", False))
    if getattr(args, "report", None):
        run_report(fit, args.report)
    return 0

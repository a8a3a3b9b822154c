"""The ``memoe`` command: fit every model family from a data file, save fits, export tidy / glance tables.

Subcommands: ``fit`` (LMM / GLMM), ``gls``, ``lme``, ``gee``, ``memoe``, ``select-k``, ``show``,
``predict``, ``report``, ``demo``, ``datasets``; ``memoe COMMAND --help`` shows each one's examples.

Errors are one line on stderr (``memoe fit: error: ...``) with exit status 2 for usage and data errors
and 1 for a fit that failed; ``--debug`` adds the traceback. Warnings are one line each on stderr.
"""

from __future__ import annotations

import contextlib
import re
import sys
import traceback
import warnings
from typing import Any

__all__ = ["main", "one_line"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def one_line(message: Any) -> str:
    """A message as one plain line: ANSI colour codes stripped, continuation lines joined.

    formulaic marks the offending token with colour codes and ``⧛ ... ⧚`` on a second line; that line
    is kept (as ``at: ...``) because it shows where the formula is wrong.

    Parameters
    ----------
    message : object
        An exception or message; ``str(message)`` is cleaned.

    Returns
    -------
    str
        One line of plain text (empty if the message was blank).

    Examples
    --------
    >>> from memoe.cli import one_line
    >>> one_line(ValueError("unknown column 'Dayz'"))
    "unknown column 'Dayz'"

    """
    text = _ANSI.sub("", str(message)).replace("⧛", ">>").replace("⧚", "<<")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    head, rest = lines[0], lines[1:]
    if rest and any(">>" in ln for ln in rest):
        return f"{head} (at: {' '.join(rest)})"
    return " ".join(lines)


def _exit_status(exc: BaseException) -> int:
    """2 for usage and data errors, 1 for a fit that failed (or an unexpected failure)."""
    from memoe.errors import ConvergenceError, MemoeError

    if isinstance(exc, ConvergenceError):
        return 1
    if isinstance(exc, MemoeError | FileNotFoundError | IsADirectoryError | PermissionError):
        return 2
    return 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr, ``memoe: warning: ConvergenceWarning: ...`` (no source line)."""
    print(f"memoe: warning: {category.__name__}: {one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``memoe`` command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after ``memoe`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 success, 1 a fit that failed, 2 a usage or data error.

    Examples
    --------
    >>> from memoe.cli import main
    >>> main(["datasets"])  # doctest: +SKIP
    0
    """

    from memoe.cli.parser import UsageError, build_parser

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"{exc.prog}: error: {one_line(exc.message)} (see '{exc.prog} --help')", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version: argparse printed and exits 0
        return exc.code if isinstance(exc.code, int) else 0
    prog = f"memoe {args.command}"
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args))
        except BrokenPipeError:
            # the reader (| head) closed stdout: stop quietly; point stdout at devnull so the interpreter's
            # final flush does not raise again (the recipe of Python's signal documentation)
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            with contextlib.suppress(OSError, ValueError):  # in-process callers may have replaced sys.stdout
                os.dup2(devnull, sys.stdout.fileno())
            return 1
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # a command-line user wants the message, not a traceback (--debug shows it)
            from memoe.errors import MemoeError

            if args.debug:
                traceback.print_exc()
            status = _exit_status(exc)
            if isinstance(exc, MemoeError):
                msg = one_line(exc)
            elif isinstance(exc, OSError) and exc.strerror:
                msg = f"{exc.strerror}: '{exc.filename}'" if exc.filename else exc.strerror
            else:
                hint = "" if args.debug else " (run with --debug for the traceback)"
                msg = f"{type(exc).__name__}: {one_line(exc)}{hint}"
            print(f"{prog}: error: {msg}", file=sys.stderr)
            return status


if __name__ == "__main__":
    sys.exit(main())

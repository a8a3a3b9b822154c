"""Warnings that point at the user's line: the stacklevel of the first frame outside memoe.

A warning raised deep inside a fit (EM iterations, an optimiser callback) would otherwise point at
memoe's own source, which tells the user nothing; ``warnings.warn(msg, cls, stacklevel=caller_stacklevel())``
attributes it to the caller's line, however many memoe frames lie in between.
"""

from __future__ import annotations

import os
import sys

__all__ = ["caller_stacklevel"]

# the directory of the memoe package (its __init__.py is one level up from core/)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def caller_stacklevel() -> int:
    """``stacklevel`` for :func:`warnings.warn` that points at the first frame outside the memoe package.

    Called from the function that warns; level 1 is that function (``warnings.warn`` counts its
    caller as 1), so the result counts the frames from there to the first frame whose file is not
    under the memoe package directory.

    Returns
    -------
    int
        At least 1; the number of stack levels to walk out of memoe (the last memoe frame plus one).
    """
    frame = sys._getframe(1)  # the function that will call warnings.warn
    level = 1
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_PACKAGE_DIR):
            return level
        frame = frame.f_back
        level += 1
    return max(level - 1, 1)

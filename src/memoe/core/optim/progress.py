"""A progress bar over objective evaluations, shown only when an optimisation runs long.

Large gls/lme structures (an unstructured covariance over many visits, thousands of groups) can take
more than a few seconds; a person watching wants to see that work is going on. The bar counts
evaluations (their total is not known in advance) and shows the best objective so far; tqdm's ``delay``
keeps it hidden for fits that end within :data:`SHOW_AFTER_SECONDS`, so quick fits print nothing.
"""

from __future__ import annotations

__all__ = ["SHOW_AFTER_SECONDS", "EvaluationBar"]

#: seconds an optimisation runs before its bar appears
SHOW_AFTER_SECONDS = 2.0


class EvaluationBar:
    """Counts objective evaluations on a tqdm bar that appears after :data:`SHOW_AFTER_SECONDS`.

    Parameters
    ----------
    progress : bool or None
        True: show (after the delay); False: never; None: show when stderr is a terminal.
    desc : str
        Label of the bar (e.g. ``"gls REML"``).
    """

    def __init__(self, progress: bool | None, desc: str) -> None:
        self._bar = None
        if progress is False:
            return
        # the standard tqdm (not tqdm.auto): importing it is cheap and it never probes for Jupyter
        from tqdm import tqdm

        self._bar = tqdm(
            desc=desc, unit="eval", delay=SHOW_AFTER_SECONDS, leave=False, disable=None if progress is None else False
        )

    def update(self, best: float) -> None:
        """Record one evaluation; ``best`` is the lowest objective value seen so far."""
        if self._bar is None:
            return
        self._bar.update(1)
        if self._bar.n % 20 == 0:
            self._bar.set_postfix(best=f"{best:.6g}", refresh=False)

    def close(self) -> None:
        """Remove the bar (a no-op when none was shown)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

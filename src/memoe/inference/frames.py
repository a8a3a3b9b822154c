"""A DataFrame that prints a note under the table (which reference distribution was used)."""

from __future__ import annotations

import html

import pandas as pd

__all__ = ["InferenceFrame"]


class InferenceFrame(pd.DataFrame):
    """A result table with a note; ``frame.attrs["ddf"]`` names the df method, ``attrs["note"]`` the note.

    Derived frames (slices, arithmetic) are plain DataFrames, so a note never outlives its table.
    """

    @property
    def _constructor(self):
        return pd.DataFrame

    @classmethod
    def build(cls, frame: pd.DataFrame, ddf: str, note: str, title: str | None = None, **attrs) -> InferenceFrame:
        out = cls(frame)
        out.attrs.update({"ddf": ddf, "note": note, "title": title, **attrs})
        return out

    @property
    def ddf(self) -> str | None:
        """The denominator-df method (``"satterthwaite"``, ...)."""
        return self.attrs.get("ddf")

    @property
    def note(self) -> str:
        return str(self.attrs.get("note", ""))

    def __repr__(self) -> str:
        body = pd.DataFrame.__repr__(self)
        title = self.attrs.get("title")
        head = f"{title}\n" if title else ""
        tail = f"\n---\n{self.note}" if self.note else ""
        return head + body + tail

    def _repr_html_(self) -> str | None:
        body = pd.DataFrame._repr_html_(self)
        if body is None:
            return None
        title = self.attrs.get("title")
        head = f"<p><b>{html.escape(title)}</b></p>" if title else ""
        return head + body + (f"<p><i>{html.escape(self.note)}</i></p>" if self.note else "")

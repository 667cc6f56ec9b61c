"""The root of every error jupyter-launch raises on purpose, and the one-line ``file:line: field: message`` form of
errors in what a user wrote or gave.

Each module keeps its own error classes (``SpecError`` in spec.py, ``StoreError`` in the store, ``RemoteError``
with the HTTP client, ...); all of them derive from :class:`LaunchError`, so ``except LaunchError`` catches any
refusal of ours and nothing else. This module imports nothing: the runner, which runs inside jobs, imports it.
"""

from __future__ import annotations


class LaunchError(Exception):
    """An error jupyter-launch raises on purpose, with a message for a person."""


class LocatedError(LaunchError):
    """An error in something a user wrote or gave, placed in it: ``file:line: field: message`` on one line."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None, field: str | None = None):
        self.message = message
        self.source = source
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.source:
            where = f"{self.source}:{self.line}: " if self.line else f"{self.source}: "
        what = f"{self.field}: " if self.field else ""
        return f"{where}{what}{self.message}"

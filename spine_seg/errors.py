"""Errors raised for bad input files."""

from __future__ import annotations

from pathlib import Path


class InputFileError(ValueError):
    """A problem with one input file; ``str()`` is a one-line message naming the file and the cause."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")

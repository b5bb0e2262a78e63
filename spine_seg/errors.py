"""Errors raised for bad input files, and how the command lines report them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

# What a command line reports as ``error: <message>`` (exit status 2) instead of a traceback: a missing or
# misplaced file or folder, an argument that does not fit, weights that cannot be loaded.
USER_ERRORS = (OSError, ValueError, RuntimeError)


class InputFileError(ValueError):
    """A problem with one input file; ``str()`` is a one-line message naming the file and the cause."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


def run_reporting_errors(command: Callable[[], int]) -> int:
    """Run ``command``; a :data:`USER_ERRORS` exception is printed to stderr as one line and gives status 2."""
    try:
        return command()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

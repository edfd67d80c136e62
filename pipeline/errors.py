"""User-facing errors.

Anything a user can cause (a missing path, a corrupt file, a config typo) raises :class:`UserError`. The command line
prints its message on one line and exits with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None):
        if path is not None:
            message = f"{path}: {message}"
        super().__init__(message)


class StageInterrupted(Exception):
    """Raised by the SIGTERM handler so that a killed run stops like a Ctrl-C: cleanly and resumable."""

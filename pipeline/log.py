"""Logging: a concise console log (INFO) and a full log file in the run folder (DEBUG), plus progress bars."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Iterable, Optional, TypeVar

T = TypeVar("T")
LOGGER_NAME = "page4dgs"


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if name is None else f"{LOGGER_NAME}.{name}")


class _TqdmSafeHandler(logging.StreamHandler):
    """Console handler that prints through tqdm so that log lines do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_console(verbose: bool = False) -> None:
    root = get_logger()
    root.setLevel(logging.DEBUG)
    root.propagate = False
    for h in list(root.handlers):
        if getattr(h, "_page4dgs_console", False):
            root.removeHandler(h)
    handler = _TqdmSafeHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._page4dgs_console = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def add_file_log(path: Path) -> logging.Handler:
    """Append the full log (DEBUG, timestamps) to ``path``; returns the handler so the caller can remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    get_logger().addHandler(handler)
    return handler


def progress(iterable: Iterable[T], desc: str, total: Optional[int] = None, unit: str = "it",
             leave: bool = False, **kwargs) -> Iterable[T]:
    """A tqdm progress bar on stderr (hidden when stderr is not a terminal, e.g. in CI logs)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, dynamic_ncols=True, disable=None,
                **kwargs)

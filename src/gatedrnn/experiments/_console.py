"""What the harness's output goes to (private)."""

from __future__ import annotations

import sys

__all__ = ["on_a_terminal"]


def on_a_terminal() -> bool:
    """Both stdout and stderr are a terminal: where a progress bar redraws in place instead of
    leaving a long line per update in a log."""
    return all(stream is not None and stream.isatty() for stream in (sys.stdout, sys.stderr))

"""One status line on a terminal, rewritten in place; silent when the stream is not a TTY (piped, logged, CI).

Standard library only: the agent CLI (light install) and `orfeas generate` both use it.
"""

from __future__ import annotations

from typing import TextIO

_ERASE = "\r\x1b[K"  # back to column 0, clear to the end of the line


class StatusLine:
    """``update(text)`` replaces the line; ``finish(text)`` writes its last state and moves to a new line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = _isatty(stream)
        self._shown = False

    def update(self, text: str) -> None:
        if not self.enabled:
            return
        self.stream.write(_ERASE + text)
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the line (before other output goes to the same terminal)."""
        if self._shown:
            self.stream.write(_ERASE)
            self.stream.flush()
            self._shown = False

    def finish(self, text: str | None = None) -> None:
        if text is not None:
            self.update(text)
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def short_id(job_id: str, keep: int = 8) -> str:
    """``job_0123456789abcdef...`` -> ``job_0123…`` (enough to tell a handful of jobs apart)."""
    return job_id if len(job_id) <= keep + 1 else job_id[:keep] + "…"

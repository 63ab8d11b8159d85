"""What the long-running operations (`config check`, `discover`, the demo) need to report as
they go: `console.Output` is one; ops declares only the shape, so it never imports the console
layer above it (or rich)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Output(Protocol):
    def say(self, message: str) -> None:
        """Normal output: shown in a terminal, or under cron with -v."""

    def always(self, message: str) -> None:
        """Shown unless --quiet."""

    def error(self, message: str) -> None:
        """To stderr, always."""

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A titled table of rows."""

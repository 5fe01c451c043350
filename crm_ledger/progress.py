"""Progress bars for long runs (rich), quiet when stderr is not a terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Reporter(Protocol):
    """What long-running library code reports to; the CLI decides how it is shown."""

    def advance(self, done: float, *, events: int = 0, note: str = "") -> None:
        """Move the bar by `done` units; `events` feeds the events/s figure."""

    def total(self, total: float | None) -> None:
        """Set or change the expected total."""

    def complete(self) -> None:
        """All of the total is done (units no step advanced by, such as a CSV header's bytes)."""


class SilentReporter:
    """Reports nothing (library use, tests)."""

    def advance(self, done: float, *, events: int = 0, note: str = "") -> None:
        return None

    def total(self, total: float | None) -> None:
        return None

    def complete(self) -> None:
        return None


class _RichReporter:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task
        self._events = 0

    def advance(self, done: float, *, events: int = 0, note: str = "") -> None:
        self._events += events
        task = self._progress.tasks[self._task]
        elapsed = task.elapsed or 0.0
        rate = self._events / elapsed if elapsed > 0 else 0.0
        self._progress.update(self._task, advance=done, rate=f"{rate:,.0f} ev/s", note=note)

    def total(self, total: float | None) -> None:
        self._progress.update(self._task, total=total)

    def complete(self) -> None:
        total = self._progress.tasks[self._task].total
        if total is not None:
            self._progress.update(self._task, completed=total)


@contextmanager
def progress_bar(description: str, total: float | None, console: Console | None = None) -> Iterator[Reporter]:
    """A bar with events/s, elapsed time and ETA on stderr."""
    console = console or Console(stderr=True)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        # Escaped: the description holds file names, and "[/x]" in one is a closing tag.
        task = progress.add_task(escape(description), total=total, rate="", note="")
        yield _RichReporter(progress, task)

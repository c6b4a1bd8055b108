"""How a sweep shows its progress: bars on a terminal, plain lines elsewhere.

The runner reports through the small :class:`SweepProgress` protocol and does
not know how it is shown. :func:`make_progress` picks the display:

* ``quiet`` -> :class:`QuietProgress`: nothing at all (tests, library use).
* the console is not a terminal (stdout piped to a file, CI, ``nohup``) ->
  :class:`LineProgress`: one line per finished cell, message or requeue, through
  ``echo``. Redrawn bars would only fill a log file with control codes.
* otherwise -> :class:`RichProgress`: a live ``rich`` display with one overall
  "cells" bar and one transient bar per cell in flight; result lines are printed
  above the bars so they stay in the scrollback.

Every display prints the result lines itself, so the caller must not echo them
a second time.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.table import Column
from rich.text import Text

__all__ = ["LineProgress", "QuietProgress", "RichProgress", "SweepProgress", "make_progress"]


class SweepProgress:
    """What the runner reports while a sweep runs (all calls from one driver thread).
    Every method does nothing here: a display overrides what it shows."""

    def start(self, total_cells: int, already_done: int = 0) -> None:
        """The sweep has ``total_cells`` cells, ``already_done`` of them finished in an earlier run."""

    def cell_started(self, cell_id: str, label: str, n_samples: int) -> None:
        """A cell began evaluating ``n_samples`` samples (again, after a requeue)."""

    def samples_done(self, cell_id: str, n: int) -> None:
        """``n`` more samples of the cell finished (an increment, not a total)."""

    def cell_finished(self, cell_id: str, line: str) -> None:
        """The cell is done (stored, failed or skipped); ``line`` is its one-line result."""

    def cell_requeued(self, cell_id: str, reason: str) -> None:
        """A worker died mid-cell; the cell will start again from zero later."""

    def message(self, line: str) -> None:
        """Any other line worth showing (warnings, notes)."""

    def close(self) -> None:
        """Stop the display; safe to call twice and after an exception."""


class QuietProgress(SweepProgress):
    """Shows nothing: for ``--quiet`` and for callers that only want the results."""


class LineProgress(SweepProgress):
    """No bars, one line per event: what a log file or a piped stdout should get.

    Sample counts are dropped: a line per batch would drown the results.
    """

    def __init__(self, echo: Callable[[str], None]) -> None:
        self._echo = echo

    def start(self, total_cells: int, already_done: int = 0) -> None:
        """Silent: the runner prints its own header."""

    def cell_started(self, cell_id: str, label: str, n_samples: int) -> None:
        """Silent: only outcomes are logged."""

    def samples_done(self, cell_id: str, n: int) -> None:
        """Silent: see the class docstring."""

    def cell_finished(self, cell_id: str, line: str) -> None:
        """Echo the result line as is."""
        self._echo(line)

    def cell_requeued(self, cell_id: str, reason: str) -> None:
        """Echo the reason line as is."""
        self._echo(reason)

    def message(self, line: str) -> None:
        """Echo the line as is."""
        self._echo(line)

    def close(self) -> None:
        """Nothing to stop."""


# Fields of the overall task, read by the columns below. The run's own clock is
# kept because rich's speed only looks at the last ``speed_estimate_period``
# seconds, and cells finish minutes apart: rich would show no rate at all.
_OVERALL = "overall"
_RUN_START = "run_start"
_NEW_DONE = "new_done"
_LAST_DONE = "last_done"  # when the latest cell finished: the rate stops decaying once all are done


def overall_rate(task: Task) -> float | None:
    """Cells per second finished by this process since ``start`` (None before the first).

    Cells counted as ``already_done`` are left out, as they took no time here.
    """
    new_done = task.fields.get(_NEW_DONE, 0)
    all_done = task.total is not None and task.completed >= task.total and _LAST_DONE in task.fields
    now = task.fields[_LAST_DONE] if all_done else task.get_time()
    elapsed = now - task.fields.get(_RUN_START, now)
    if new_done <= 0 or elapsed <= 0:
        return None
    return float(new_done) / elapsed


def cell_rate(task: Task) -> float | None:
    """Samples per second of a cell since its bar appeared.  Not rich's windowed speed:
    that needs two updates, and a cell of one or two batches gets at most that."""
    elapsed = task.elapsed
    if not task.completed or not elapsed:
        return None
    return task.completed / elapsed


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


class _RateColumn(ProgressColumn):
    """cells/min (or s/cell when slower) for the overall bar, samples/s for a cell."""

    def render(self, task: Task) -> Text:
        if task.fields.get(_OVERALL):
            rate = overall_rate(task)
            if rate is None:
                text = "? cells/min"
            elif rate * 60 >= 1:
                text = f"{rate * 60:.1f} cells/min"
            else:
                text = f"{1 / rate:.0f} s/cell"
        else:
            speed = cell_rate(task)
            text = "? samples/s" if speed is None else f"{speed:.1f} samples/s"
        return Text(text, style="progress.data.speed")


class _EtaColumn(ProgressColumn):
    """Time left: from the run's own cell rate for the overall bar, rich's speed for a cell."""

    def render(self, task: Task) -> Text:
        if task.fields.get(_OVERALL):
            rate = overall_rate(task)
            remaining = None if rate is None or task.total is None else max(task.total - task.completed, 0) / rate
        else:
            speed = cell_rate(task)
            remaining = None if speed is None or task.total is None else max(task.total - task.completed, 0) / speed
        text = "-:--:--" if remaining is None else _format_duration(remaining)
        return Text(f"ETA {text}", style="progress.remaining")


class RichProgress(SweepProgress):
    """A live ``rich`` display: an overall "cells" bar and one bar per cell in flight.

    Lines go through the progress console, which prints them above the bars.
    Not locked: all calls are expected from the driver thread (rich's refresh
    thread only reads tasks under rich's own lock).
    """

    def __init__(self, console: Console | None = None, *, get_time: Callable[[], float] | None = None) -> None:
        # get_time: a clock for rich and the cell rate (tests pass a fake one).
        self.progress = Progress(
            TextColumn("{task.description}", markup=False, table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
            # narrow columns: an 80-column terminal keeps ~30 characters for the label
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            _RateColumn(),
            _EtaColumn(),
            console=console,
            get_time=get_time,
            refresh_per_second=4,
        )
        self._overall: TaskID | None = None
        self._cells: dict[str, TaskID] = {}
        self._new_done = 0  # cells started and finished by this process since start()
        self._closed = False

    def start(self, total_cells: int, already_done: int = 0) -> None:
        """Show the bars; skipped cells start as completed but add nothing to the rate."""
        if self._closed:
            return
        self._new_done = 0
        # add_task(completed=...) records no speed sample (rich's own speed would
        # not count them either); the rate below counts _NEW_DONE only.
        self._ensure_overall(total_cells, already_done)

    def _ensure_overall(self, total: int | None = None, completed: int = 0) -> TaskID:
        # Called with no total by the other methods: they then work before start(), with an unknown total.
        fields = {_OVERALL: True, _RUN_START: self.progress.get_time(), _NEW_DONE: self._new_done}
        if self._overall is None:
            self.progress.start()
            self._overall = self.progress.add_task("cells", total=total, completed=completed, **fields)
        elif total is not None:
            self.progress.reset(self._overall, total=total, completed=completed, description="cells", **fields)
        return self._overall

    def cell_started(self, cell_id: str, label: str, n_samples: int) -> None:
        """Add a bar for the cell; a cell started again (requeued) gets a fresh one from 0."""
        if self._closed:
            return
        self._ensure_overall()
        old = self._cells.pop(cell_id, None)
        if old is not None:
            self.progress.remove_task(old)
        self._cells[cell_id] = self.progress.add_task(label, total=n_samples)

    def samples_done(self, cell_id: str, n: int) -> None:
        """Advance the cell's bar; updates for a cell without a bar (late, after a requeue) are dropped."""
        task = self._cells.get(cell_id)
        if task is not None and not self._closed:
            self.progress.advance(task, n)

    def cell_finished(self, cell_id: str, line: str) -> None:
        """Print the line, drop the cell's bar, count the cell.

        Only cells that had a bar count towards the rate: a cell skipped
        without starting took no time and would make the ETA too optimistic.
        """
        self._print(line)
        if self._closed:
            return
        overall = self._ensure_overall()
        task = self._cells.pop(cell_id, None)
        if task is not None:
            self.progress.remove_task(task)
            self._new_done += 1
        self.progress.update(overall, advance=1, **{_NEW_DONE: self._new_done, _LAST_DONE: self.progress.get_time()})

    def cell_requeued(self, cell_id: str, reason: str) -> None:
        """Print the reason and drop the cell's bar; ``cell_started`` will add a fresh one."""
        self._print(reason)
        task = self._cells.pop(cell_id, None)
        if task is not None and not self._closed:
            self.progress.remove_task(task)

    def message(self, line: str) -> None:
        """Print the line above the bars."""
        self._print(line)

    def close(self) -> None:
        """Stop the live display (idempotent); later lines still print, plainly."""
        if not self._closed:
            self._closed = True
            self.progress.stop()

    def _print(self, line: str) -> None:
        # markup/highlight off: lines hold "[...]" and numbers that must print verbatim.
        self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)


def make_progress(quiet: bool, echo: Callable[[str], None] | None, console: Console | None = None) -> SweepProgress:
    """Pick the display for where the output goes (see the module docstring)."""
    if quiet:
        return QuietProgress()
    console = console or Console()
    if not console.is_terminal:
        return LineProgress(echo or print)
    return RichProgress(console)

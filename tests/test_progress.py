"""The sweep progress displays: what they print and how the rich bars count."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from vlmcompress.runner.progress import (
    LineProgress,
    QuietProgress,
    RichProgress,
    SweepProgress,
    make_progress,
    overall_rate,
)


class FakeClock:
    """A clock the test moves by hand, so rates are exact and nothing sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=120), buf


def rich_progress(clock: FakeClock | None = None) -> tuple[RichProgress, io.StringIO]:
    console, buf = terminal()
    return RichProgress(console, get_time=clock), buf


def bars(p: RichProgress) -> dict[str, tuple[float, float | None]]:
    """description -> (completed, total) of every task in the rich Progress."""
    return {t.description: (t.completed, t.total) for t in p.progress.tasks}


def render_row(p: RichProgress, description: str) -> str:
    """The text of one task's row, as its columns render it now."""
    task = next(t for t in p.progress.tasks if t.description == description)
    return " ".join(column(task).plain for column in p.progress.columns[2:])  # type: ignore[operator, union-attr]


def test_lines_print_verbatim_above_the_bars() -> None:
    p, buf = rich_progress()
    p.start(3)
    p.cell_started("a", "embedded | awq(bits=4) | synth_count", 10)
    p.message("warning: [bold]not markup[/bold] 4 bits")
    p.cell_requeued("a", "worker died: requeue [a]")
    p.cell_started("a", "embedded | awq(bits=4) | synth_count", 10)
    p.cell_finished("a", "[stored] a acc=0.50")
    p.close()
    out = buf.getvalue()
    assert "warning: [bold]not markup[/bold] 4 bits" in out
    assert "worker died: requeue [a]" in out
    assert "[stored] a acc=0.50" in out
    assert p.progress.console.file is buf


def test_cell_bars_are_added_and_removed() -> None:
    p, _ = rich_progress()
    p.start(2)
    assert bars(p) == {"cells": (0, 2)}
    p.cell_started("a", "model | none | task_a", 5)
    assert bars(p) == {"cells": (0, 2), "model | none | task_a": (0, 5)}
    p.samples_done("a", 2)
    assert bars(p)["model | none | task_a"] == (2, 5)
    p.cell_finished("a", "done a")
    assert bars(p) == {"cells": (1, 2)}
    p.close()


def test_concurrent_cells_and_requeue_count_right() -> None:
    p, _ = rich_progress()
    p.start(5, already_done=1)
    p.cell_started("a", "A", 8)
    p.cell_started("b", "B", 4)
    p.samples_done("a", 3)
    p.samples_done("b", 2)
    p.samples_done("a", 2)
    assert bars(p) == {"cells": (1, 5), "A": (5, 8), "B": (2, 4)}

    p.cell_requeued("a", "worker died")
    assert bars(p) == {"cells": (1, 5), "B": (2, 4)}
    p.samples_done("a", 4)  # a late update from the dead worker: no bar to move
    assert bars(p) == {"cells": (1, 5), "B": (2, 4)}

    p.samples_done("b", 2)
    p.cell_finished("b", "b stored")
    p.cell_started("a", "A", 8)  # the restarted cell starts from 0, not from 5
    assert bars(p) == {"cells": (2, 5), "A": (0, 8)}
    p.samples_done("a", 8)
    p.cell_finished("a", "a stored")
    assert bars(p) == {"cells": (3, 5)}
    p.close()


def test_restart_without_requeue_call_also_starts_from_zero() -> None:
    p, _ = rich_progress()
    p.start(1)
    p.cell_started("a", "A", 8)
    p.samples_done("a", 6)
    p.cell_started("a", "A", 8)
    assert bars(p) == {"cells": (0, 1), "A": (0, 8)}
    p.close()


def test_already_done_counts_as_completed_but_not_in_the_rate() -> None:
    clock = FakeClock()
    p, _ = rich_progress(clock)
    p.start(10, already_done=4)
    overall = p.progress.tasks[0]
    assert (overall.completed, overall.total) == (4, 10)
    # rich itself records no speed sample for the skipped cells
    assert overall.speed is None
    assert overall_rate(overall) is None
    assert render_row(p, "cells").split()[-2:] == ["ETA", "-:--:--"]

    p.cell_started("a", "A", 2)
    clock.now += 60
    p.cell_finished("a", "a stored")
    overall = p.progress.tasks[0]
    assert overall.completed == 5
    # one new cell in 60 s: 1 cell/min, 5 left -> 5 minutes (not 5 cells in 60 s)
    assert overall_rate(overall) == pytest.approx(1 / 60)
    row = render_row(p, "cells")
    assert "1.0 cells/min" in row
    assert row.endswith("ETA 0:05:00")
    p.close()


def test_slow_cells_show_seconds_per_cell_and_skips_do_not_speed_up() -> None:
    clock = FakeClock()
    p, _ = rich_progress(clock)
    p.start(4)
    p.cell_started("a", "A", 1)
    clock.now += 300
    p.cell_finished("a", "a stored")
    p.cell_finished("b", "b skipped")  # never started here: counted, but took no time
    overall = p.progress.tasks[0]
    assert overall.completed == 2
    assert overall_rate(overall) == pytest.approx(1 / 300)
    row = render_row(p, "cells")
    assert "300 s/cell" in row
    assert row.endswith("ETA 0:10:00")
    p.close()


def test_cell_bar_shows_samples_per_second() -> None:
    clock = FakeClock()
    p, _ = rich_progress(clock)
    p.start(1)
    p.cell_started("a", "A", 100)
    assert "? samples/s" in render_row(p, "A")
    clock.now += 5
    p.samples_done("a", 10)  # the first batch alone gives a rate
    row = render_row(p, "A")
    assert "2.0 samples/s" in row
    assert row.endswith("ETA 0:00:45")
    clock.now += 5
    p.samples_done("a", 30)
    row = render_row(p, "A")
    assert "4.0 samples/s" in row and row.endswith("ETA 0:00:15")
    p.close()


def test_close_is_idempotent_and_safe_after_an_exception() -> None:
    p, buf = rich_progress()
    with pytest.raises(RuntimeError):
        try:
            p.start(2)
            p.cell_started("a", "A", 3)
            raise RuntimeError("boom")
        finally:
            p.close()
    p.close()
    assert not p.progress.live.is_started
    # calls after close neither raise nor restart the live display; lines still print
    p.cell_started("b", "B", 1)
    p.samples_done("a", 1)
    p.cell_finished("a", "late line")
    assert not p.progress.live.is_started
    assert "late line" in buf.getvalue()


def test_close_without_start() -> None:
    p, buf = rich_progress()
    p.close()
    p.close()
    p.cell_started("a", "A", 1)
    p.cell_finished("a", "a failed")
    assert not p.progress.live.is_started
    assert p.progress.tasks == []
    assert "a failed" in buf.getvalue()


def test_calls_before_start_still_count() -> None:
    p, _ = rich_progress()
    p.cell_started("a", "A", 2)
    p.cell_finished("a", "a stored")
    assert bars(p) == {"cells": (1, None)}
    p.start(3, already_done=1)
    assert bars(p) == {"cells": (1, 3)}
    p.close()


def test_line_progress_echoes_exactly_the_lines() -> None:
    lines: list[str] = []
    p = LineProgress(lines.append)
    p.start(3, already_done=1)
    p.cell_started("a", "A", 4)
    p.samples_done("a", 4)
    p.message("note [x]")
    p.cell_requeued("a", "worker died")
    p.cell_finished("a", "a stored")
    p.close()
    p.close()
    assert lines == ["note [x]", "worker died", "a stored"]


def test_quiet_progress_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    p = QuietProgress()
    p.start(1)
    p.cell_started("a", "A", 1)
    p.samples_done("a", 1)
    p.message("m")
    p.cell_requeued("a", "r")
    p.cell_finished("a", "f")
    p.close()
    assert capsys.readouterr() == ("", "")


def test_make_progress_picks_the_display() -> None:
    lines: list[str] = []
    piped = Console(file=io.StringIO(), force_terminal=False)
    tty, _ = terminal()

    assert isinstance(make_progress(True, lines.append, tty), QuietProgress)
    assert isinstance(make_progress(True, None, piped), QuietProgress)

    line = make_progress(False, lines.append, piped)
    assert isinstance(line, LineProgress)
    line.message("hello")
    assert lines == ["hello"]

    bar = make_progress(False, lines.append, tty)
    assert isinstance(bar, RichProgress)
    assert bar.progress.console is tty
    bar.close()


def test_make_progress_without_echo_prints(capsys: pytest.CaptureFixture[str]) -> None:
    p = make_progress(False, None, Console(file=io.StringIO(), force_terminal=False))
    p.message("to stdout")
    assert capsys.readouterr().out == "to stdout\n"


def test_all_displays_satisfy_the_protocol() -> None:
    displays: list[SweepProgress] = [QuietProgress(), LineProgress(print), rich_progress()[0]]
    assert len(displays) == 3

"""The consoles and one progress style for all long work: count, throughput and ETA, on stderr.

On a terminal a rich bar; with no terminal behind stderr (a log file, a pipe) plain lines: one at each further
``LOG_SHARE`` of the work at least ``LOG_MIN_SECONDS`` after the last (every ``LOG_EVERY_SECONDS`` in any case) and
one at the end, so a log holds a few whole lines per task, never a bar's fragments.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

LOG_WIDTH = 160
"""Columns of a console with no terminal behind it: tables in a log file as wide as they need, not wrapped at 80."""
LOG_SHARE = 0.2
LOG_MIN_SECONDS = 10.0
LOG_EVERY_SECONDS = 600.0


def _console(err: bool) -> Console:
    stream = sys.stderr if err else sys.stdout
    return Console(stderr=err, width=None if stream.isatty() else LOG_WIDTH)


stdout = _console(err=False)
stderr = _console(err=True)


class RateColumn(ProgressColumn):
    """Items per second, in the task's own unit."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "items")
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_bar(
    label: str, total: int | None = None, unit: str = "items", transient: bool = False
) -> Iterator[Callable[[int], None]]:
    """Show progress over ``total`` items (None: unknown) and yield ``advance(n)``.

    ``unit="bytes"`` shows sizes and transfer speed. A transient bar vanishes when done and
    is not shown at all when stderr is not a terminal; a lasting one leaves its final line
    (count, rate, time) in logs too.
    """
    if unit == "bytes":
        counts: tuple[ProgressColumn, ...] = (DownloadColumn(), TransferSpeedColumn())
    else:
        counts = (MofNCompleteColumn(), RateColumn())
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    if not stderr.is_terminal:
        if transient:
            yield lambda n: None
        else:
            with _log_lines(label, total, unit) as advance:
                yield advance
        return
    with Progress(*columns, console=stderr, transient=transient) as progress:
        task = progress.add_task(label, total=total, unit=unit)
        yield lambda n: progress.advance(task, n)


@contextlib.contextmanager
def _log_lines(label: str, total: int | None, unit: str) -> Iterator[Callable[[int], None]]:
    """Progress as plain lines (count, rate, elapsed, ETA), as the module says."""
    started = last = time.monotonic()
    done = 0

    def line() -> str:
        elapsed = time.monotonic() - started
        rate = done / elapsed if elapsed > 0 else 0.0
        scale, name = (2**20, "MiB") if unit == "bytes" else (1, unit)
        amount = f"{done / scale:,.0f}" + (f"/{total / scale:,.0f}" if total else "")
        eta = f", ETA {_clock((total - done) / rate)}" if total and rate > 0 and done < total else ""
        return f"{label}: {amount} {name} · {rate / scale:,.1f} {name}/s · {_clock(elapsed)}{eta}"

    logged = 0

    def advance(n: int) -> None:
        nonlocal done, last, logged
        done += n
        since = time.monotonic() - last
        due = bool(total and done - logged >= LOG_SHARE * total and done < total and since >= LOG_MIN_SECONDS)
        if due or since >= LOG_EVERY_SECONDS:
            last, logged = time.monotonic(), done
            stderr.print(line(), highlight=False, soft_wrap=True)

    yield advance
    stderr.print(line(), highlight=False, soft_wrap=True)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"

"""One progress bar style for all long work: count, throughput and ETA, on stderr."""

from __future__ import annotations

import contextlib
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

stderr = Console(stderr=True)


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
    hidden = transient and not stderr.is_terminal
    with Progress(*columns, console=stderr, transient=transient, disable=hidden) as progress:
        task = progress.add_task(label, total=total, unit=unit)
        yield lambda n: progress.advance(task, n)

"""The one progress bar that `cloak protect` and `cloak eval` show (rich): what runs, the bar, done/total, time
spent and time left."""

from __future__ import annotations

from typing import Any


def progress_bar(console: Any, *, disable: bool = False) -> Any:
    """A ``rich.progress.Progress`` on ``console`` (a ``rich.console.Console``) with the shared columns; ``disable``
    hides it (e.g. on every rank but rank 0, which draws the one live bar of a group)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console, transient=False, disable=disable)

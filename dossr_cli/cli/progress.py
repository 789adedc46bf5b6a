"""Rich progress on stderr: images, solver steps and tiles, with ETA; nothing when quiet or piped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dossr_cli.cli.console import stderr


class Bars:
    def __init__(self, progress: Progress | None, images: int, steps: int) -> None:
        self.progress = progress
        self.steps = steps
        if progress is not None:
            self.images = progress.add_task("images", total=images)
            self.solver = progress.add_task("steps", total=steps)
            self.tile_task = progress.add_task("tiles", total=1, visible=False)  # shown once an image has several

    def start_image(self, name: str) -> None:
        if self.progress is not None:
            self.progress.update(self.images, description=f"images ({name})")
            self.progress.reset(self.solver, total=self.steps)

    def step(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.solver, completed=done, total=total)

    def tiles(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.tile_task, completed=done, total=total, visible=total > 1)

    def done_image(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.images)


@contextmanager
def progress_bars(images: int, steps: int, quiet: bool) -> Iterator[Bars]:
    if quiet or not stderr.is_terminal:
        yield Bars(None, images, steps)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as progress:
        yield Bars(progress, images, steps)

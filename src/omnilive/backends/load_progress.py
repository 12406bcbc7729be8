"""Console progress while the embedded default loads: one line per packaged model, with its step.

    with LoadProgress() as progress:
        with progress.model("whisper-base") as whisper:
            path = assets.whisper_base_dir(cache_dir, on_bytes=whisper.assembling)
            whisper.step("loading")
            ...

On a terminal the lines update in place (rich); in a log file they are written once, when
loading ends. A model's last line says whether it was assembled now or found in the cache,
which is what makes a first start slow:

    ✓ qwen2.5-coder-0.5b   ready: assembled 491 MB from 6 packages   0:00:41
    ✓ whisper-base         ready: assembled earlier, from the cache  0:00:04
    ✓ hibari-tts           ready                                     0:00:01
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


class ModelProgress:
    """The line of one model: `step` says what it is doing; `assembling` reports assembly bytes."""

    def __init__(self, progress: Progress, task: TaskID, in_parts: bool):
        self._progress, self._task = progress, task
        self.in_parts = in_parts  # shipped split across packages: assembled once into the cache
        self.assembled_bytes = 0
        self.assembled_from = 0  # packages joined (0: nothing was assembled)

    def step(self, text: str) -> None:
        self._progress.update(self._task, description=text)

    def assembling(self, done: int, total: int, packages: int) -> None:
        """Called as assembly copies bytes (only when a model is actually assembled)."""
        self.assembled_from = max(self.assembled_from, packages)
        if done == total:
            self.assembled_bytes += total
        self.step(f"assembling from {packages} packages: {done / max(total, 1):4.0%} of {total / 1e6:,.0f} MB")

    def finish(self) -> None:
        if self.assembled_from:
            ready = f"ready: assembled {self.assembled_bytes / 1e6:,.0f} MB from {self.assembled_from} packages"
        else:
            ready = "ready: assembled earlier, from the cache" if self.in_parts else "ready"
        self._progress.update(self._task, description=ready, completed=1)


class LoadProgress:
    def __init__(self, console: Console | None = None):
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.fields[model]:<20}"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )

    def __enter__(self) -> LoadProgress:
        self._progress.start()
        return self

    def __exit__(self, *_) -> None:
        self._progress.stop()

    @contextlib.contextmanager
    def model(self, name: str, in_parts: bool = False) -> Iterator[ModelProgress]:
        """A line for `name`, marked ready when the block ends without an error; `in_parts`: a
        model that is assembled from several packages (its line says whether that happened now)."""
        line = ModelProgress(self._progress, self._progress.add_task("starting", total=1, model=name), in_parts)
        try:
            yield line
        except BaseException:
            line.step("[red]failed[/]")
            raise
        line.finish()

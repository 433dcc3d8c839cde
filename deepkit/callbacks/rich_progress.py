"""A rich progress display for `model.fit`."""

import time

import keras
import numpy as np
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from deepkit.callbacks._config import FromConfig
from deepkit.export import export


def format_logs(logs, keys=None):
    """'loss 0.1234 · accuracy 0.9812' for the scalar entries of `logs`."""
    parts = []
    for key, value in (logs or {}).items():
        if keys is not None and key not in keys:
            continue
        try:
            value = float(np.asarray(value))
        except (TypeError, ValueError):
            continue
        parts.append(f"{key} {value:.4g}")
    return " · ".join(parts)


@export
class RichProgressBar(FromConfig, keras.callbacks.Callback):
    """Epoch and batch progress, metrics, throughput and ETA, drawn with rich.

    Use it instead of Keras' progress bar: `fit(..., verbose=0,
    callbacks=[RichProgressBar()])`. One bar follows the epochs (with the
    time left for the run), one the batches of the current epoch (with the
    latest metrics, examples per second and the time left for the epoch);
    each finished epoch leaves one line with its metrics.

    Args:
        batch_size: examples per batch, to show examples per second (batches
            per second otherwise).
        console: a `rich.console.Console` (the default writes to stderr).
            Where it is not a terminal, the live bars are not drawn and each
            epoch line is written whole, never wrapped at the console's
            width.
        refresh_per_second: how often the display is redrawn.

    Example:

    ```python
    model.fit(x, y, epochs=5, verbose=0,
              callbacks=[deepkit.callbacks.RichProgressBar(batch_size=100)])
    ```
    """

    def __init__(self, batch_size=None, console=None, refresh_per_second=4):
        super().__init__()
        self.batch_size = batch_size
        self.console = console or Console(stderr=True)
        self.refresh_per_second = refresh_per_second
        self._progress = None

    def get_config(self):
        return {"batch_size": self.batch_size, "refresh_per_second": self.refresh_per_second}

    def on_train_begin(self, logs=None):
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            refresh_per_second=self.refresh_per_second,
            transient=True,
        )
        self._progress.start()
        epochs = self.params.get("epochs") or 1
        self._epochs_task = self._progress.add_task("epochs", total=epochs, info="")
        self._batch_task = None
        self._first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
            self._progress.update(self._epochs_task, completed=epoch)
        self._epoch = epoch
        self._epoch_start = time.perf_counter()
        self._seen_batches = 0
        self._train_seconds = 0.0
        steps = self.params.get("steps")
        if self._batch_task is None:
            self._batch_task = self._progress.add_task(f"epoch {epoch + 1}", total=steps, info="")
        else:
            self._progress.reset(self._batch_task, total=steps, description=f"epoch {epoch + 1}")

    def _throughput(self):
        """'12,345 ex/s' (or 'batch/s') over the training batches of this epoch."""
        elapsed = max(self._train_seconds, 1e-9)
        rate = self._seen_batches / elapsed
        if self.batch_size:
            return f"{rate * self.batch_size:,.0f} ex/s"
        return f"{rate:,.1f} batch/s"

    def on_train_batch_end(self, batch, logs=None):
        self._seen_batches = batch + 1
        self._train_seconds = time.perf_counter() - self._epoch_start
        info = f"{format_logs(logs)} · {self._throughput()}"
        self._progress.update(self._batch_task, completed=self._seen_batches, info=info)

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._epoch_start
        self._progress.update(self._epochs_task, completed=epoch + 1)
        # The line that stays (also on a console that is not a terminal, where
        # the live bars are not drawn): metrics, time and throughput. Where
        # the console is not a terminal (a CI log, a file) rich would wrap it
        # at the console's width (80 columns by default), in the middle of a
        # metric; soft_wrap writes it as one line whatever its length.
        console = self._progress.console
        console.print(
            f"epoch {epoch + 1}/{self.params.get('epochs')}: {format_logs(logs)} "
            f"({seconds:.1f}s, {self._throughput()})",
            soft_wrap=not console.is_terminal,
        )

    def on_train_end(self, logs=None):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

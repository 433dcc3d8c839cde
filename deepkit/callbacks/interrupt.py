"""Ctrl-C that stops training cleanly, between batches."""

import signal
import threading

import keras

from deepkit.export import export


class TrainingInterrupted(Exception):
    """Training was stopped by SIGINT (Ctrl-C) between two batches.

    Args:
        epoch: the epoch that was running (from 0).
        batch: the last batch that finished in it (from 0), or None when the
            signal came between epochs or during validation.
    """

    def __init__(self, epoch, batch):
        self.epoch = epoch
        self.batch = batch
        where = f"epoch {epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
        super().__init__(f"interrupted by Ctrl-C at {where}")


@export
class StopOnInterrupt(keras.callbacks.Callback):
    """Stop `fit` at the end of the current batch on the first Ctrl-C.

    Keras lets SIGINT raise `KeyboardInterrupt` wherever Python happens to be,
    which can be inside a checkpoint write, inside a data-pipeline thread
    (where it is lost) or inside compilation. This callback replaces the
    SIGINT handler while `fit` runs: the first Ctrl-C only sets a flag, and
    the callback raises `TrainingInterrupted` at the next batch boundary,
    before any later callback sees a partial epoch (so no checkpoint of a
    half-trained epoch is written, and a checkpoint being written when the
    signal came is finished first). A second Ctrl-C raises
    `KeyboardInterrupt` at once. The previous handler is restored when `fit`
    ends or is interrupted. Outside the main thread (where Python allows no
    signal handler) it does nothing.

    Put it first in the `fit` callback list. It takes no arguments.

    Example:

    ```python
    try:
        model.fit(x, y, epochs=100, callbacks=[
            deepkit.callbacks.StopOnInterrupt(),
            deepkit.callbacks.ExactBackupAndRestore("run/backup", seed=1)])
    except deepkit.callbacks.TrainingInterrupted as stop:
        print(f"{stop}; run the same fit again to resume")
    ```
    """

    def __init__(self):
        super().__init__()
        self._previous = None
        self._pending = False
        self._epoch = 0
        self._batch = None

    def get_config(self):
        return {}

    # -- the handler ----------------------------------------------------------
    def _handle(self, signum, frame):
        if self._pending:  # the second Ctrl-C: stop now
            self._restore()
            raise KeyboardInterrupt
        self._pending = True

    def _install(self):
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        self._pending = False
        self._previous = (signal.getsignal(signal.SIGINT),)
        signal.signal(signal.SIGINT, self._handle)

    def _restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous[0])
            self._previous = None

    def _check(self):
        if self._pending:
            self._pending = False
            self._restore()
            raise TrainingInterrupted(self._epoch, self._batch)

    # -- callback hooks ---------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._install()

    def on_train_end(self, logs=None):
        self._restore()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._batch = epoch, None
        self._check()

    def on_train_batch_begin(self, batch, logs=None):
        self._check()

    def on_train_batch_end(self, batch, logs=None):
        self._batch = batch
        self._check()

    def on_test_begin(self, logs=None):
        self._check()

    def on_test_batch_end(self, batch, logs=None):
        self._check()

    def on_epoch_end(self, epoch, logs=None):
        self._check()

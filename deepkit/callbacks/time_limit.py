"""Stop training before a wall-clock budget runs out."""

import time

import keras

from deepkit.callbacks._config import FromConfig
from deepkit.export import export


@export
class TimeLimit(FromConfig, keras.callbacks.Callback):
    """Stop `fit` at the end of the last epoch that fits in `minutes`.

    After each epoch it predicts the end of the next one from the longest
    epoch so far and stops training if that would pass the budget, so a run
    sized for "30 minutes on this CPU" ends in time with whole epochs. Other
    callbacks still see the end of training: `EarlyStopping` with
    `restore_best_weights=True` restores its best epoch as usual.

    Args:
        minutes: the budget for this `fit` call, in minutes.

    Example:

    ```python
    model.fit(x, y, epochs=1000, callbacks=[
        TimeLimit(minutes=25),
        keras.callbacks.EarlyStopping(patience=100, restore_best_weights=True)])
    ```
    """

    def __init__(self, minutes):
        super().__init__()
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
            raise ValueError(f"TimeLimit: minutes must be a positive number, got {minutes!r}")
        self.minutes = float(minutes)
        self.stopped_epoch = None

    def get_config(self):
        return {"minutes": self.minutes}

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self._longest = 0.0
        self.stopped_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self._longest = max(self._longest, now - self._epoch_start)
        if now - self._start + self._longest > 60.0 * self.minutes:
            self.stopped_epoch = epoch
            self.model.stop_training = True

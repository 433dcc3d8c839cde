"""Stop training when the loss stops being finite, and say where."""

import keras
import numpy as np

from deepkit.callbacks._config import FromConfig
from deepkit.export import export


@export
class StopOnNaN(FromConfig, keras.callbacks.Callback):
    """Stop `fit` at the first batch whose loss is NaN or infinite.

    Unlike `keras.callbacks.TerminateOnNaN`, it remembers where it happened
    (`self.stopped_at`, `(epoch, batch)`) and the last finite loss, so the
    caller can report it; `ExactBackupAndRestore` skips the checkpoint of that
    epoch, so the last good one is kept.

    Args:
        verbose: print a line when it stops training.

    Example:

    ```python
    guard = StopOnNaN()
    model.fit(x, y, callbacks=[guard])
    if guard.stopped_at:
        print("diverged at epoch %d, batch %d" % guard.stopped_at)
    ```
    """

    def __init__(self, verbose=False):
        super().__init__()
        self.verbose = verbose
        self.stopped_at = None
        self.last_finite_loss = None
        self._epoch = 0

    def get_config(self):
        return {"verbose": self.verbose}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(np.asarray(loss))
        if np.isfinite(loss):
            self.last_finite_loss = loss
            return
        self.stopped_at = (self._epoch, batch)
        self.model.stop_training = True
        if self.verbose:
            print(f"StopOnNaN: loss became {loss} at epoch {self._epoch + 1}, batch {batch + 1}; "
                  "training stopped")

"""Stop training once a monitored value reaches a target."""

import keras
import numpy as np

from deepkit.callbacks._config import FromConfig
from deepkit.export import export


@export
class StopAtTarget(FromConfig, keras.callbacks.Callback):
    """Stop `fit` at the end of the first epoch where `monitor` reaches `target`.

    The second stage of the maxout paper's protocol trains on training plus
    validation data "until the validation loss falls to the training loss of
    the first stage's best epoch"; this callback is that stopping rule.

    Args:
        monitor: the log entry to watch, e.g. "val_loss".
        target: the value to reach.
        mode: "min" stops when the value is ≤ target, "max" when ≥ target.

    Example:

    ```python
    model.fit(x_all, y_all, validation_data=(x_val, y_val), epochs=100,
              callbacks=[StopAtTarget("val_loss", target=0.0183)])
    ```

    Reference: Goodfellow et al., "Maxout Networks", ICML 2013,
    arXiv:1302.4389, section 5.1 (the two-stage protocol).
    """

    def __init__(self, monitor="val_loss", target=0.0, mode="min"):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"StopAtTarget: mode must be 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.target = float(target)
        self.mode = mode
        self.reached_at = None

    def get_config(self):
        return {"monitor": self.monitor, "target": self.target, "mode": self.mode}

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(
                f"StopAtTarget: {self.monitor!r} is not in the logs "
                f"(available: {', '.join(sorted(logs or {}))})"
            )
        value = float(np.asarray(value))
        reached = value <= self.target if self.mode == "min" else value >= self.target
        if reached:
            self.reached_at = epoch
            self.model.stop_training = True

"""Divide the learning rate and return to the best weights when validation stalls."""

import math

import keras
import numpy as np

from deepkit.callbacks._config import FromConfig
from deepkit.export import export


@export
class AnnealOnPlateau(FromConfig, keras.callbacks.Callback):
    """GroundHog's annealing rule: on a plateau, halve the rate and go back.

    After every epoch the monitored value is compared with the best so far:

    - better than the best (by any amount): the weights are kept as the new
      best and the count of bad epochs restarts;
    - worse than the best by more than ``tolerance`` (relative: worse than
      ``best * (1 + tolerance)`` for a minimized value): one more bad epoch;
    - in between: nothing changes.

    After ``patience`` bad epochs the learning rate is divided by
    ``1 / factor`` and the model goes back to its best weights, so training
    continues from the best point at a smaller rate instead of from wherever
    the plateau left it. Training stops when the rate would drop below
    ``min_lr``; at the end the best weights are restored. This is the rule of
    the LISA lab's GroundHog trainer (``cost_threshold`` 1.0002,
    ``divide_lr`` 2), used for the deep RNNs of Pascanu et al. 2014; Keras'
    `ReduceLROnPlateau` lowers the rate but keeps the current weights.

    With ``reset_optimizer=True`` the optimizer's slots (momentum, Adam's
    moments) are zeroed when it goes back, so the velocity gathered while
    overfitting is dropped too (GroundHog's plain SGD had none); by default
    they are kept. The learning rate must be a plain value, not a schedule.
    The callback's state (best value, count, best weights) can be saved and
    restored with `get_state` / `set_state`, which `ExactBackupAndRestore`
    does, so a resumed run takes the same decisions as an uninterrupted one.

    Args:
        monitor: the logged value to watch, e.g. ``"val_loss"``.
        mode: ``"min"`` or ``"max"``.
        factor: the rate is multiplied by this at each plateau (0 < factor < 1).
        patience: bad epochs before the rate is divided (GroundHog's
            ``patience``; bad epochs are counted since the last improvement,
            not necessarily in a row).
        tolerance: relative worsening that counts as a bad epoch (GroundHog:
            0.0002).
        min_lr: training stops when the divided rate would be below this.
        restore_best_weights: restore the best weights when training ends.
        reset_optimizer: zero the optimizer's slot variables when going
            back to the best weights.
        verbose: print a line at each division.

    Example:

    ```python
    model.compile(keras.optimizers.SGD(0.5, global_clipnorm=1.0), loss)
    model.fit(train, validation_data=valid, epochs=500, callbacks=[
        AnnealOnPlateau("val_loss", patience=5, min_lr=1e-3)])
    ```

    Reference: Pascanu, Gulcehre, Cho, Bengio 2014, "How to Construct Deep
    Recurrent Neural Networks", arXiv:1312.6026, trained with GroundHog
    (``groundhog/mainLoop.py``).
    """

    def __init__(self, monitor="val_loss", mode="min", factor=0.5, patience=1,
                 tolerance=2e-4, min_lr=1e-5, restore_best_weights=True, reset_optimizer=False,
                 verbose=0):
        super().__init__()
        name = "AnnealOnPlateau"
        if mode not in ("min", "max"):
            raise ValueError(f"{name}: mode must be 'min' or 'max', got {mode!r}")
        if not 0.0 < float(factor) < 1.0:
            raise ValueError(f"{name}: factor must be between 0 and 1, got {factor!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"{name}: patience must be an integer >= 1, got {patience!r}")
        if float(tolerance) < 0:
            raise ValueError(f"{name}: tolerance must be >= 0, got {tolerance!r}")
        if float(min_lr) < 0:
            raise ValueError(f"{name}: min_lr must be >= 0, got {min_lr!r}")
        self.monitor = monitor
        self.mode = mode
        self.factor = float(factor)
        self.patience = patience
        self.tolerance = float(tolerance)
        self.min_lr = float(min_lr)
        self.restore_best_weights = bool(restore_best_weights)
        self.reset_optimizer = bool(reset_optimizer)
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self.best = None
        self.best_epoch = None
        self.best_weights = None
        self.wait = 0
        self.divisions = 0
        self.stopped_epoch = None

    def get_config(self):
        return {"monitor": self.monitor, "mode": self.mode, "factor": self.factor,
                "patience": self.patience, "tolerance": self.tolerance, "min_lr": self.min_lr,
                "restore_best_weights": self.restore_best_weights,
                "reset_optimizer": self.reset_optimizer, "verbose": self.verbose}

    # -- state, for exact resumption -----------------------------------------
    def get_state(self):
        """`(state, arrays)`: a JSON-able dict and the best weights (or None)."""
        state = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                 "divisions": self.divisions, "stopped_epoch": self.stopped_epoch}
        return state, self.best_weights

    def set_state(self, state, arrays):
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.wait = state["wait"]
        self.divisions = state["divisions"]
        self.stopped_epoch = state["stopped_epoch"]
        self.best_weights = None if arrays is None else [np.asarray(a) for a in arrays]

    # -- the rule -------------------------------------------------------------
    def _rate_variable(self):
        # For a plain learning rate, `optimizer.learning_rate` is the variable
        # the optimizer holds it in; for a schedule (or a callable) it is a
        # tensor computed from the step, which cannot be divided.
        rate = self.model.optimizer.learning_rate
        if not isinstance(rate, keras.Variable):
            raise ValueError("AnnealOnPlateau: the optimizer's learning rate is a schedule "
                             "(or a callable); it needs a plain learning rate that it can "
                             "divide")
        return rate

    def _learning_rate(self):
        return float(keras.ops.convert_to_numpy(self._rate_variable()))

    def on_train_begin(self, logs=None):
        self._reset()
        self._learning_rate()  # fail early on a schedule

    def _improves(self, current):
        if self.best is None:
            return True
        return current < self.best if self.mode == "min" else current > self.best

    def _is_bad(self, current):
        slack = self.tolerance * abs(self.best)
        if self.mode == "min":
            return current > self.best + slack
        return current < self.best - slack

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.monitor not in logs:
            raise ValueError(
                f"AnnealOnPlateau: monitor {self.monitor!r} is not in the logs of epoch "
                f"{epoch + 1}; available: {sorted(logs)} (validation values need "
                "validation data)")
        logs.setdefault("learning_rate", self._learning_rate())
        current = float(logs[self.monitor])
        if not math.isfinite(current):
            return  # StopOnNaN / the checkpoint logic deal with it
        if self._improves(current):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            self.best_weights = [np.array(w) for w in self.model.get_weights()]
            return
        if not self._is_bad(current):
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        self.wait = 0
        rate = self._learning_rate() * self.factor
        if rate < self.min_lr:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            return
        self.model.optimizer.learning_rate = rate
        self.divisions += 1
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
        if self.reset_optimizer:
            self._zero_slots()
        if self.verbose:
            keras.utils.io_utils.print_msg(
                f"Epoch {epoch + 1}: {self.monitor} stalled; learning rate divided to "
                f"{rate:.4g}, weights of epoch {self.best_epoch + 1} restored")

    def _zero_slots(self):
        optimizer = self.model.optimizer
        keep = (optimizer.iterations, self._rate_variable())
        for variable in optimizer.variables:
            if not any(variable is k for k in keep):
                variable.assign(keras.ops.zeros(variable.shape, variable.dtype))

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)

"""MomentumSchedule: the optimizer's momentum, linear in the epoch, then flat."""

import numbers

import keras

from deepkit.callbacks._config import FromConfig
from deepkit.export import export


def _check_momentum(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(
            f"MomentumSchedule: {name} must be a number in [0, 1], got {value!r}"
        )
    return float(value)


def _check_epochs(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(
            f"MomentumSchedule: {name} must be a non-negative integer, got {value!r}"
        )
    return int(value)


@export
class MomentumSchedule(FromConfig, keras.callbacks.Callback):
    """Sets the optimizer's momentum at the start of each epoch, rising (or
    falling) linearly from `start` to `end` over `epochs` epochs.

    During epoch `e` (counted from 0, as Keras does) the momentum is

        start + (end - start) * clip((e - start_epoch) / epochs, 0, 1)

    so it is `start` up to epoch `start_epoch`, reaches `end` at epoch
    `start_epoch + epochs` and stays there (pylearn2's `MomentumAdjustor`,
    which the maxout paper uses to raise momentum from 0.5 to 0.7 over 250
    epochs). With `epochs=0` it jumps to `end` at `start_epoch`.

    How the new value reaches the update. Keras' `SGD` (and `RMSprop`) keep
    `momentum` as a plain Python float, which is read when the train step is
    traced: on TensorFlow (`tf.function`) and JAX (`jax.jit`) assigning
    `optimizer.momentum` after the first step changes nothing until the step
    is traced again. So when the value changes, this callback sets the
    attribute and calls `model.make_train_function(force=True)`; the next
    step is retraced (one extra compilation per epoch in which the momentum
    changes, none once it is flat; for the PI-MNIST maxout model on the
    shared 2-core CPU a retrace added 0.6-3.6 s (JAX) and about 2 s (TF) to
    epochs of 4-6 s, see benchmarks/RESULTS.md). An
    optimizer whose `momentum` is one of its own variables, such as
    `deepkit.training.VariableMomentumSGD`, is updated by assignment instead,
    with no retracing: prefer it for long ramps.

    The optimizer must be compiled with a non-zero momentum if the schedule
    uses one: Keras' `SGD(momentum=0.0)` builds no velocity slots.

    Args:
        start: float in [0, 1], the momentum up to epoch `start_epoch`.
        end: float in [0, 1], the momentum from epoch `start_epoch + epochs`.
        epochs: non-negative int, the number of epochs of the linear ramp.
        start_epoch: non-negative int, the epoch at which the ramp begins.

    Example:

    ```python
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.5), ...)
    model.fit(x, y, epochs=300,
              callbacks=[MomentumSchedule(start=0.5, end=0.7, epochs=250)])
    ```

    Reference:
        Goodfellow, Warde-Farley, Mirza, Courville, Bengio, "Maxout Networks",
        ICML 2013, arXiv:1302.4389 (pylearn2 `scripts/papers/maxout`).
    """

    def __init__(self, start, end, epochs, start_epoch=0):
        super().__init__()
        self.start = _check_momentum("start", start)
        self.end = _check_momentum("end", end)
        self.epochs = _check_epochs("epochs", epochs)
        self.start_epoch = _check_epochs("start_epoch", start_epoch)

    def momentum_at(self, epoch):
        """The momentum for epoch `epoch` (counted from 0)."""
        if self.epochs == 0:
            fraction = 1.0 if epoch >= self.start_epoch else 0.0
        else:
            fraction = min(max((epoch - self.start_epoch) / self.epochs, 0.0), 1.0)
        # pylearn2's form: exactly `start` at 0 and exactly `end` at 1.
        return (1.0 - fraction) * self.start + fraction * self.end

    def _optimizer(self):
        optimizer = self.model.optimizer
        # A LossScaleOptimizer (mixed precision) wraps the real one.
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        if not hasattr(optimizer, "momentum"):
            raise ValueError(
                f"MomentumSchedule: the optimizer {type(optimizer).__name__} has "
                "no `momentum` attribute; use e.g. keras.optimizers.SGD(momentum=...)"
            )
        return optimizer

    def on_train_begin(self, logs=None):
        optimizer = self._optimizer()
        current = optimizer.momentum
        if not isinstance(current, keras.Variable) and float(current) == 0.0 and (
            self.start > 0 or self.end > 0
        ):
            raise ValueError(
                f"MomentumSchedule: the optimizer {type(optimizer).__name__} was "
                "created with momentum=0.0, so it keeps no velocity to apply a "
                f"momentum schedule to; create it with momentum={self.start} "
                "(the schedule's start), or use deepkit.training.VariableMomentumSGD"
            )

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self._optimizer()
        value = self.momentum_at(epoch)
        momentum = optimizer.momentum
        if isinstance(momentum, keras.Variable):
            momentum.assign(value)
            # An optimizer variable is state that the step reads each call; a
            # variable the optimizer does not track is a constant to jax.jit.
            if not any(v is momentum for v in optimizer.variables):
                self.model.make_train_function(force=True)
            return
        if float(optimizer.momentum) == value:
            return
        optimizer.momentum = value
        # The old value is a constant inside the traced train step.
        self.model.make_train_function(force=True)

    def get_config(self):
        return {
            "start": self.start,
            "end": self.end,
            "epochs": self.epochs,
            "start_epoch": self.start_epoch,
        }

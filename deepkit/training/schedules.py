"""Learning-rate and momentum schedules from the papers' training code.

`ExponentialDecayWithFloor` is a learning-rate schedule (pylearn2's
`ExponentialDecay`). `VariableMomentumSGD` is Keras' SGD with its momentum
held in an optimizer variable, so that `deepkit.callbacks.MomentumSchedule`
(pylearn2's `MomentumAdjustor`) can change it between epochs without
retracing the compiled train step.
"""

import math
import numbers

import keras
from keras import ops

from deepkit import _keras_internals
from deepkit.export import export


def _number(name, value, minimum, inclusive):
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and (value >= minimum if inclusive else value > minimum)
    )
    if not ok:
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        raise ValueError(
            f"ExponentialDecayWithFloor: {name} must be a number {bound}, got {value!r}"
        )
    return float(value)


@export
class ExponentialDecayWithFloor(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate divided by `decay_factor` after every update, down to a
    floor: `lr_t = max(initial_learning_rate / decay_factor**t, minimum)`.

    `t` is the number of updates already made (`optimizer.iterations`), so the
    first update uses `initial_learning_rate`. This is pylearn2's
    `sgd.ExponentialDecay(decay_factor, min_lr)`, which the maxout paper's
    PI-MNIST model uses with `decay_factor=1.000004` and `min_lr=1e-6`.

    The power is computed as `exp(-t * log(decay_factor))` with the logarithm
    taken in double precision: a float32 `decay_factor` of 1.000004 is off by
    1.7% in `decay_factor - 1` (float32 spacing near 1 is 1.2e-7), which
    would make the rate 6% too high after 10^6 updates.

    Args:
        initial_learning_rate: positive float, the rate of the first update.
        decay_factor: float >= 1, the divisor applied after every update.
        minimum: float >= 0, the floor of the rate.

    Example:

    ```python
    schedule = ExponentialDecayWithFloor(0.1, 1.000004, 1e-6)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.5)
    ```

    Reference:
        Goodfellow, Warde-Farley, Mirza, Courville, Bengio, "Maxout Networks",
        ICML 2013, arXiv:1302.4389 (pylearn2 `scripts/papers/maxout`).
    """

    def __init__(self, initial_learning_rate, decay_factor, minimum):
        self.initial_learning_rate = _number(
            "initial_learning_rate", initial_learning_rate, 0, inclusive=False
        )
        self.decay_factor = _number("decay_factor", decay_factor, 1, inclusive=True)
        self.minimum = _number("minimum", minimum, 0, inclusive=True)
        self._log_decay = math.log(self.decay_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rate = self.initial_learning_rate * ops.exp(-self._log_decay * step)
        return ops.maximum(rate, self.minimum)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_factor": self.decay_factor,
            "minimum": self.minimum,
        }


@export
class VariableMomentumSGD(keras.optimizers.Optimizer):
    """SGD with momentum whose momentum is an optimizer variable.

    The same update as `keras.optimizers.SGD`:

        velocity = momentum * velocity - learning_rate * gradient
        variable = variable + velocity            (nesterov=False)
        variable = variable + momentum * velocity - learning_rate * gradient
                                                  (nesterov=True)

    but `momentum` is a scalar `keras.Variable` among the optimizer's
    variables instead of a Python float baked into the traced train step.
    Assigning it (`optimizer.momentum.assign(0.6)`, or
    `deepkit.callbacks.MomentumSchedule`) takes effect at the next step on
    every backend, with no recompilation; with Keras' `SGD` the schedule has
    to retrace the step each time the value changes. The velocity slots are
    always created, so the momentum may start at 0. The momentum is saved
    with the other optimizer variables.

    Args:
        learning_rate: float, `LearningRateSchedule` or callable, as for any
            Keras optimizer.
        momentum: float in [0, 1], the initial momentum.
        nesterov: bool, whether to apply Nesterov momentum.
        name: the optimizer's name; None gives Keras' default for the class.
        **kwargs: the base optimizer's arguments (`weight_decay`, `clipnorm`,
            `global_clipnorm`, ...).

    Example:

    ```python
    optimizer = VariableMomentumSGD(
        ExponentialDecayWithFloor(0.1, 1.000004, 1e-6), momentum=0.5)
    model.compile(optimizer=optimizer, loss=...)
    model.fit(..., callbacks=[MomentumSchedule(0.5, 0.7, epochs=250)])
    ```

    Reference:
        Goodfellow, Warde-Farley, Mirza, Courville, Bengio, "Maxout Networks",
        ICML 2013, arXiv:1302.4389 (pylearn2 `scripts/papers/maxout`).
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if (
            isinstance(momentum, bool)
            or not isinstance(momentum, numbers.Real)
            or not 0 <= momentum <= 1
        ):
            raise ValueError(
                f"VariableMomentumSGD: momentum must be a number in [0, 1], got {momentum!r}"
            )
        if not isinstance(nesterov, bool):
            raise ValueError(
                f"VariableMomentumSGD: nesterov must be True or False, got {nesterov!r}"
            )
        self.nesterov = nesterov
        self.momentum = self.add_variable(
            shape=(),
            initializer=keras.initializers.Constant(float(momentum)),
            dtype="float32",
            aggregation="only_first_replica",
            name="momentum",
        )

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = self.add_optimizer_variables(variables, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        momentum = ops.cast(self.momentum, variable.dtype)
        velocity = self.velocities[_keras_internals.variable_index(self, variable)]
        step = ops.multiply(gradient, learning_rate)
        self.assign(velocity, ops.subtract(ops.multiply(velocity, momentum), step))
        if self.nesterov:
            self.assign_add(
                variable, ops.subtract(ops.multiply(velocity, momentum), step)
            )
        else:
            self.assign_add(variable, velocity)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": float(ops.convert_to_numpy(self.momentum)),
                "nesterov": self.nesterov,
            }
        )
        return config

"""Learning-rate schedules from the papers' training code."""

import math
import numbers

import keras
from keras import ops

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

"""Dense layer trained with Gaussian weight noise."""

import keras
from keras import ops

from deepkit.export import export


def check_weight_noise(value, owner):
    """`value` as a float, or a ValueError naming `owner` unless it is a number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{owner}: weight_noise must be a non-negative number, got {value!r}")
    return float(value)


def with_weight_noise(weight, stddev, seed_generator):
    """`weight` plus one sample of Gaussian noise of standard deviation `stddev`."""
    return ops.add(weight, keras.random.normal(
        ops.shape(weight), stddev=stddev, dtype=weight.dtype, seed=seed_generator))


@export
class NoisyDense(keras.layers.Dense):
    """`Dense` whose kernel carries Gaussian noise in training.

    In training, one noise sample ``N(0, weight_noise²)`` is drawn per call
    (so one per batch of sequences when applied to ``(batch, time, features)``
    inputs) and added to the kernel; the forward pass and the gradient use the
    noisy kernel, the update goes to the clean one. At inference it is exactly
    `keras.layers.Dense`. This is the weight noise of Graves (2011, "Practical
    variational inference for neural networks") that Pascanu, Gulcehre, Cho,
    Bengio (2014, arXiv:1312.6026) train their music models with; use it for
    the deep-output layers beside `DeepTransitionRNN(weight_noise=...)`.

    Args:
        units: output width.
        weight_noise: standard deviation of the kernel noise (0 turns it off).
        seed: seed of the noise.
        **kwargs: every other `keras.layers.Dense` argument (activation,
            initializers, regularizers, constraints, use_bias, ...).

    Example:

    ```python
    model = keras.Sequential([
        keras.Input((None, 88)),
        deepkit.layers.DeepTransitionRNN(400, transition_layers=[400],
                                         return_sequences=True, weight_noise=0.075),
        deepkit.layers.NoisyDense(400, activation="sigmoid", weight_noise=0.075),
        deepkit.layers.NoisyDense(88, weight_noise=0.075),
    ])
    ```
    """

    def __init__(self, units, weight_noise=0.0, seed=None, **kwargs):
        weight_noise = check_weight_noise(weight_noise, "NoisyDense")
        super().__init__(units, **kwargs)
        self.weight_noise = weight_noise
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if weight_noise else None

    def call(self, inputs, training=None):
        if not (training and self.weight_noise):
            return super().call(inputs, training=training)
        kernel = with_weight_noise(self.kernel, self.weight_noise, self.seed_generator)
        outputs = ops.matmul(inputs, ops.cast(kernel, inputs.dtype))
        if self.bias is not None:
            outputs = ops.add(outputs, ops.cast(self.bias, outputs.dtype))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update({"weight_noise": self.weight_noise, "seed": self.seed})
        return config

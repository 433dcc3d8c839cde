"""Corruptions of the input of denoising models, and binomial sampling.

A denoising auto-encoder learns to undo a corruption ``C(x̃ | x)``; a GSN
(Bengio et al. 2014) applies the same corruption again at every step of its
sampling chain. Each corruption here is a layer that is the identity at
inference and corrupts in training, like Keras' `GaussianNoise`, and that
can be told to corrupt at any time with the call argument ``corrupt=True``,
which a sampling chain uses.

Each layer splits its randomness from its arithmetic, so a chain, a test or
a numpy reference can replay or supply the noise:

- ``draw_noise(shape, dtype, seed=None)`` draws the random variates the
  corruption consumes (uniforms in [0, 1) or standard normals) from the
  layer's own `keras.random.SeedGenerator`, or from ``seed`` (a
  `SeedGenerator` or an int) when given; the same generator state and shape
  give the same variates, eagerly or inside a compiled `fit` step.
- ``apply_noise(inputs, noise)`` is deterministic: the corrupted inputs for
  those variates.
- ``corrupted(inputs, seed=None)`` is ``apply_noise(inputs,
  draw_noise(...))``: the inputs corrupted, whatever the mode.

`call` is ``corrupted(inputs)`` when ``corrupt`` is True, or when ``corrupt``
is None (the default) and ``training`` is True; otherwise it returns the
inputs unchanged.
"""

import keras
from keras import ops

from deepkit.export import export


class Corruption(keras.layers.Layer):
    """Base class of the corruptions: seeded noise, the identity at inference.

    Subclasses define `draw_noise` and `apply_noise` (see the module
    docstring). They have no weights.

    Args:
        seed: seed of the layer's `keras.random.SeedGenerator`.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: a tensor.
        training: corrupt when True (unless ``corrupt`` says otherwise).
        corrupt: True corrupts and False never does, whatever ``training``
            is; None (the default) follows ``training``.

    Returns:
        A tensor shaped like the input.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True
        self.built = True

    def draw_noise(self, shape, dtype="float32", seed=None):
        """The random variates for inputs of ``shape``.

        Args:
            shape: the shape of the inputs to corrupt.
            dtype: a float dtype.
            seed: a `keras.random.SeedGenerator` or int to draw from instead
                of the layer's own generator (a sampling chain passes its
                own, so that the chain depends on its seed alone).

        Returns:
            A tensor of ``shape``.
        """
        raise NotImplementedError

    def apply_noise(self, inputs, noise):
        """The corrupted inputs for the variates ``noise`` of `draw_noise`."""
        raise NotImplementedError

    def corrupted(self, inputs, seed=None):
        """``inputs`` corrupted (in any mode), drawing from ``seed`` if given."""
        inputs = ops.convert_to_tensor(inputs)
        return self.apply_noise(inputs, self.draw_noise(ops.shape(inputs), inputs.dtype, seed))

    def _generator(self, seed):
        return self.seed_generator if seed is None else seed

    def call(self, inputs, training=None, corrupt=None):
        active = training if corrupt is None else corrupt
        if not active:
            return inputs
        return self.corrupted(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"seed": self.seed})
        return config


def _check_rate(rate):
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    return rate


class _UniformCorruption(Corruption):
    """A corruption driven by one uniform variate per element."""

    def draw_noise(self, shape, dtype="float32", seed=None):
        return keras.random.uniform(shape, dtype=dtype, seed=self._generator(seed))


@export
class SaltAndPepper(_UniformCorruption):
    """Salt-and-pepper noise: each element, with probability ``rate``, is set
    to 0 or to 1, equally likely.

    The corruption of the MNIST GSN and walkback DAE of Bengio et al. 2013 and
    2014 (rate 0.4 in `yaoli/GSN`). One uniform variate ``u`` per element
    decides: ``u < rate / 2`` gives 1, ``rate / 2 <= u < rate`` gives 0, and
    the element is kept otherwise. No gradient reaches the replaced
    elements; the kept ones pass theirs unchanged.

    Args:
        rate: the probability that an element is replaced, in [0, 1].
        seed: seed of the noise.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: a tensor, usually in [0, 1].
        training: corrupt when True.
        corrupt: True or False to corrupt or not whatever ``training`` is
            (a sampling chain passes True); None follows ``training``.

    Returns:
        A tensor shaped like the input.

    Example:

    ```python
    noisy = SaltAndPepper(0.4, seed=1)(images, corrupt=True)
    ```

    Reference:
        Bengio, Yao, Alain, Vincent 2013, "Generalized Denoising
        Auto-Encoders as Generative Models", arXiv:1305.6663; Bengio,
        Thibodeau-Laufer, Alain, Yosinski 2014, "Deep Generative Stochastic
        Networks Trainable by Backprop", arXiv:1306.1091.
    """

    def __init__(self, rate=0.4, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rate = _check_rate(rate)

    def apply_noise(self, inputs, noise):
        salt = ops.cast(ops.less(noise, 0.5 * self.rate), inputs.dtype)
        return ops.where(ops.less(noise, self.rate), salt, inputs)

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate})
        return config


@export
class MaskingCorruption(_UniformCorruption):
    """Masking noise: each element, with probability ``rate``, is set to 0.

    The masking corruption of denoising auto-encoders (Vincent et al.
    2008). Unlike `keras.layers.Dropout` the kept elements are not rescaled:
    the model must reconstruct the clean input from what is left.

    Args:
        rate: the probability that an element is zeroed, in [0, 1].
        seed: seed of the noise.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: a tensor.
        training: corrupt when True.
        corrupt: True or False to corrupt or not whatever ``training`` is;
            None follows ``training``.

    Returns:
        A tensor shaped like the input.

    Example:

    ```python
    dae = DenoisingAutoencoder(500, corruption=MaskingCorruption(0.25))
    ```

    Reference:
        Vincent, Larochelle, Bengio, Manzagol 2008, "Extracting and Composing
        Robust Features with Denoising Autoencoders", ICML 2008.
    """

    def __init__(self, rate=0.25, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rate = _check_rate(rate)

    def apply_noise(self, inputs, noise):
        return ops.where(ops.less(noise, self.rate), ops.zeros_like(inputs), inputs)

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate})
        return config


@export
class BinomialSample(_UniformCorruption):
    """A Bernoulli sample of each element, read as a probability.

    ``1[u < p]`` for a uniform ``u``: a GSN's chain samples its visible units
    from their mean ``p(x | h)`` at every step (``input_sampling`` in
    `yaoli/GSN`). The sample carries no gradient. At inference (and with
    ``corrupt=False``) the layer returns the probabilities themselves, the
    mean of the sample.

    Args:
        seed: seed of the samples.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: probabilities in [0, 1].
        training: sample when True.
        corrupt: True or False to sample or not whatever ``training`` is;
            None follows ``training``.

    Returns:
        0/1 values (or the probabilities), shaped like the input.

    Example:

    ```python
    binary = BinomialSample(seed=3)(probabilities, corrupt=True)
    ```

    Reference:
        Bengio, Thibodeau-Laufer, Alain, Yosinski 2014, "Deep Generative
        Stochastic Networks Trainable by Backprop", arXiv:1306.1091.
    """

    def apply_noise(self, inputs, noise):
        sample = ops.cast(ops.less(noise, inputs), inputs.dtype)
        return ops.stop_gradient(sample)


@export
class GaussianCorruption(Corruption):
    """Additive Gaussian noise ``x + stddev · ε``, ``ε ~ N(0, 1)``.

    Keras' `GaussianNoise` with the `corrupt` switch and replayable noise of
    the corruptions here; a GSN adds it to its hidden units before and after
    their activation (σ = 2 in `yaoli/GSN`). `draw_noise` gives the
    standard normals ``ε``.

    Args:
        stddev: standard deviation of the noise, >= 0.
        seed: seed of the noise.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: a tensor.
        training: corrupt when True.
        corrupt: True or False to corrupt or not whatever ``training`` is;
            None follows ``training``.

    Returns:
        A tensor shaped like the input.

    Example:

    ```python
    noisy = GaussianCorruption(0.5, seed=2)(features, training=True)
    ```

    Reference:
        Bengio, Thibodeau-Laufer, Alain, Yosinski 2014, "Deep Generative
        Stochastic Networks Trainable by Backprop", arXiv:1306.1091.
    """

    def __init__(self, stddev=1.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if stddev < 0:
            raise ValueError(f"stddev must be >= 0, got {stddev}")
        self.stddev = float(stddev)

    def draw_noise(self, shape, dtype="float32", seed=None):
        return keras.random.normal(shape, dtype=dtype, seed=self._generator(seed))

    def apply_noise(self, inputs, noise):
        inputs = ops.convert_to_tensor(inputs)
        return inputs + ops.cast(self.stddev, inputs.dtype) * ops.convert_to_tensor(noise)

    def get_config(self):
        config = super().get_config()
        config.update({"stddev": self.stddev})
        return config

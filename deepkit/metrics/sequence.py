"""Sequence-model metrics: NLL per frame, bits per character, perplexity.

Each metric keeps two sums, the negative log-likelihood of the counted steps
and their number, so that its value over a whole split is the mean over all
its steps, not a mean of batch means (batches of unequal size or with
different numbers of masked steps would bias that). `sample_weight` is the
mask (or the weight) of each time step: 0 on padding. Keras hands
`sample_weight` only to the metrics given to `compile` as
`weighted_metrics`; under `metrics` they would count the padding too.

`FrameBinaryCrossentropy` is the matching training loss for piano rolls: the
88 Bernoulli NLLs of a frame summed, then averaged over the real frames of
the batch.
"""

import math

import keras
from keras import ops

from deepkit.export import export


def frame_nll(y_true, y_pred, from_logits=False):
    """NLL of each frame of independent Bernoulli units (keys), in nats.

    Args:
        y_true: 0/1 targets `(..., keys)`.
        y_pred: probabilities (or logits) of the same shape.
        from_logits: `y_pred` holds logits.

    Returns:
        `(...)`: the sum over the last axis of the binary cross-entropies.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    bce = ops.binary_crossentropy(y_true, y_pred, from_logits=from_logits)
    return ops.sum(bce, axis=-1)


def token_nll(y_true, y_pred, from_logits=False):
    """NLL of each target token under a categorical distribution, in nats.

    Args:
        y_true: integer ids `(...)` (or `(..., 1)`).
        y_pred: probabilities (or logits) `(..., vocabulary)`.
        from_logits: `y_pred` holds logits.

    Returns:
        `(...)`: −log p(y_true).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    y_true = ops.cast(y_true, "int32")
    return ops.sparse_categorical_crossentropy(y_true, y_pred, from_logits=from_logits)


def _weights_like(values, sample_weight):
    """`sample_weight` broadcast to the shape of the per-step `values`."""
    if sample_weight is None:
        return ops.ones_like(values)
    weights = ops.cast(sample_weight, values.dtype)
    while len(weights.shape) > len(values.shape) and weights.shape[-1] == 1:
        weights = ops.squeeze(weights, axis=-1)
    while len(weights.shape) < len(values.shape):
        weights = ops.expand_dims(weights, axis=-1)
    return ops.broadcast_to(weights, ops.shape(values))


class _StepMean(keras.metrics.Metric):
    """Sum of per-step NLLs and of step weights over everything seen.

    Subclasses name their per-step NLL function, `step_nll(y_true, y_pred,
    from_logits)`, as a class attribute.
    """

    step_nll = None

    def __init__(self, from_logits=False, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.from_logits = from_logits
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        nll = self.step_nll(y_true, y_pred, from_logits=self.from_logits)
        values = ops.cast(nll, self.dtype)
        weights = _weights_like(values, sample_weight)
        self.total.assign_add(ops.sum(ops.multiply(values, weights)))
        self.count.assign_add(ops.sum(weights))

    def mean_nll(self):
        """The mean NLL per counted step, in nats."""
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


@export
class FrameNLL(_StepMean):
    """Negative log-likelihood per time step of a polyphonic piano roll.

    The NLL of a frame is the sum of the Bernoulli NLLs of its keys (88 for
    piano rolls); the result is the mean over every counted frame of all
    batches seen, in nats — the figure that Boulanger-Lewandowski et al.
    (2012) and Pascanu et al. (2014) report as "negative log-likelihood per
    time step". Frames with `sample_weight` 0 (padding) are not counted;
    pass the metric to `compile` as a `weighted_metrics` entry, the only
    place where Keras gives metrics the `sample_weight`.

    Args:
        from_logits: `y_pred` holds logits instead of probabilities
            (probabilities are clipped to [1e-7, 1 − 1e-7] as in Keras).
        name: the metric's name (logged as `frame_nll`, `val_frame_nll`).
        dtype: the dtype of the sums.

    Example:

    ```python
    model.compile(loss=FrameBinaryCrossentropy(from_logits=True),
                  weighted_metrics=[FrameNLL(from_logits=True)])
    model.evaluate(x_test, y_test, sample_weight=mask_test)
    ```

    Reference:
        Boulanger-Lewandowski, Bengio, Vincent, "Modeling Temporal
        Dependencies in High-Dimensional Sequences", ICML 2012,
        arXiv:1206.6392.
    """

    step_nll = staticmethod(frame_nll)

    def __init__(self, from_logits=False, name="frame_nll", dtype=None):
        super().__init__(from_logits=from_logits, name=name, dtype=dtype)

    def result(self):
        return self.mean_nll()


@export
class BitsPerCharacter(_StepMean):
    """Mean negative log2-likelihood per predicted symbol (bits per character).

    `y_true` holds integer ids, `y_pred` the distribution over the
    vocabulary; the result is the NLL summed over every counted step of all
    batches, divided by their number and by ln 2.

    Args:
        from_logits: `y_pred` holds logits instead of probabilities.
        name: the metric's name (logged as `bits_per_character`).
        dtype: the dtype of the sums.

    Example:

    ```python
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  weighted_metrics=[BitsPerCharacter(from_logits=True)])
    ```

    Reference:
        Mikolov et al., "Subword Language Modeling with Neural Networks", 2012;
        Pascanu, Gulcehre, Cho, Bengio, "How to Construct Deep Recurrent
        Neural Networks", ICLR 2014, arXiv:1312.6026.
    """

    step_nll = staticmethod(token_nll)

    def __init__(self, from_logits=False, name="bits_per_character", dtype=None):
        super().__init__(from_logits=from_logits, name=name, dtype=dtype)

    def result(self):
        return ops.divide(self.mean_nll(), math.log(2.0))


@export
class Perplexity(_StepMean):
    """Perplexity: exp of the mean negative log-likelihood per predicted token.

    `y_true` holds integer ids, `y_pred` the distribution over the
    vocabulary; the mean runs over every counted token of all batches.

    Args:
        from_logits: `y_pred` holds logits instead of probabilities.
        name: the metric's name (logged as `perplexity`).
        dtype: the dtype of the sums.

    Example:

    ```python
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  weighted_metrics=[Perplexity(from_logits=True)])
    ```

    Reference:
        Mikolov, "Statistical Language Models Based on Neural Networks",
        PhD thesis, 2012; Pascanu et al. 2014, arXiv:1312.6026.
    """

    step_nll = staticmethod(token_nll)

    def __init__(self, from_logits=False, name="perplexity", dtype=None):
        super().__init__(from_logits=from_logits, name=name, dtype=dtype)

    def result(self):
        return ops.exp(self.mean_nll())


@export
class FrameBinaryCrossentropy(keras.losses.Loss):
    """Training loss for piano rolls: per-frame sum of key NLLs, mean over frames.

    The per-frame value is `frame_nll` (the 88 binary cross-entropies of a
    frame summed, not averaged as `keras.losses.BinaryCrossentropy` does);
    with the default reduction the batch loss is the mean over the frames
    whose `sample_weight` is non-zero, i.e. the NLL per time step of the
    batch.

    Args:
        from_logits: `y_pred` holds logits instead of probabilities.
        reduction: a Keras loss reduction; `"mean_with_sample_weight"`
            divides by the sum of the step weights (the number of real
            frames).
        name: the loss's name.
        dtype: the dtype of the loss computation.

    Example:

    ```python
    model.compile(optimizer="sgd", loss=FrameBinaryCrossentropy(from_logits=True))
    model.fit(x, y, sample_weight=mask)
    ```
    """

    def __init__(
        self,
        from_logits=False,
        reduction="mean_with_sample_weight",
        name="frame_binary_crossentropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        return frame_nll(y_true, y_pred, from_logits=self.from_logits)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}

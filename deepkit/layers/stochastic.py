"""Stochastic gates for conditional computation: binary gates and noisy ReLU.

Bengio, Léonard, Courville 2013 compare ways to estimate the gradient through
a stochastic binary neuron ``h = 1[z < sigm(a)]``, ``z ~ U(0, 1)``. Keras has
no custom-gradient API common to its backends, so each estimator is written
with the stop-gradient trick: the layer returns
``h + (surrogate - stop_gradient(surrogate))``, whose value is ``h`` and whose
gradient is the surrogate's.

- ``straight_through``: surrogate ``a``; the gradient reaching ``h`` is passed
  to ``a`` unchanged (Section 4; the paper found this best).
- ``straight_through_sigmoid``: surrogate ``sigm(a)``; the same gradient times
  ``sigm'(a)``.
- ``stochastic_times_smooth``: ``h = sqrt(sigm(a)) · b`` with
  ``b ~ Bernoulli(sqrt(sigm(a)))`` (Section 5, so ``E[h] = sigm(a)``); the
  gradient flows through the smooth factor, ``b`` is a constant.
- ``reinforce``: the unbiased estimator of Section 3,
  ``ĝ_i = (h_i − sigm(a_i)) (L − b_i)``, with the per-unit baseline that
  minimizes its variance, ``b_i = E[(h_i − sigm(a_i))² L] / E[(h_i −
  sigm(a_i))²]``. It needs the loss ``L`` of each example, which a layer does
  not see: the layer returns ``stop_gradient(h)`` and keeps ``h`` and ``a``
  from its last training call; the model adds `reinforce_loss` (a surrogate
  whose gradient is ``ĝ``) in its `compute_loss`, as
  `deepkit.models.ConditionalGatedMLP` does. The expectations of the baseline
  are estimated on the minibatch, leaving the example itself out, so the
  estimator stays unbiased without state; the authors' code used moving
  averages over minibatches instead.

Why the REINFORCE terms ride on the layer (Keras 3.15): the layer keeps the
tensors ``(h, a)`` of its last training call in a plain attribute, which
`reinforce_loss` reads in the model's `compute_loss`; that is right only
while the forward pass and `compute_loss` run in one trace, as they do in
Keras' `train_step` on every backend. Neither explicit route Keras offers
keeps the model's behaviour:

- `add_loss` takes finished losses, and `Trainer.compute_loss` adds every
  one of them to the loss; the surrogate's advantage ``L − b`` needs the
  per-example loss ``L(y, y_pred)``, which `call` does not see (it gets no
  ``y``), so the surrogate cannot be finished in `call`.
- Returning ``(h, a)`` with the output would make them part of ``y_pred``,
  which `train_step` hands unchanged to the compiled loss and to
  `compute_metrics`, and which a training call returns to its caller: the
  model's training output would change structure (and differ from its
  inference output), and a functional model could not route them at all.

Keras takes the same route for `add_loss` itself: its JAX trainer parks the
losses of the stateless forward call on the model (``_losses_override``)
for `compute_loss` in the same trace.
"""

import keras
from keras import ops

from deepkit import _keras_internals
from deepkit.export import export

ESTIMATORS = (
    "straight_through",
    "straight_through_sigmoid",
    "stochastic_times_smooth",
    "reinforce",
)
INFERENCE = ("threshold", "top_fraction", "expectation")
_EPSILON = 1e-6


def bernoulli_kl(target, mean):
    """KL(Bernoulli(target) ‖ Bernoulli(mean)), elementwise.

    Args:
        target: the target probability ρ, a float in (0, 1).
        mean: the mean activation ρ̂, a tensor in [0, 1].

    Returns:
        ``ρ log(ρ / ρ̂) + (1 − ρ) log((1 − ρ) / (1 − ρ̂))``.
    """
    mean = ops.clip(mean, _EPSILON, 1.0 - _EPSILON)
    return target * ops.log(target / mean) + (1.0 - target) * ops.log(
        (1.0 - target) / (1.0 - mean)
    )


def sparsity_penalty(probs, target):
    """Σ_i KL(ρ ‖ mean over the batch of probs_i): the gates' sparsity penalty.

    Args:
        probs: gate probabilities ``sigm(a)``, ``[..., units]``; every axis but
            the last is averaged.
        target: the target fraction ρ of gates on.

    Returns:
        A scalar, summed over units (as in the authors' code).
    """
    units = probs.shape[-1]
    mean = ops.mean(ops.reshape(probs, (-1, units)), axis=0)
    return ops.sum(bernoulli_kl(target, mean))


def variance_minimizing_baseline(per_example_loss, samples, probs):
    """Per-unit baseline ``b_i = E[(h_i − p_i)² L] / E[(h_i − p_i)²]``.

    Estimated on the minibatch leaving each example out, so that the baseline
    of an example does not depend on its own sample (the estimator stays
    unbiased).

    Args:
        per_example_loss: ``[B]``.
        samples: binary ``h``, ``[B, units]``.
        probs: ``p = sigm(a)``, ``[B, units]``.

    Returns:
        ``[B, units]``, the baseline of each example and unit (no gradient).
    """
    loss = ops.stop_gradient(ops.reshape(per_example_loss, (-1, 1)))
    samples, probs = ops.convert_to_tensor(samples), ops.convert_to_tensor(probs)
    weight = ops.square(ops.stop_gradient(samples) - ops.stop_gradient(probs))
    numerator = ops.sum(weight * loss, axis=0, keepdims=True) - weight * loss
    denominator = ops.sum(weight, axis=0, keepdims=True) - weight
    return numerator / (denominator + _EPSILON)


def reinforce_surrogate(per_example_loss, samples, logits):
    """A loss whose gradient in ``logits`` is the REINFORCE estimate.

    ``mean_x Σ_i stop_gradient(L_x − b_xi) · log P(h_xi | a_xi)``; since
    ``∂ log P(h | a) / ∂a = h − sigm(a)``, its gradient is
    ``(h − sigm(a)) (L − b) / B`` (Bengio et al. 2013, Eq. 5-7 with the
    baseline of `variance_minimizing_baseline`). Its value is not meaningful.

    Args:
        per_example_loss: ``L``, ``[B]``.
        samples: the binary samples ``h``, ``[B, units]``.
        logits: the pre-sigmoid ``a``, ``[B, units]``.

    Returns:
        A scalar.
    """
    logits = ops.reshape(logits, (-1, logits.shape[-1]))
    samples = ops.stop_gradient(ops.reshape(samples, ops.shape(logits)))
    probs = ops.sigmoid(ops.stop_gradient(logits))
    loss = ops.stop_gradient(ops.reshape(per_example_loss, (-1, 1)))
    baseline = variance_minimizing_baseline(per_example_loss, samples, probs)
    log_prob = samples * ops.log_sigmoid(logits) + (1.0 - samples) * ops.log_sigmoid(
        -logits
    )
    advantage = ops.stop_gradient(loss - baseline)
    return ops.mean(ops.sum(advantage * log_prob, axis=-1))


def _per_example_loss(model, y, y_pred, sample_weight=None):
    loss = model.loss
    if isinstance(loss, (list, tuple, dict)):
        raise ValueError("reinforce_loss supports a single compiled loss")
    if isinstance(loss, str) or loss is None:
        loss = keras.losses.get(loss or "sparse_categorical_crossentropy")
    if isinstance(loss, keras.losses.Loss):
        values = loss.call(y, y_pred)
    else:
        values = loss(y, y_pred)
    values = ops.reshape(values, (ops.shape(values)[0], -1))
    values = ops.mean(values, axis=-1)
    if sample_weight is not None:
        values = values * ops.reshape(ops.cast(sample_weight, values.dtype), (-1,))
    return values


def reinforce_loss(model, y, y_pred, sample_weight=None):
    """The REINFORCE surrogate of every `StochasticBinaryGate` in ``model``.

    Call it from a model's `compute_loss`, in training, after the forward
    pass that produced ``y_pred``. The per-example loss is ``model.loss``
    unreduced (a single compiled loss).

    Args:
        model: the model whose forward pass just ran.
        y, y_pred, sample_weight: as given to `compute_loss`.

    Returns:
        A scalar, or None when no gate uses ``estimator="reinforce"``.
    """
    total = None
    for layer in _keras_internals.flatten_layers(model):
        if not isinstance(layer, StochasticBinaryGate):
            continue
        terms = layer.pending_reinforce_terms()
        if terms is None:
            continue
        samples, logits = terms
        per_example = _per_example_loss(model, y, y_pred, sample_weight)
        term = layer.reinforce_scale * reinforce_surrogate(per_example, samples, logits)
        total = term if total is None else total + term
    return total


def _gate_inference(probs, inference, threshold, fraction):
    if inference == "expectation":
        return probs
    if inference == "threshold":
        return ops.cast(ops.greater(probs, threshold), probs.dtype)
    units = probs.shape[-1]
    keep = max(1, int(round(fraction * units)))
    kth = ops.top_k(probs, keep)[0][..., keep - 1 :]
    return ops.cast(ops.greater_equal(probs, kth), probs.dtype)


@export
class StochasticBinaryGate(keras.layers.Layer):
    """Stochastic binary gates ``h = 1[z < sigm(a)]`` with a gradient estimator.

    The input is the gates' pre-activation ``a``. In training each gate is
    sampled on with probability ``sigm(a)`` and the gradient is estimated by
    ``estimator`` (see the module docstring); a sparsity penalty
    ``sparsity_weight · Σ_units KL(ρ ‖ mean over the batch of sigm(a))``
    pulls the fraction of gates on towards ``sparsity_target`` = ρ
    (the authors' code sums over units). At inference the gate is
    deterministic: ``"threshold"`` (``sigm(a) > threshold``, the authors'
    deterministic mask), ``"top_fraction"`` (the ``round(ρ · units)`` gates of
    largest ``sigm(a)`` of each example are on, so that exactly the target
    fraction is on, as the paper describes its test-time computation) or
    ``"expectation"`` (the gate's mean, ``sigm(a)``). For
    ``stochastic_times_smooth`` the deterministic gate is ``sqrt(sigm(a))``
    times that mask (``sigm(a)`` for ``"expectation"``).

    Args:
        estimator: one of ``"straight_through"``,
            ``"straight_through_sigmoid"``, ``"stochastic_times_smooth"``,
            ``"reinforce"``.
        sparsity_target: ρ, the target fraction of gates on.
        sparsity_weight: weight of the KL penalty; 0 turns it off.
        inference: ``"threshold"``, ``"top_fraction"`` or ``"expectation"``.
        threshold: the threshold on ``sigm(a)`` for ``inference="threshold"``.
        reinforce_scale: multiplies the REINFORCE surrogate (a learning-rate
            scale for the gater's task gradient; the paper used a 100×
            smaller learning rate for the REINFORCE gater).
        seed: seed for the samples.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: the pre-activations ``a``.
        training: sample (True) or use the deterministic gate.

    Returns:
        Gates shaped like the input.

    Example:

    ```python
    gate = StochasticBinaryGate("straight_through", sparsity_target=0.1)
    gated = gate(gater_logits, training=True) * main_path
    ```

    Reference:
        Bengio, Léonard, Courville 2013, "Estimating or Propagating Gradients
        Through Stochastic Neurons for Conditional Computation",
        arXiv:1308.3432.
    """

    def __init__(
        self,
        estimator="straight_through",
        sparsity_target=0.1,
        sparsity_weight=0.1,
        inference="threshold",
        threshold=0.5,
        reinforce_scale=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if inference not in INFERENCE:
            raise ValueError(f"inference must be one of {INFERENCE}, got {inference!r}")
        if not 0.0 < sparsity_target < 1.0:
            raise ValueError(f"sparsity_target must be in (0, 1), got {sparsity_target}")
        if sparsity_weight < 0:
            raise ValueError(f"sparsity_weight must be >= 0, got {sparsity_weight}")
        self.estimator = estimator
        self.sparsity_target = float(sparsity_target)
        self.sparsity_weight = float(sparsity_weight)
        self.inference = inference
        self.threshold = float(threshold)
        self.reinforce_scale = float(reinforce_scale)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True
        self._set_pending(None)

    def _set_pending(self, terms):
        # Plain attribute, not tracked: tensors of the current training step.
        object.__setattr__(self, "_pending_reinforce", terms)

    def pending_reinforce_terms(self):
        """``(samples, logits)`` of the last training call (REINFORCE only)."""
        return self._pending_reinforce

    def call(self, inputs, training=None):
        logits = inputs
        probs = ops.sigmoid(logits)
        if not training:
            self._set_pending(None)
            if self.estimator == "stochastic_times_smooth" and self.inference != "expectation":
                mask = _gate_inference(probs, self.inference, self.threshold, self.sparsity_target)
                return ops.sqrt(probs) * mask
            return _gate_inference(probs, self.inference, self.threshold, self.sparsity_target)

        if self.sparsity_weight:
            self.add_loss(
                self.sparsity_weight * sparsity_penalty(probs, self.sparsity_target)
            )
        uniform = keras.random.uniform(
            ops.shape(logits), dtype=probs.dtype, seed=self.seed_generator
        )
        if self.estimator == "stochastic_times_smooth":
            smooth = ops.sqrt(probs)
            on = ops.cast(ops.less(uniform, smooth), probs.dtype)
            return smooth * ops.stop_gradient(on)
        samples = ops.cast(ops.less(uniform, probs), probs.dtype)
        if self.estimator == "straight_through":
            return samples + (logits - ops.stop_gradient(logits))
        if self.estimator == "straight_through_sigmoid":
            return samples + (probs - ops.stop_gradient(probs))
        self._set_pending((samples, logits))
        return ops.stop_gradient(samples)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "estimator": self.estimator,
                "sparsity_target": self.sparsity_target,
                "sparsity_weight": self.sparsity_weight,
                "inference": self.inference,
                "threshold": self.threshold,
                "reinforce_scale": self.reinforce_scale,
                "seed": self.seed,
            }
        )
        return config


@export
class NoisyReLU(keras.layers.Layer):
    """Noisy rectifier ``max(0, a + ε)``, ``ε ~ N(0, stddev²)`` in training.

    Bengio et al. 2013, Section 6: a rectifier with Gaussian noise before it,
    used as a gate whose zeros switch computation off; an L1 penalty on its
    outputs keeps it sparse. At inference it is ``max(0, a)``.

    Args:
        stddev: standard deviation of the noise.
        l1: weight of the L1 penalty ``l1 · mean over the batch of
            Σ_units |h|`` (added in training); 0 turns it off.
        seed: seed for the noise.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: pre-activations ``a``.
        training: add noise and the penalty.

    Returns:
        Rectified outputs shaped like the input.

    Example:

    ```python
    gate = NoisyReLU(stddev=1.0, l1=1e-5)
    ```

    Reference:
        Bengio, Léonard, Courville 2013, arXiv:1308.3432.
    """

    def __init__(self, stddev=1.0, l1=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if stddev < 0 or l1 < 0:
            raise ValueError("stddev and l1 must be >= 0")
        self.stddev = float(stddev)
        self.l1 = float(l1)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not training:
            return ops.relu(inputs)
        noisy = inputs
        if self.stddev:
            noisy = inputs + self.stddev * keras.random.normal(
                ops.shape(inputs), dtype=inputs.dtype, seed=self.seed_generator
            )
        outputs = ops.relu(noisy)
        if self.l1:
            units = outputs.shape[-1]
            flat = ops.reshape(ops.abs(outputs), (-1, units))
            self.add_loss(self.l1 * ops.mean(ops.sum(flat, axis=-1)))
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"stddev": self.stddev, "l1": self.l1, "seed": self.seed})
        return config


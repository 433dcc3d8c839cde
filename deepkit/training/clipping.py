"""Gradient clipping done right: pure clipping functions, adaptive thresholds,
and `ClipGradients`, a wrapper around any Keras optimizer.

The functions are small and pure (tensors in, tensors out, after optax's
`clip_by_global_norm` and `adaptive_grad_clip`); the threshold rules keep
their state in the wrapper's variables, so it is saved with the optimizer
and a resumed run clips exactly as an uninterrupted one.

Reference: Pascanu, Mikolov, Bengio, "On the difficulty of training
recurrent neural networks", ICML 2013 (PMLR vol. 28), arXiv:1211.5063,
Algorithm 1 and section 3.2 (a threshold of half to ten times the average
norm); Seetharaman et al. 2020, "AutoClip", arXiv:2007.14469; Kumar et al.
2025, "ZClip", arXiv:2504.02507; Brock et al. 2021, "High-Performance
Large-Scale Image Recognition Without Normalization", arXiv:2102.06171
(adaptive gradient clipping).
"""

import keras
from keras import ops

from deepkit import _distribute, _keras_internals
from deepkit.export import export

NON_FINITE = ("skip", "shrink", "stop", "apply")
RULES = ("global_norm", "value", "unitwise")


# -- pure functions -------------------------------------------------------------

def global_norm(grads):
    """``sqrt(Σ ‖g‖²)`` over a list of gradients (None entries ignored), float32."""
    squares = [ops.sum(ops.square(ops.cast(g, "float32"))) for g in grads if g is not None]
    if not squares:
        return ops.convert_to_tensor(0.0, "float32")
    return ops.sqrt(ops.sum(ops.stack(squares)))


def clip_by_global_norm(grads, threshold, norm=None):
    """Pascanu et al.'s Algorithm 1: if ``‖g‖ ≥ threshold``, ``g ← threshold · g / ‖g‖``.

    Args:
        grads: a list of gradients (None entries kept).
        threshold: the largest norm left unchanged (a number or a scalar tensor).
        norm: the global norm of `grads` if already computed.

    Returns:
        The clipped list; its global norm is ``min(‖g‖, threshold)``.
    """
    norm = global_norm(grads) if norm is None else norm
    threshold = ops.cast(threshold, "float32")
    scale = ops.where(norm > threshold, threshold / ops.maximum(norm, 1e-30), 1.0)
    return [None if g is None else ops.multiply(g, ops.cast(scale, g.dtype)) for g in grads]


def clip_by_value(grads, threshold):
    """Element-wise clipping of every gradient entry into ``[-threshold, threshold]``."""
    return [None if g is None else ops.clip(g, -threshold, threshold) for g in grads]


def unitwise_norm(x):
    """The norm of each output unit's weights: a kernel ``[..., in, out]`` gives
    ``[1, ..., 1, out]`` (norm over all axes but the last); a vector or scalar
    (a bias, a gain) is its absolute value."""
    x = ops.cast(x, "float32")
    if len(x.shape) <= 1:
        return ops.abs(x)
    return ops.sqrt(ops.sum(ops.square(x), axis=tuple(range(len(x.shape) - 1)), keepdims=True))


def adaptive_clip(grads, params, clipping=0.01, eps=1e-3):
    """Brock et al.'s unit-wise adaptive clipping (AGC).

    Each unit's gradient is rescaled so that its norm is at most
    ``clipping · max(‖W_unit‖, eps)``.

    Args:
        grads: a list of gradients.
        params: the variables (or their values) the gradients belong to.
        clipping: the largest ratio of a unit's gradient norm to its weight norm.
        eps: the smallest weight norm used (so zero-initialized units can move).

    Returns:
        The clipped list.
    """
    out = []
    for g, p in zip(grads, params):
        if g is None:
            out.append(None)
            continue
        limit = clipping * ops.maximum(unitwise_norm(p), eps)
        norm = unitwise_norm(g)
        scale = ops.where(norm > limit, limit / ops.maximum(norm, 1e-30), 1.0)
        out.append(ops.multiply(g, ops.cast(scale, g.dtype)))
    return out


# -- adaptive thresholds ---------------------------------------------------------

def _tensors(state, *values):
    """The state dict and the values as tensors (numpy arrays mix with no
    backend's tensors on torch)."""
    state = {k: ops.convert_to_tensor(v) for k, v in state.items()}
    return (state, *(ops.convert_to_tensor(v) for v in values))


class ThresholdRule:
    """Base of the adaptive thresholds of `ClipGradients`.

    A rule is three pure functions of tensors: `state_shapes()` names its
    state (float32 variables of the wrapper, saved with the optimizer),
    `threshold(state, step)` gives this step's threshold from the norms seen
    before, and `update(state, norm, clipped_norm, step)` the next state.
    Recipes name the rules under ``ClipGradients: {threshold: {Name: ...}}``.
    """

    def state_shapes(self):
        return {}

    def get_config(self):
        return dict(self._config)

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@export
class AverageNorm(ThresholdRule):
    """Threshold = ``multiple`` × the average gradient norm seen so far.

    Pascanu et al. (section 3.2) advise a threshold between half and ten
    times the average norm over many updates; this rule tracks that average
    (the plain mean of all previous norms, or an exponential moving average
    with ``decay``). For the first ``warmup_steps`` steps nothing is clipped.

    Args:
        multiple: the threshold as a multiple of the average norm.
        decay: None for the mean of all previous norms; else the decay of an
            exponential moving average (0.99: about the last 100 steps).
        warmup_steps: steps before clipping starts (at least 1).

    Example:

    ```python
    optimizer = ClipGradients(keras.optimizers.SGD(0.01), threshold=AverageNorm(2.0))
    ```

    Reference: Pascanu, Mikolov, Bengio 2013, ICML, arXiv:1211.5063, section 3.2.
    """

    def __init__(self, multiple=1.0, decay=None, warmup_steps=1):
        if not multiple > 0:
            raise ValueError(f"AverageNorm: multiple must be > 0, got {multiple!r}")
        if decay is not None and not 0 < decay < 1:
            raise ValueError(f"AverageNorm: decay must be None or in (0, 1), got {decay!r}")
        if int(warmup_steps) < 1:
            raise ValueError(f"AverageNorm: warmup_steps must be >= 1, got {warmup_steps!r}")
        self.multiple, self.decay, self.warmup_steps = float(multiple), decay, int(warmup_steps)
        self._config = {"multiple": self.multiple, "decay": decay,
                        "warmup_steps": self.warmup_steps}

    def state_shapes(self):
        return {"average": ()}

    def threshold(self, state, step):
        (state,) = _tensors(state)
        limit = self.multiple * state["average"]
        return ops.where(step < self.warmup_steps, float("inf"), limit)

    def update(self, state, norm, clipped_norm, step):
        state, norm = _tensors(state, norm)
        step = ops.cast(step, "float32")
        if self.decay is None:
            average = state["average"] + (norm - state["average"]) / (step + 1.0)
        else:
            average = ops.where(step < 1.0, norm,
                                self.decay * state["average"] + (1.0 - self.decay) * norm)
        return {"average": average}


@export
class PercentileNorm(ThresholdRule):
    """Threshold = the ``percentile``-th percentile of the last ``window`` norms (AutoClip).

    Args:
        percentile: in (0, 100]; AutoClip uses 10.
        window: how many past norms are kept (AutoClip keeps all; a window
            bounds the memory).
        warmup_steps: steps before clipping starts (at least 1).

    Example:

    ```python
    optimizer = ClipGradients(keras.optimizers.Adam(1e-3), threshold=PercentileNorm(10))
    ```

    Reference: Seetharaman, Wichern, Pardo, Le Roux 2020, "AutoClip: Adaptive
    Gradient Clipping for Source Separation Networks", arXiv:2007.14469.
    """

    def __init__(self, percentile=10.0, window=1000, warmup_steps=1):
        if not 0 < percentile <= 100:
            raise ValueError(f"PercentileNorm: percentile must be in (0, 100], got {percentile!r}")
        if int(window) < 1:
            raise ValueError(f"PercentileNorm: window must be >= 1, got {window!r}")
        if int(warmup_steps) < 1:
            raise ValueError(f"PercentileNorm: warmup_steps must be >= 1, got {warmup_steps!r}")
        self.percentile, self.window = float(percentile), int(window)
        self.warmup_steps = int(warmup_steps)
        self._config = {"percentile": self.percentile, "window": self.window,
                        "warmup_steps": self.warmup_steps}

    def state_shapes(self):
        return {"history": (self.window,)}

    def threshold(self, state, step):
        count = ops.minimum(ops.cast(step, "int32"), self.window)
        # Unfilled slots sort last (+inf); the percentile of the filled ones,
        # by the lower of the two nearest ranks.
        slots = ops.arange(self.window, dtype="int32")
        filled = ops.where(slots < count, state["history"], float("inf"))
        ordered = ops.sort(filled)
        rank = ops.cast(ops.floor(self.percentile / 100.0
                                  * ops.cast(ops.maximum(count - 1, 0), "float32")), "int32")
        limit = ops.take(ordered, rank)
        return ops.where(step < self.warmup_steps, float("inf"), limit)

    def update(self, state, norm, clipped_norm, step):
        position = ops.mod(ops.cast(step, "int32"), self.window)
        history = ops.where(ops.arange(self.window, dtype="int32") == position, norm,
                            state["history"])
        return {"history": history}


@export
class ZScoreNorm(ThresholdRule):
    """Threshold = ``mean + z · std`` of the norm, both exponential moving averages (ZClip).

    After ``warmup_steps`` steps (whose norms initialize the mean and the
    variance), a norm more than ``z`` standard deviations above the mean is
    clipped to ``mean + z · std``; the averages are then updated with the
    clipped norm, so a spike does not inflate them.

    Args:
        z: the z-score above which a norm is clipped (ZClip: 2.5).
        decay: the decay of the moving averages (ZClip's ``1 - alpha``: 0.97).
        warmup_steps: steps whose norms only feed the averages.

    Example:

    ```python
    optimizer = ClipGradients(keras.optimizers.Adam(1e-3), threshold=ZScoreNorm(2.5))
    ```

    Reference: Kumar, Owen, Ashraf, Mirzaei 2025, "ZClip: Adaptive Spike
    Mitigation for LLM Pre-Training", arXiv:2504.02507.
    """

    def __init__(self, z=2.5, decay=0.97, warmup_steps=25):
        if not z > 0:
            raise ValueError(f"ZScoreNorm: z must be > 0, got {z!r}")
        if not 0 < decay < 1:
            raise ValueError(f"ZScoreNorm: decay must be in (0, 1), got {decay!r}")
        if int(warmup_steps) < 1:
            raise ValueError(f"ZScoreNorm: warmup_steps must be >= 1, got {warmup_steps!r}")
        self.z, self.decay, self.warmup_steps = float(z), float(decay), int(warmup_steps)
        self._config = {"z": self.z, "decay": self.decay, "warmup_steps": self.warmup_steps}

    def state_shapes(self):
        return {"mean": (), "variance": ()}

    def threshold(self, state, step):
        (state,) = _tensors(state)
        limit = state["mean"] + self.z * ops.sqrt(ops.maximum(state["variance"], 0.0))
        return ops.where(step < self.warmup_steps, float("inf"), limit)

    def update(self, state, norm, clipped_norm, step):
        state, norm, clipped_norm = _tensors(state, norm, clipped_norm)
        step = ops.cast(step, "float32")
        warm = step < float(self.warmup_steps)
        # During warm-up: the running mean and variance of the raw norms.
        n = step + 1.0
        delta = norm - state["mean"]
        warm_mean = state["mean"] + delta / n
        warm_var = state["variance"] + (delta * (norm - warm_mean) - state["variance"]) / n
        # Afterwards: exponential averages of the clipped norm.
        mean = self.decay * state["mean"] + (1.0 - self.decay) * clipped_norm
        var = (self.decay * state["variance"]
               + (1.0 - self.decay) * ops.square(clipped_norm - mean))
        return {"mean": ops.where(warm, warm_mean, mean),
                "variance": ops.where(warm, warm_var, var)}


# -- the wrapper -----------------------------------------------------------------

@export
class ClipGradients(keras.optimizers.Optimizer):
    """Clip the gradient, then step with any Keras optimizer.

    In the spirit of Keras' `LossScaleOptimizer`: it wraps an optimizer and
    changes the gradient before the wrapped optimizer sees it.

    - ``rule="global_norm"``: Pascanu et al.'s Algorithm 1 on the norm of the
      whole gradient, with a fixed ``threshold`` or an adaptive one
      (`AverageNorm`, `PercentileNorm` for AutoClip, `ZScoreNorm` for ZClip);
    - ``rule="value"``: every entry into ``[-threshold, threshold]``;
    - ``rule="unitwise"``: Brock et al.'s adaptive clipping, ``threshold``
      being the largest ratio of a unit's gradient norm to its weight norm.

    The norm is that of the **global batch's gradient**: under a
    TensorFlow distribution strategy the replicas' gradients are summed before the
    norm is taken (Keras' own ``global_clipnorm`` clips each replica's part),
    and under JAX's `keras.distribution` the gradient is global already.

    A step whose gradient is not finite follows ``non_finite``:

    - ``"skip"``: nothing changes, neither the weights nor the wrapped
      optimizer's state (Adam's moments do not decay through a zero
      gradient; its step count does not advance);
    - ``"shrink"``: the authors' code: the variables whose path contains one
      of ``recurrent`` (default ``recurrent_kernel``) become
      ``(1 - shrink) · W``, the rest stay, the wrapped optimizer's state is kept;
    - ``"stop"``: as ``"skip"``, and `ClippingLogs` stops `fit` with a
      `NonFiniteGradient` error at the end of that batch, before any
      checkpoint of the epoch is written;
    - ``"apply"``: as Keras does (the update becomes NaN).

    Counters (`steps`, `clipped_steps`, `skipped_steps`, `norm_sum`,
    `last_norm`, `last_threshold`) are optimizer variables, saved with it;
    `ClippingLogs` writes their per-epoch values into the logs.

    Args:
        optimizer: the wrapped `keras.optimizers.Optimizer`.
        threshold: a positive number or an adaptive rule (``global_norm`` only).
        rule: ``"global_norm"``, ``"value"`` or ``"unitwise"``.
        non_finite: ``"skip"``, ``"shrink"``, ``"stop"`` or ``"apply"``.
        shrink: the fraction taken off the recurrent weights by ``"shrink"``.
        recurrent: substrings of the paths of the variables ``"shrink"`` acts on.
        name: the optimizer's name.

    Example:

    ```python
    optimizer = ClipGradients(keras.optimizers.SGD(0.01), threshold=1.0)
    model.compile(optimizer, "mse")
    model.fit(x, y, callbacks=[ClippingLogs()])   # logs grad_norm, clipped, skipped
    ```

    Reference: Pascanu, Mikolov, Bengio, "On the difficulty of training
    recurrent neural networks", ICML 2013, arXiv:1211.5063, Algorithm 1.
    """

    def __init__(self, optimizer, threshold=1.0, rule="global_norm", non_finite="skip",
                 shrink=0.02, recurrent=("recurrent_kernel",), name=None, **kwargs):
        if kwargs:
            raise ValueError(f"ClipGradients does not take {sorted(kwargs)}; set them on the "
                             "wrapped optimizer")
        if isinstance(optimizer, dict):
            optimizer = keras.optimizers.deserialize(optimizer)
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise ValueError(f"ClipGradients: optimizer must be a Keras optimizer, got "
                             f"{type(optimizer).__name__}")
        if isinstance(threshold, dict):
            threshold = keras.saving.deserialize_keras_object(threshold)
        if rule not in RULES:
            raise ValueError(f"ClipGradients: rule must be one of {RULES}, got {rule!r}")
        if isinstance(threshold, ThresholdRule):
            if rule != "global_norm":
                raise ValueError("ClipGradients: an adaptive threshold needs rule='global_norm'")
        elif isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not threshold > 0:
            raise ValueError(f"ClipGradients: threshold must be a positive number or an "
                             f"adaptive rule, got {threshold!r}")
        if non_finite not in NON_FINITE:
            raise ValueError(f"ClipGradients: non_finite must be one of {NON_FINITE}, "
                             f"got {non_finite!r}")
        if not 0 < shrink < 1:
            raise ValueError(f"ClipGradients: shrink must be in (0, 1), got {shrink!r}")
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.threshold = threshold
        self.rule = rule
        self.non_finite = non_finite
        self.shrink = float(shrink)
        self.recurrent = tuple(recurrent)

    # -- state ----------------------------------------------------------------
    def build(self, var_list):
        def scalar(name, dtype="float32"):
            return self.add_variable(shape=(), dtype=dtype, initializer="zeros",
                                     aggregation="only_first_replica", name=name)

        self.steps = scalar("steps", "int")
        self.clipped_steps = scalar("clipped_steps", "int")
        self.skipped_steps = scalar("skipped_steps", "int")
        self.norm_sum = scalar("norm_sum")
        self.last_norm = scalar("last_norm")
        self.last_threshold = scalar("last_threshold")
        self.rule_state = {}
        if isinstance(self.threshold, ThresholdRule):
            for key, shape in self.threshold.state_shapes().items():
                self.rule_state[key] = self.add_variable(
                    shape=shape, dtype="float32", initializer="zeros",
                    aggregation="only_first_replica", name=f"threshold_{key}")
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self):
        return (list(_keras_internals.own_optimizer_variables(self))
                + list(self.inner_optimizer.variables))

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        if hasattr(self, "inner_optimizer"):
            self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    # -- one step -----------------------------------------------------------------
    def _clip(self, grads, variables, norm):
        """(clipped grads, threshold in force, whether clipping changed them)."""
        if self.rule == "value":
            limit = ops.convert_to_tensor(float(self.threshold), "float32")
            big = [ops.any(ops.abs(g) > limit) for g in grads if g is not None]
            return clip_by_value(grads, float(self.threshold)), limit, ops.any(ops.stack(big))
        if self.rule == "unitwise":
            clipped = adaptive_clip(grads, variables, float(self.threshold))
            return clipped, ops.convert_to_tensor(float(self.threshold), "float32"), \
                global_norm(clipped) < norm
        if isinstance(self.threshold, ThresholdRule):
            state = {k: v.value for k, v in self.rule_state.items()}
            limit = self.threshold.threshold(state, self.steps.value)
        else:
            limit = ops.convert_to_tensor(float(self.threshold), "float32")
        return clip_by_global_norm(grads, limit, norm), limit, norm > limit

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            self.build(trainable_variables)
            self.built = True
        variables = list(trainable_variables
                         or _keras_internals.optimizer_trainable_variables(self))
        grads = list(grads)
        # The global batch's gradient: summed over replicas (a TensorFlow
        # strategy); `spread` turns it back into a per-replica share, which the
        # wrapped optimizer's own cross-replica sum adds up again.
        grads, spread = _distribute.sum_over_replicas(grads)
        norm = global_norm(grads)
        finite = ops.isfinite(norm)
        clipped, limit, was_clipped = self._clip(grads, variables, norm)
        if self.non_finite == "apply":
            self.inner_optimizer.apply(spread(clipped), variables)
        else:
            safe = [None if g is None else ops.where(finite, g, ops.zeros_like(g))
                    for g in clipped]
            keep = list(variables) + list(self.inner_optimizer.variables)
            # Snapshots (on TF a variable read here, before the update).
            before = [ops.copy(v.value) for v in keep]
            self.inner_optimizer.apply(spread(safe), variables)
            # Only a finite step counts: otherwise everything goes back.
            restored = [ops.where(finite, v.value, old) for v, old in zip(keep, before)]
            if self.non_finite == "shrink":
                restored = [
                    ops.where(finite, new, old * (1.0 - self.shrink))
                    if i < len(variables) and any(s in variables[i].path for s in self.recurrent)
                    else new
                    for i, (new, old) in enumerate(zip(restored, before))
                ]
            _distribute.assign(keep, restored)
        self._update_counters(norm, finite, limit, was_clipped)
        _keras_internals.count_optimizer_step(self)

    def _update_counters(self, norm, finite, limit, was_clipped):
        finite_norm = ops.where(finite, norm, 0.0)
        if isinstance(self.threshold, ThresholdRule):
            state = {k: v.value for k, v in self.rule_state.items()}
            clipped_norm = ops.minimum(finite_norm, limit)
            new = self.threshold.update(state, finite_norm, clipped_norm, self.steps.value)
            for key, variable in self.rule_state.items():
                variable.assign(ops.where(finite, new[key], variable.value))
        self.last_norm.assign(norm)
        self.last_threshold.assign(ops.where(ops.isfinite(limit), limit, -1.0))
        self.norm_sum.assign_add(finite_norm)
        self.steps.assign_add(ops.cast(finite, "int32"))
        self.clipped_steps.assign_add(ops.cast(ops.logical_and(finite, was_clipped), "int32"))
        self.skipped_steps.assign_add(ops.cast(ops.logical_not(finite), "int32"))

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        threshold = self.threshold
        if isinstance(threshold, ThresholdRule):
            threshold = keras.saving.serialize_keras_object(threshold)
        return {"name": self.name,
                "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
                "threshold": threshold, "rule": self.rule, "non_finite": self.non_finite,
                "shrink": self.shrink, "recurrent": list(self.recurrent)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["optimizer"] = keras.saving.deserialize_keras_object(
            config["optimizer"], custom_objects=custom_objects)
        return cls(**config)


class NonFiniteGradient(RuntimeError):
    """A `ClipGradients(non_finite="stop")` step had a gradient that was not finite."""


@export
class ClippingLogs(keras.callbacks.Callback):
    """Write what `ClipGradients` did in each epoch into the logs.

    Adds ``grad_norm`` (the mean norm before clipping over the epoch's finite
    steps), ``clipped`` (the fraction of those steps that were clipped),
    ``skipped`` (steps whose gradient was not finite) and, for an adaptive
    rule, ``clip_threshold`` (the last threshold in force), so History, CSV
    files, TensorBoard and progress bars show them. Put it before the
    callbacks that write logs and before the checkpoint. With
    ``non_finite="stop"`` it raises `NonFiniteGradient` at the end of an
    epoch that had such a step (those steps were skipped), before that
    epoch's checkpoint is written, so the last good one is kept.

    Example:

    ```python
    model.compile(ClipGradients(keras.optimizers.SGD(0.01), threshold=1.0), "mse")
    history = model.fit(x, y, epochs=3, callbacks=[ClippingLogs()])
    history.history["grad_norm"], history.history["clipped"]
    ```

    Reference: Pascanu, Mikolov, Bengio 2013, ICML, arXiv:1211.5063 (the
    norms of section 3.2).
    """

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _optimizer(self):
        optimizer = getattr(self.model, "optimizer", None)
        if not isinstance(optimizer, ClipGradients):
            raise ValueError("ClippingLogs needs a model compiled with a ClipGradients "
                             f"optimizer, got {type(optimizer).__name__}")
        return optimizer

    def _counters(self):
        optimizer = self._optimizer()
        if not optimizer.built:
            return (0, 0, 0, 0.0)
        return tuple(float(ops.convert_to_numpy(v)) for v in (
            optimizer.steps, optimizer.clipped_steps, optimizer.skipped_steps,
            optimizer.norm_sum))

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._counters()

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self._optimizer()
        steps, clipped, skipped, norms = (b - a for a, b in zip(self._start, self._counters()))
        if logs is not None:
            logs["grad_norm"] = norms / steps if steps else float("nan")
            logs["clipped"] = clipped / steps if steps else 0.0
            logs["skipped"] = skipped
            if isinstance(optimizer.threshold, ThresholdRule):
                logs["clip_threshold"] = float(ops.convert_to_numpy(optimizer.last_threshold))
        if skipped and optimizer.non_finite == "stop":
            raise NonFiniteGradient(
                f"{int(skipped)} step(s) of epoch {epoch + 1} had a gradient that was not "
                "finite (they were skipped); training stopped before this epoch's checkpoint")

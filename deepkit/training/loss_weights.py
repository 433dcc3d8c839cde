"""Loss weights that follow a schedule of the training step, without recompiling.

`ScheduledLoss(loss, weight)` is a Keras loss: ``weight(step) * loss``, with
``weight`` a Keras schedule of the optimizer's step count (the number of
updates made before the current batch, as for learning-rate schedules). It
goes where any loss goes, ``compile(loss={"hints": ScheduledLoss(...),
...})``; `LossWeightScheduler`, passed to `fit` (and to a standalone
`evaluate`), gives it the step.

Why the step comes from the training step, and not from a variable the loss
reads (the `K.variable` trick of Keras 2, keras-team/keras #2595, #6446,
#10358, #13826, #20294). A loss sees neither the optimizer nor whether it is
training (`evaluate` computes it too), and on JAX it sees only the values
the trainer passes through the jitted step: `fit` holds the model's,
optimizer's and metrics' state in its loop, purges the variables' own
values, and maps into `compute_loss` the model's and metrics' variables
only. A variable the loss owns, or the optimizer's ``iterations`` read
inside `compute_loss`, is therefore a constant baked at trace time (or, for
the purged optimizer variables, no value at all: measured on Keras 3.15,
``TypeError: 'NoneType' object is not callable``). So `LossWeightScheduler`
wraps the model's own training step: on JAX it takes the step count from
the optimizer state the jitted step receives (``state[2]``), on TensorFlow
(and torch) it hands over ``optimizer.iterations`` itself, read inside the
step before the update. Either way the weight at step ``t`` is the schedule
at ``t``, also with ``steps_per_execution > 1``; and the step is the
optimizer's, so it is saved in `.keras` files and checkpoints and a resumed
run continues the schedule. Evaluation uses the weight at the current step;
on JAX that step is a constant of the traced evaluation step, which is
rebuilt for each evaluation during a `fit`.

A training step of your own gives the step with ``with
loss_weight_step(step): ...`` around its `compute_loss`.
"""

import contextlib
import functools

import keras
from keras import ops

from deepkit import _keras_internals
from deepkit.export import export

# The steps given by `loss_weight_step`, innermost last. Read while a
# training or evaluation step is traced or run (one thread).
_STEPS = []


@contextlib.contextmanager
def loss_weight_step(step):
    """Give `ScheduledLoss` the training step ``step`` in the code this runs.

    For a training step of your own (or a test of one loss): the losses
    computed inside take their weights at ``step``. `LossWeightScheduler`
    uses it around the model's own steps.

    Args:
        step: the optimizer's step count: an int, a tensor (the traced value
            inside a jitted JAX step), or a variable such as
            ``optimizer.iterations`` (read where the loss is computed).

    Example:

    ```python
    with loss_weight_step(model.optimizer.iterations):
        loss = model.compute_loss(x, y, model(x, training=True), training=True)
    ```
    """
    _STEPS.append(step)
    try:
        yield step
    finally:
        _STEPS.pop()


def current_loss_weight_step():
    """The step of the innermost `loss_weight_step`, or None outside one."""
    return _STEPS[-1] if _STEPS else None


def _weight(value, owner):
    if isinstance(value, dict):
        value = keras.optimizers.schedules.deserialize(value)
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: weight must be a number or a "
                        f"keras.optimizers.schedules.LearningRateSchedule, got {value!r}")
    return float(value)


def _match_ranks(y_true, y_pred):
    """Squeeze or expand a trailing axis of size 1 so the ranks agree, as
    Keras' own wrapper of loss functions does before calling them."""
    true_rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if true_rank == pred_rank + 1 and y_true.shape[-1] == 1:
        if pred_rank == 1:
            y_pred = ops.expand_dims(y_pred, -1)
        else:
            y_true = ops.squeeze(y_true, -1)
    elif pred_rank == true_rank + 1 and y_pred.shape[-1] == 1:
        if true_rank == 1:
            y_true = ops.expand_dims(y_true, -1)
        else:
            y_pred = ops.squeeze(y_pred, -1)
    return y_true, y_pred


class _FunctionLoss(keras.losses.Loss):
    """A loss function ``fn(y_true, y_pred) -> per-example values`` as a
    `keras.losses.Loss` (sample weights, masks and the mean over the batch
    from the base class). Never serialized itself: `ScheduledLoss` keeps the
    function's own identifier."""

    def __init__(self, fn):
        super().__init__(name=getattr(fn, "__name__", "loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        y_true, y_pred = _match_ranks(y_true, y_pred)
        return self.fn(y_true, y_pred)


def _resolve_loss(identifier):
    loss = keras.losses.get(identifier)
    if loss is None:
        raise ValueError("ScheduledLoss: loss must be given, got None")
    if isinstance(loss, keras.losses.Loss):
        return loss
    if callable(loss):
        return _FunctionLoss(loss)
    raise TypeError(f"ScheduledLoss: loss must be a Keras loss, its name or a function, "
                    f"got {identifier!r}")


@export
class ScheduledLoss(keras.losses.Loss):
    """A loss times a weight that follows a schedule of the training step.

    ``ScheduledLoss(loss, weight)(y_true, y_pred) = weight(t) * loss(y_true,
    y_pred)``, where ``t`` is the optimizer's step count (updates made before
    this batch) and ``loss`` applies the sample weights and its own
    reduction. Used per output in `compile`, it makes a loss weight change
    during training, on every backend, without recompiling: the paper's
    joint training anneals the hint loss's weight, ``w · hints + (1 − w) ·
    task``. With a schedule, the step comes from `LossWeightScheduler` (pass
    it to `fit`, and to an `evaluate` outside `fit`) or from
    `loss_weight_step` in a training step of your own; computing the loss
    without either raises an error rather than guess the step. A number is
    a constant weight and needs neither.

    The value it returns is weighted, so the output's entry in the logs
    (``hints_loss``) is the weighted loss (Keras' own ``loss_weights`` are
    left out of those entries); `LossWeightScheduler` also logs the weight
    (``hints_loss_weight``). It composes with ``loss_weights``, which
    multiply it further.

    Args:
        loss: the loss to weight: a `keras.losses.Loss`, the name of a Keras
            loss (``"sparse_categorical_crossentropy"``), its config, or a
            function ``fn(y_true, y_pred)`` of per-example values.
        weight: a number, or a `keras.optimizers.schedules.LearningRateSchedule`
            (any Keras schedule, `LinearRamp`, ...) evaluated at the step.
        name: the loss's name; default ``"scheduled_" + loss.name``.
        dtype: dtype of the loss's computation (as for any Keras loss).

    Example:

    ```python
    hints = ScheduledLoss("sparse_categorical_crossentropy",
                          LinearRamp(1.0, 0.1, start_step=300, end_step=10300))
    label = ScheduledLoss("binary_crossentropy",
                          LinearRamp(0.0, 0.9, start_step=300, end_step=10300))
    model.compile(keras.optimizers.RMSprop(1e-3), loss={"hints": hints, "label": label})
    model.fit(x, {"hints": block_classes, "label": labels}, epochs=10,
              callbacks=[LossWeightScheduler()])
    ```

    Reference:
        Gulcehre, Bengio, "Knowledge Matters: Importance of Prior Information
        for Optimization", JMLR 17 (2016), arXiv:1301.4083 (joint training
        of the hints and the task with an annealed weight); keras-team/keras
        issues #2595, #6446, #10358, #13826, #20294 (the request).
    """

    def __init__(self, loss, weight, name=None, dtype=None):
        self.loss = _resolve_loss(loss)
        self.loss_identifier = loss if isinstance(loss, (str, dict)) else None
        self.weight = _weight(weight, "ScheduledLoss")
        super().__init__(name=name or f"scheduled_{self.loss.name}", dtype=dtype)

    def weight_at(self, step):
        """The weight at optimizer step ``step`` (a float32 tensor)."""
        if isinstance(self.weight, keras.optimizers.schedules.LearningRateSchedule):
            return ops.cast(self.weight(step), "float32")
        return ops.convert_to_tensor(self.weight, "float32")

    def current_weight(self):
        """The weight at the step given by `loss_weight_step` (step 0 while
        Keras traces shapes only)."""
        if not isinstance(self.weight, keras.optimizers.schedules.LearningRateSchedule):
            return self.weight_at(0)
        step = current_loss_weight_step()
        if step is None:
            if _keras_internals.in_symbolic_scope():
                step = 0  # shapes only: `fit` building the compiled loss
            else:
                raise RuntimeError(
                    f"ScheduledLoss {self.name!r}: its weight is a schedule of the training "
                    "step, and no step was given; pass "
                    "deepkit.training.LossWeightScheduler() in the callbacks of fit (and of "
                    "an evaluate outside fit), or compute the loss inside "
                    "`with deepkit.training.loss_weight_step(step):`")
        return self.weight_at(step)

    def __call__(self, y_true, y_pred, sample_weight=None):
        value = self.loss(y_true, y_pred, sample_weight)
        return ops.multiply(ops.cast(self.current_weight(), value.dtype), value)

    def call(self, y_true, y_pred):
        value = self.loss.call(y_true, y_pred)
        return ops.multiply(ops.cast(self.current_weight(), value.dtype), value)

    def get_config(self):
        if self.loss_identifier is not None:
            loss = self.loss_identifier
        elif isinstance(self.loss, _FunctionLoss):
            loss = keras.losses.serialize(self.loss.fn)
        else:
            loss = keras.losses.serialize(self.loss)
        weight = self.weight
        if isinstance(weight, keras.optimizers.schedules.LearningRateSchedule):
            weight = keras.optimizers.schedules.serialize(weight)
        return {"loss": loss, "weight": weight, "name": self.name, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("reduction", None)
        return cls(config.pop("loss"), **config)


@export
class LinearRamp(keras.optimizers.schedules.LearningRateSchedule):
    """A value held, then changed linearly, then held: a schedule of the step.

    ``initial_value`` up to ``start_step``, then a straight line to
    ``final_value`` at ``end_step``, and ``final_value`` after. The joint
    training of Gulcehre & Bengio's JMLR code keeps the hint weight at 1 for
    300 iterations, then lowers it linearly to 0.1 over about 10,000:
    ``LinearRamp(1.0, 0.1, start_step=300, end_step=10300)``. A Keras
    schedule, so it serves as a `ScheduledLoss` weight or as a learning rate.

    Args:
        initial_value: the value up to ``start_step``.
        final_value: the value from ``end_step`` on.
        start_step: the step where the change begins.
        end_step: the step where it ends (> ``start_step``).

    Example:

    ```python
    weight = LinearRamp(1.0, 0.1, start_step=300, end_step=10300)
    float(weight(5300))  # 0.55
    ```

    Reference:
        Gulcehre, Bengio, "Knowledge Matters: Importance of Prior Information
        for Optimization", JMLR 17 (2016), arXiv:1301.4083; the authors'
        code, ``caglar/kmatters``.
    """

    def __init__(self, initial_value, final_value, start_step, end_step):
        self.initial_value = float(initial_value)
        self.final_value = float(final_value)
        self.start_step = int(start_step)
        self.end_step = int(end_step)
        if self.start_step < 0 or self.end_step <= self.start_step:
            raise ValueError(f"LinearRamp: need 0 <= start_step < end_step, got "
                             f"start_step={start_step}, end_step={end_step}")

    def __call__(self, step):
        step = ops.cast(step, "float32")
        fraction = ops.clip((step - self.start_step) / (self.end_step - self.start_step), 0.0, 1.0)
        return self.initial_value + fraction * (self.final_value - self.initial_value)

    def get_config(self):
        return {"initial_value": self.initial_value, "final_value": self.final_value,
                "start_step": self.start_step, "end_step": self.end_step}


def scheduled_losses(model):
    """``[(log name, ScheduledLoss)]`` among the model's compiled losses."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, ScheduledLoss):
        return [("loss_weight", loss)]
    if isinstance(loss, dict):
        return [(f"{key}_loss_weight", value) for key, value in loss.items()
                if isinstance(value, ScheduledLoss)]
    if isinstance(loss, (list, tuple)):
        names = list(getattr(model, "output_names", None) or [])
        if len(names) != len(loss):
            names = [str(i) for i in range(len(loss))]
        return [(f"{name}_loss_weight", value) for name, value in zip(names, loss)
                if isinstance(value, ScheduledLoss)]
    return []


def _iterations_index(optimizer):
    ids = [id(v) for v in optimizer.variables]
    return ids.index(id(optimizer.iterations))


def _jax_train_step(model, inner, state, data):
    # The step count as the jitted step receives it: exact at every step.
    optimizer_variables = state[2]
    with loss_weight_step(optimizer_variables[_iterations_index(model.optimizer)]):
        return inner(state, data)


def _jax_test_step(model, inner, state, data):
    # Evaluation state holds no optimizer variables: the current step is a
    # constant of this trace (the scheduler rebuilds the function after
    # each evaluation inside fit).
    step = int(ops.convert_to_numpy(model.optimizer.iterations))
    with loss_weight_step(step):
        return inner(state, data)


def _stateful_step(model, inner, data):
    # TensorFlow, torch: the variable itself, read before the update.
    with loss_weight_step(model.optimizer.iterations):
        return inner(data)


@export
class LossWeightScheduler(keras.callbacks.Callback):
    """Give `ScheduledLoss` weights the optimizer's step during `fit` and `evaluate`.

    Passed to `fit`, it wraps the model's training and evaluation steps (its
    own, or one another callback installed before it) so that every
    `ScheduledLoss` computed inside takes its weight at the optimizer's step
    count; on JAX from the optimizer state that the jitted step receives,
    on TensorFlow from ``optimizer.iterations`` read before the update (see
    the module docstring for why a loss cannot read it itself). The weight
    at step ``t`` is the schedule at ``t``; the step is saved with the
    optimizer, so a model loaded from a `.keras` file or a checkpoint
    continues its schedules. Validation uses the weights at the current
    step (on JAX the evaluation function is rebuilt for each validation).
    After the `fit` the model's steps are as before. At the end of each
    epoch the logs get each scheduled output's weight at the current step
    (``hints_loss_weight``, or ``loss_weight`` for a single loss).

    Pass it to an `evaluate` outside `fit` as well; put it after any
    callback that replaces the training step (such as
    `VanishingGradientRegularizer`), so that it wraps that one.

    Example:

    ```python
    model.compile(optimizer, loss={
        "hints": ScheduledLoss("sparse_categorical_crossentropy",
                               LinearRamp(1.0, 0.1, start_step=300, end_step=10300)),
        "label": "binary_crossentropy"})
    model.fit(x, y, epochs=5, callbacks=[LossWeightScheduler()])
    model.evaluate(x_test, y_test, callbacks=[LossWeightScheduler()])
    ```

    Reference:
        Gulcehre, Bengio, "Knowledge Matters: Importance of Prior Information
        for Optimization", JMLR 17 (2016), arXiv:1301.4083 (the annealed
        hint weight of joint training).
    """

    def __init__(self):
        super().__init__()
        self._installed = {}
        self._training = False

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def set_model(self, model):
        super().set_model(model)
        for name in ("train_step", "test_step"):
            current = _keras_internals.installed_step(model, name)
            if current is not None and current is self._installed.get(name):
                continue  # already wrapped by this callback
            self._install(name, getattr(model, name))

    def _install(self, name, inner):
        jax = keras.backend.backend() == "jax"
        if name == "train_step":
            make = _jax_train_step if jax else _stateful_step
            install = _keras_internals.install_train_step
        else:
            make = _jax_test_step if jax else _stateful_step
            install = _keras_internals.install_test_step
        # A new function object each time: JAX keeps traces by function, so
        # only a new one is traced again.
        step = functools.partial(make, self.model, inner)
        install(self.model, step)
        self._installed[name] = step

    def _restore(self):
        model = self.model
        for name, restore in (("train_step", _keras_internals.restore_train_step),
                              ("test_step", _keras_internals.restore_test_step)):
            step = self._installed.pop(name, None)
            if step is None or _keras_internals.installed_step(model, name) is not step:
                continue  # replaced since, or removed by whoever installed the inner step
            inner = step.args[1]
            if getattr(inner, "__self__", None) is model:
                restore(model)  # the class's own step
            elif name == "train_step":
                _keras_internals.install_train_step(model, inner)
            else:
                _keras_internals.install_test_step(model, inner)

    def on_train_begin(self, logs=None):
        self._training = True

    def on_test_end(self, logs=None):
        if not self._training:
            self._restore()  # a standalone evaluate
        elif keras.backend.backend() == "jax":
            # The next validation traces its step again, at the step then.
            step = self._installed.get("test_step")
            if step is not None and _keras_internals.installed_step(
                    self.model, "test_step") is step:
                self._install("test_step", step.args[1])

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        step = self.model.optimizer.iterations
        for name, loss in scheduled_losses(self.model):
            logs[name] = float(ops.convert_to_numpy(loss.weight_at(step)))

    def on_train_end(self, logs=None):
        self._training = False
        self._restore()

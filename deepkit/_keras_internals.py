"""Every use of Keras API that is private or undocumented, in one module.

deepkit is written against the public Keras API, with the exceptions below,
each behind one small function here. Each function checks that the Keras
attribute it relies on is there and, when a Keras release has changed it,
raises a `RuntimeError` that names the attribute, the Keras version found and
the range deepkit is tested with (``keras>=3.15,<3.16``, as in setup.cfg), so
that a Keras upgrade fails loudly at the use instead of training silently
wrong. Other deepkit modules call these functions instead of touching a
Keras attribute whose name starts with an underscore; the one exception
left is the optimizers of `deepkit.training`, whose `update_step` calls
``self._get_variable_index`` (inherited from Keras' optimizer, as in every
Keras optimizer) until they move to `variable_index`.

Private attributes used, and why no public API serves:

- ``keras.Model._initial_epoch`` (`initial_epoch`, `set_initial_epoch`):
  the epoch at which `fit` starts, read by `fit` as ``self._initial_epoch or
  initial_epoch``. A callback restoring a checkpoint in `on_train_begin`
  (`ExactBackupAndRestore`, as Keras' own `BackupAndRestore`) has no other way
  to make the running `fit` skip the finished epochs: `fit`'s `initial_epoch`
  argument is fixed by the caller before any callback runs.
- ``keras.Layer._flatten_layers`` (`flatten_layers`): every sublayer of a
  layer or model, recursively. The public `Model.layers` lists a model's
  direct sublayers only (and, for a `Sequential`, not its `InputLayer`); a
  plain `keras.Layer` has no public list of its sublayers at all, so a layer
  nested in a custom layer (a `GatedExperts` or `StochasticBinaryGate` inside
  a block) cannot be found through public API.
- ``keras.optimizers.Optimizer._get_variable_index`` (`variable_index`): the
  index of a trainable variable in the optimizer's slot lists (`momentums`,
  `velocities`, ...), which an optimizer's `update_step` needs; Keras' own
  optimizers use it and it has no public counterpart.
- ``keras.optimizers.Optimizer._variables``, ``._trainable_variables`` and
  ``._iterations`` (`own_optimizer_variables`, `optimizer_trainable_variables`,
  `count_optimizer_step`): what an optimizer that wraps another one needs, as
  Keras' own `LossScaleOptimizer` uses them: its own variables without the
  wrapped optimizer's (the public `variables` of a wrapper holds both), the
  variables it was built with (`apply(grads)` without variables), and its own
  step counter (public `iterations` is the wrapped optimizer's).

- ``keras.Model._loss_tracker`` and, on JAX, ``Model._update_metrics_variables``
  (`track_loss`, `jax_update_metrics`): a `train_step` written for
  `VanishingGradientRegularizer` must update the running mean Keras reports
  as ``loss``, as Keras' own `train_step` does; Keras' guides to custom
  train steps use ``compile_metrics`` and this tracker's counterpart, and the
  JAX trainer updates the metric variables statelessly through the private
  method.
- ``keras.Model.train_step`` replaced on one model and
  ``keras.Model.train_function`` reset (`install_train_step`,
  `restore_train_step`): `fit` builds its training function from
  ``self.train_step`` in `make_train_function`, which it calls after the
  `CallbackList` has given each callback the model (`set_model`), and which
  keeps a function already built in ``self.train_function``. A callback that
  changes how gradients are made (`VanishingGradientRegularizer`) installs
  its step in `set_model` and resets the cached function, so that the `fit`
  it is passed to, and only that one, trains with it.

- ``keras.Model.test_step`` replaced on one model and
  ``keras.Model.test_function`` reset (`install_test_step`,
  `restore_test_step`), as `install_train_step` does for training: the
  `LossWeightScheduler` (of `ScheduledLoss` weights) wraps the evaluation
  step too, so that validation losses are weighted at the current step. `installed_step` reads which step is
  installed on the model itself (``model.__dict__``), so that the scheduler
  wraps, and afterwards puts back, a step another callback installed.
- ``keras.src.backend.common.symbolic_scope.in_symbolic_scope``
  (`in_symbolic_scope`): `fit` builds its compiled loss by tracing shapes
  only (``backend.compute_output_spec`` in a ``keras.SymbolicScope``), outside
  any training step; a `ScheduledLoss` then has no step to read and uses
  step 0, while anywhere else a missing step is an error. Public Keras
  exports the scope class, not the test of whether one is active.

Undocumented (not underscored) Keras API used:

- ``keras.layers.RNN.inner_loop(sequences, initial_state, mask, training)``
  and ``keras.layers.RNN.states`` (`check_rnn_inner_loop`,
  `rnn_state_variables`): `DeepTransitionRNN` overrides `inner_loop` to
  project the inputs of all time steps in one product and draw the weight
  noise once per sequence before Keras' loop runs, and, once
  `keras.layers.RNN.build` has created the carried state of a stateful layer
  (in `states`, untracked), assigns those variables back to `states` so that
  Keras' attribute tracking makes them non-trainable weights (carried by the
  stateless training of JAX). `VanishingGradientRegularizer` runs
  ``keras.layers.RNN.inner_loop`` with a stand-in for ``RNN.cell`` that adds a
  zero probe to each new state, and with ``RNN.return_sequences`` set for the
  call (`run_rnn_inner_loop`), to get ∂E/∂h_t at every step.

Helpers here that use public API only:

- `seed_state_variables`: the state variables of the model's
  `keras.random.SeedGenerator`s. Keras keeps a layer's generators in the
  private ``Layer._seed_generators``; the public route is the documented
  difference between ``Layer.variables`` ("all layer state, including random
  seeds") and ``Layer.weights`` (which "excludes metric state and random
  seeds"; metric state is in neither). It replaces matching
  ``"seed_generator_state"`` in the variables' paths, a naming detail of
  `SeedGenerator`, and selects the same variables in the same order.

Not Keras API at all: `torch_watch`, `torch_gradients` and `torch_no_grad`,
torch autograd for the torch backend's training steps (the counterparts of a
TensorFlow `GradientTape` and of `jax.grad` in `VanishingGradientRegularizer`),
and `torch_manual_seed` (torch's global generator, which Keras' torch dropout
uses for a layer without a seed, for `ExactBackupAndRestore`), kept here so
that no other deepkit module imports torch.

Replaced by public API (no private use left there):
``optimizer._learning_rate`` (`AnnealOnPlateau` reads `optimizer.learning_rate`,
which is the optimizer's variable itself for a plain rate and a computed
tensor for a schedule), and ``BackupAndRestore._training_metadata_path`` /
``_current_epoch`` and the private hooks ``_save_model`` / ``_load_model``
(`ExactBackupAndRestore` keeps its own path and epoch and writes its checkpoint
from `on_epoch_end`).
"""

import functools
import inspect

import keras

TESTED_KERAS = "keras>=3.15,<3.16"


def _changed(attribute, detail="it is missing"):
    return RuntimeError(
        f"deepkit relies on the Keras attribute `{attribute}`, but in the installed "
        f"Keras {keras.__version__} {detail}; deepkit is tested with {TESTED_KERAS}. "
        "Install a Keras in that range, or adapt deepkit/_keras_internals.py."
    )


def _require(obj, name, attribute):
    if not hasattr(obj, name):
        raise _changed(attribute)


# -- keras.Model._initial_epoch -------------------------------------------------
def initial_epoch(model):
    """The epoch `fit` starts from when it is set (``model._initial_epoch``).

    Args:
        model: a `keras.Model`.

    Returns:
        The epoch a callback set with `set_initial_epoch` (or Keras'
        `BackupAndRestore` restored), or None when none is set.

    Raises:
        RuntimeError: when Keras has no ``keras.Model._initial_epoch``.
    """
    _require(model, "_initial_epoch", "keras.Model._initial_epoch")
    return model._initial_epoch


def set_initial_epoch(model, epoch):
    """Make the `fit` about to run start at ``epoch`` (``model._initial_epoch``).

    Keras' `fit` starts from ``model._initial_epoch or initial_epoch``, read
    after the callbacks' `on_train_begin`; Keras' `BackupAndRestore` sets it
    the same way.

    Args:
        model: a `keras.Model`.
        epoch: the first epoch to run (an int), or None to unset it.

    Raises:
        RuntimeError: when Keras has no ``keras.Model._initial_epoch`` (an
            attribute set on it then would be ignored by `fit`).
    """
    _require(model, "_initial_epoch", "keras.Model._initial_epoch")
    model._initial_epoch = None if epoch is None else int(epoch)


# -- keras.Layer._flatten_layers ------------------------------------------------
def flatten_layers(layer, recursive=True):
    """Every sublayer of ``layer``, recursively, ``layer`` itself excluded.

    Depth first, each layer once, in the order Keras tracks them
    (``layer._flatten_layers(include_self=False, recursive=True)``).

    Args:
        layer: a `keras.Layer` or `keras.Model`.
        recursive: False for the direct sublayers only.

    Returns:
        A list of layers.

    Raises:
        RuntimeError: when Keras has no ``keras.Layer._flatten_layers``.
    """
    _require(layer, "_flatten_layers", "keras.Layer._flatten_layers")
    return list(layer._flatten_layers(include_self=False, recursive=recursive))


# -- keras.optimizers.Optimizer._get_variable_index -----------------------------
def variable_index(optimizer, variable):
    """The index of trainable ``variable`` in ``optimizer``'s slot lists.

    What an optimizer's `update_step` uses to find a variable's slots
    (``self.momentums[index]``), as Keras' own optimizers do with
    ``self._get_variable_index(variable)``.

    Args:
        optimizer: a built `keras.optimizers.Optimizer`.
        variable: one of the trainable variables it was built with.

    Returns:
        An int.

    Raises:
        RuntimeError: when Keras has no
            ``keras.optimizers.Optimizer._get_variable_index``.
    """
    _require(optimizer, "_get_variable_index",
             "keras.optimizers.Optimizer._get_variable_index")
    return optimizer._get_variable_index(variable)


# -- SeedGenerator states (public API) ------------------------------------------
def seed_state_variables(model):
    """The state variables of every `keras.random.SeedGenerator` of ``model``.

    In the order of ``model.variables``. Public API only: the variables of
    ``model.variables`` (all state, random seeds included) that are not in
    ``model.weights`` (which excludes random seeds).

    Args:
        model: a `keras.Layer` or `keras.Model`.

    Returns:
        A list of variables, each of shape ``(2,)``.
    """
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


# -- keras.layers.RNN.inner_loop and keras.layers.RNN.states --------------------
@functools.cache
def check_rnn_inner_loop():
    """Check that `keras.layers.RNN` still has the `inner_loop` deepkit overrides.

    `DeepTransitionRNN` overrides the undocumented
    ``keras.layers.RNN.inner_loop(sequences, initial_state, mask, training)``,
    which `RNN.call` calls to run the cell over time; a Keras without it would
    skip the override.

    Raises:
        RuntimeError: when the method is missing or its arguments changed.
    """
    attribute = "keras.layers.RNN.inner_loop"
    method = getattr(keras.layers.RNN, "inner_loop", None)
    if method is None:
        raise _changed(attribute)
    names = list(inspect.signature(method).parameters)
    expected = ["self", "sequences", "initial_state", "mask", "training"]
    if names != expected:
        raise _changed(attribute, f"its arguments are {names}, not {expected}")


def rnn_state_variables(layer):
    """The carried-state variables of a built stateful `keras.layers.RNN`.

    `keras.layers.RNN.build` creates them, untracked, in ``layer.states``.

    Args:
        layer: a stateful `keras.layers.RNN`, after `RNN.build`.

    Returns:
        The list of state variables.

    Raises:
        RuntimeError: when ``layer.states`` is missing or is not a list of
            `keras.Variable`.
    """
    attribute = "keras.layers.RNN.states"
    _require(layer, "states", attribute)
    states = layer.states
    if not isinstance(states, (list, tuple)) or not all(
        isinstance(v, keras.Variable) for v in states
    ):
        raise _changed(attribute, f"it holds {states!r}, not a list of variables")
    return list(states)


# -- keras.optimizers.Optimizer._variables / _trainable_variables / _iterations --
def own_optimizer_variables(optimizer):
    """The variables an optimizer created itself (``optimizer._variables``).

    Raises:
        RuntimeError: when Keras has no ``keras.optimizers.Optimizer._variables``.
    """
    _require(optimizer, "_variables", "keras.optimizers.Optimizer._variables")
    return optimizer._variables


def optimizer_trainable_variables(optimizer):
    """The model variables a built optimizer was built with
    (``optimizer._trainable_variables``).

    Raises:
        RuntimeError: when Keras has no
            ``keras.optimizers.Optimizer._trainable_variables``.
    """
    _require(optimizer, "_trainable_variables",
             "keras.optimizers.Optimizer._trainable_variables")
    return optimizer._trainable_variables


def count_optimizer_step(optimizer):
    """Add one to an optimizer's own step counter (``optimizer._iterations``).

    Raises:
        RuntimeError: when Keras has no ``keras.optimizers.Optimizer._iterations``.
    """
    _require(optimizer, "_iterations", "keras.optimizers.Optimizer._iterations")
    optimizer._iterations.assign_add(1)


def run_rnn_inner_loop(layer, cell, sequences, initial_state, mask, training=False):
    """Keras' own `keras.layers.RNN.inner_loop` of ``layer``, run with ``cell``
    in place of ``layer.cell`` and every step's output returned.

    The stand-in ``cell`` is a callable ``cell(inputs, states) -> (output,
    new_states)`` (not a Layer, so `inner_loop` passes it no `training`).
    ``layer.cell`` and ``layer.return_sequences`` are set without Keras'
    attribute tracking for the call and restored after it.

    Returns:
        ``(last_output, outputs, new_states)`` as `inner_loop` returns them,
        with ``outputs`` holding every step.

    Raises:
        RuntimeError: when `keras.layers.RNN.inner_loop` changed (see
            `check_rnn_inner_loop`) or ``layer`` has no ``cell``.
    """
    check_rnn_inner_loop()
    _require(layer, "cell", "keras.layers.RNN.cell")
    # On torch a layer is a `torch.nn.Module`, which keeps ``cell`` among its
    # submodules, not in ``__dict__``: the stand-in then only shadows it there.
    own = "cell" in layer.__dict__
    saved = layer.__dict__.get("cell"), layer.return_sequences
    object.__setattr__(layer, "cell", cell)
    object.__setattr__(layer, "return_sequences", True)
    try:
        return keras.layers.RNN.inner_loop(layer, sequences, initial_state, mask,
                                           training=training)
    finally:
        if own:
            object.__setattr__(layer, "cell", saved[0])
        else:
            object.__delattr__(layer, "cell")
        object.__setattr__(layer, "return_sequences", saved[1])


# -- keras.Model._loss_tracker / _update_metrics_variables ----------------------
def track_loss(model, loss, x):
    """Update the running mean Keras reports as ``loss`` (``model._loss_tracker``),
    weighted by the batch size, as Keras' TensorFlow and torch `train_step` do.

    Raises:
        RuntimeError: when Keras has no ``keras.Model._loss_tracker``.
    """
    _require(model, "_loss_tracker", "keras.Model._loss_tracker")
    first = next(i for i in keras.tree.flatten(x) if i is not None)
    model._loss_tracker.update_state(loss, sample_weight=keras.ops.shape(first)[0])


def jax_update_metrics(model, metrics_variables, unscaled_loss, x, y, y_pred, sample_weight):
    """JAX: ``(logs, new_metrics_variables)`` after one training batch, as
    Keras' JAX `train_step` computes them (``model._update_metrics_variables``).

    Raises:
        RuntimeError: when the JAX trainer has no ``_update_metrics_variables``.
    """
    _require(model, "_update_metrics_variables",
             "keras.Model._update_metrics_variables (JAX trainer)")
    return model._update_metrics_variables(metrics_variables, unscaled_loss, x, y, y_pred,
                                           sample_weight)


# -- torch autograd, for the torch backend's training steps ---------------------
# Not Keras API: the torch counterparts of a TensorFlow `GradientTape` or a
# `jax.grad`, kept here so that no other deepkit module imports torch. Keras'
# own torch `train_step` differentiates with torch autograd too
# (``loss.backward()``, then the optimizer under ``torch.no_grad()``).
def torch_watch(tensor):
    """``tensor`` (a torch leaf tensor) marked for differentiation, in place."""
    return tensor.requires_grad_(True)


def torch_gradients(target, sources):
    """The gradients of the scalar ``target`` with respect to the torch
    tensors ``sources`` (a variable's ``.value``), None for a source it does
    not depend on; no graph is kept through them (they are constants)."""
    import torch

    return list(torch.autograd.grad(target, list(sources), allow_unused=True))


def torch_manual_seed(seed):
    """Seed torch's global generator (``torch.manual_seed``). Keras' torch
    dropout draws from it, not from the layer's `SeedGenerator`, when the
    layer was given no seed."""
    import torch

    torch.manual_seed(int(seed))


def torch_no_grad():
    """``torch.no_grad()``: the context the torch optimizers' updates run in."""
    import torch

    return torch.no_grad()


# -- keras.Model.train_step / train_function ------------------------------------
def _install_step(model, kind, step):
    _require(model, f"{kind}_function", f"keras.Model.{kind}_function")
    object.__setattr__(model, f"{kind}_step", step)
    setattr(model, f"{kind}_function", None)


def _restore_step(model, kind):
    if f"{kind}_step" in model.__dict__:
        object.__delattr__(model, f"{kind}_step")
    setattr(model, f"{kind}_function", None)


def install_train_step(model, step):
    """Make the next `fit` of ``model`` train with ``step`` instead of its
    ``train_step`` (called from a callback's `set_model`, before `fit` builds
    its training function).

    Raises:
        RuntimeError: when Keras has no ``keras.Model.train_function``.
    """
    _install_step(model, "train", step)


def restore_train_step(model):
    """Undo `install_train_step`: the model's own ``train_step`` again, and
    the training function rebuilt at the next `fit`."""
    _restore_step(model, "train")


# -- keras.Model.test_step / test_function, and installed steps -----------------
# Used by `deepkit.training.LossWeightScheduler`, which wraps the model's own
# training and evaluation steps so that `ScheduledLoss` gets the optimizer's
# step: `fit` and `evaluate` build their functions from ``self.train_step`` /
# ``self.test_step`` in `make_train_function` / `make_test_function` and keep
# a function already built in ``self.train_function`` / ``self.test_function``
# (undocumented, not underscored). A step is installed as an instance
# attribute; `installed_step` tells one installed that way from the class's.
def install_test_step(model, step):
    """Make the next `evaluate` (or the validation of a `fit`) of ``model``
    run ``step`` instead of its ``test_step``.

    Raises:
        RuntimeError: when Keras has no ``keras.Model.test_function``.
    """
    _install_step(model, "test", step)


def restore_test_step(model):
    """Undo `install_test_step`: the model's own ``test_step`` again, and the
    evaluation function rebuilt at the next `evaluate`."""
    _restore_step(model, "test")


def installed_step(model, name):
    """The ``train_step`` or ``test_step`` (``name``) installed on ``model``
    itself by `install_train_step` / `install_test_step`, or None when the
    model runs its class's own."""
    if name not in ("train_step", "test_step"):
        raise ValueError(f"installed_step: name must be 'train_step' or 'test_step', got {name!r}")
    return model.__dict__.get(name)


# -- keras.src.backend.common.symbolic_scope.in_symbolic_scope ------------------
def in_symbolic_scope():
    """Whether Keras is tracing shapes only (``backend.compute_output_spec``,
    as `fit` does to build a compiled loss before training), not computing.

    Public Keras has the scope (``keras.SymbolicScope``) but not the test of
    whether one is active; this reads
    ``keras.src.backend.common.symbolic_scope.in_symbolic_scope``.

    Raises:
        RuntimeError: when that function is gone.
    """
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope as active
    except ImportError:
        raise _changed("keras.src.backend.common.symbolic_scope.in_symbolic_scope") from None
    return bool(active())


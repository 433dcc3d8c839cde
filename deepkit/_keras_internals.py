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

Undocumented (not underscored) Keras API used:

- ``keras.layers.RNN.inner_loop(sequences, initial_state, mask, training)``
  and ``keras.layers.RNN.states`` (`check_rnn_inner_loop`,
  `rnn_state_variables`): `DeepTransitionRNN` overrides `inner_loop` to
  project the inputs of all time steps in one product and draw the weight
  noise once per sequence before Keras' loop runs, and, once
  `keras.layers.RNN.build` has created the carried state of a stateful layer
  (in `states`, untracked), assigns those variables back to `states` so that
  Keras' attribute tracking makes them non-trainable weights (carried by the
  stateless training of JAX).

Helpers here that use public API only:

- `seed_state_variables`: the state variables of the model's
  `keras.random.SeedGenerator`s. Keras keeps a layer's generators in the
  private ``Layer._seed_generators``; the public route is the documented
  difference between ``Layer.variables`` ("all layer state, including random
  seeds") and ``Layer.weights`` (which "excludes metric state and random
  seeds"; metric state is in neither). It replaces matching
  ``"seed_generator_state"`` in the variables' paths, a naming detail of
  `SeedGenerator`, and selects the same variables in the same order.

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
def flatten_layers(layer):
    """Every sublayer of ``layer``, recursively, ``layer`` itself excluded.

    Depth first, each layer once, in the order Keras tracks them
    (``layer._flatten_layers(include_self=False, recursive=True)``).

    Args:
        layer: a `keras.Layer` or `keras.Model`.

    Returns:
        A list of layers.

    Raises:
        RuntimeError: when Keras has no ``keras.Layer._flatten_layers``.
    """
    _require(layer, "_flatten_layers", "keras.Layer._flatten_layers")
    return list(layer._flatten_layers(include_self=False, recursive=True))


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

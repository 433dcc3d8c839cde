"""deepkit._keras_internals: each function on the installed Keras (real fits,
optimizers and layers), and the error each raises when the Keras attribute it
relies on is gone, naming the attribute, the Keras version and the tested
range."""

import inspect
import re

import keras
import numpy as np
import pytest

from deepkit import _keras_internals as ki
from deepkit.layers import DeepTransitionRNN, StochasticBinaryGate
from deepkit.models import ConditionalGatedMLP


def _assert_names(error, attribute):
    message = str(error.value)
    assert f"`{attribute}`" in message
    assert f"Keras {keras.__version__}" in message
    assert "keras>=3.15,<3.16" in message


def _dense_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


X = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
Y = np.zeros((8, 2), "float32")


def test_the_tested_range_is_the_one_setup_cfg_states():
    from pathlib import Path
    setup = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
    assert re.search(r"^\s*keras>=3\.15,<3\.16\s*$", setup, re.M)
    assert ki.TESTED_KERAS == "keras>=3.15,<3.16"


# -- keras.Model._initial_epoch -------------------------------------------------
class _Epochs(keras.callbacks.Callback):
    def __init__(self, start=None):
        super().__init__()
        self.start, self.seen, self.found = start, [], None

    def on_train_begin(self, logs=None):
        if self.start is not None:
            ki.set_initial_epoch(self.model, self.start)
        self.found = ki.initial_epoch(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def test_set_initial_epoch_makes_the_running_fit_skip_epochs():
    model = _dense_model()
    assert ki.initial_epoch(model) is None
    callback = _Epochs(start=3)
    history = model.fit(X, Y, epochs=5, verbose=0, callbacks=[callback])
    assert callback.seen == [3, 4] and len(history.history["loss"]) == 2
    assert ki.initial_epoch(model) == 3
    ki.set_initial_epoch(model, None)
    callback = _Epochs()
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[callback])
    assert callback.seen == [0, 1]


def test_initial_epoch_reads_what_keras_backup_and_restore_sets(tmp_path):
    model = _dense_model()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), delete_checkpoint=False)
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[backup])
    # A second fit: Keras' callback restores epoch 2 in its on_train_begin.
    callback = _Epochs()
    model.fit(X, Y, epochs=4, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path)), callback])
    assert callback.found == 2 and callback.seen == [2, 3]


def test_initial_epoch_errors_name_the_attribute(monkeypatch):
    model = _dense_model()
    monkeypatch.delattr(model, "_initial_epoch")
    with pytest.raises(RuntimeError) as error:
        ki.initial_epoch(model)
    _assert_names(error, "keras.Model._initial_epoch")
    with pytest.raises(RuntimeError) as error:
        ki.set_initial_epoch(model, 2)
    _assert_names(error, "keras.Model._initial_epoch")
    assert not hasattr(model, "_initial_epoch")  # not created where fit would not read it


# -- keras.Layer._flatten_layers ------------------------------------------------
class _Block(keras.layers.Layer):
    """A plain layer holding sublayers, which no public API lists."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gate = StochasticBinaryGate("reinforce", name="gate")
        self.dense = keras.layers.Dense(4, name="inner_dense")

    def call(self, x, training=None):
        return self.gate(self.dense(x), training=training)


def test_flatten_layers_finds_layers_nested_in_plain_layers_and_models():
    inner_in = keras.Input((4,), name="inner_in")
    inner = keras.Model(inner_in, _Block(name="block")(inner_in), name="inner")
    model = keras.Sequential([keras.Input((3,), name="outer_in"),
                              keras.layers.Dense(4, name="first"), inner])
    # Each layer once, the model itself left out, in Keras' order (a
    # layer's sublayers come right after it).
    assert [layer.name for layer in ki.flatten_layers(model)] == [
        "outer_in", "first", "inner", "block", "inner_dense", "gate", "inner_in"]
    # the public list stops at the first level
    assert [layer.name for layer in model.layers] == ["first", "inner"]


def test_flatten_layers_error_names_the_attribute(monkeypatch):
    model = _dense_model()
    monkeypatch.delattr(keras.Layer, "_flatten_layers")
    with pytest.raises(RuntimeError) as error:
        ki.flatten_layers(model)
    _assert_names(error, "keras.Layer._flatten_layers")


# -- keras.optimizers.Optimizer._get_variable_index -----------------------------
def test_variable_index_finds_each_variables_slots():
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in [(3,), (2, 5), (4,)]]
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(variables)
    indices = [ki.variable_index(optimizer, v) for v in variables]
    assert sorted(indices) == [0, 1, 2]
    for variable, index in zip(variables, indices):
        assert tuple(optimizer.momentums[index].shape) == tuple(variable.shape)


def test_variable_index_error_names_the_attribute(monkeypatch):
    optimizer = keras.optimizers.SGD(0.1)
    owner = next(c for c in type(optimizer).__mro__ if "_get_variable_index" in vars(c))
    monkeypatch.delattr(owner, "_get_variable_index")
    with pytest.raises(RuntimeError) as error:
        ki.variable_index(optimizer, keras.Variable(np.zeros(2, "float32")))
    _assert_names(error, "keras.optimizers.Optimizer._get_variable_index")


# -- SeedGenerator states --------------------------------------------------------
def _by_path(model):
    return [v for v in model.variables if "seed_generator_state" in v.path]


def test_seed_state_variables_are_the_seed_generators_states_in_order():
    dropout = keras.layers.Dropout(0.3)
    noise = keras.layers.GaussianNoise(0.1)
    rnn = DeepTransitionRNN(4, transition_layers=[3], weight_noise=0.1, seed=1,
                            return_sequences=True, stateful=True)
    inputs = keras.Input((5, 2), batch_size=4)
    hidden = keras.layers.BatchNormalization()(noise(dropout(inputs)))
    gate = StochasticBinaryGate("straight_through", seed=2)
    model = keras.Model(inputs, gate(rnn(hidden)))
    model.compile(keras.optimizers.SGD(0.1), "mse", metrics=["mae"])
    model.fit(np.ones((8, 5, 2), "float32"), np.zeros((8, 5, 4), "float32"), batch_size=4,
              verbose=0)
    found = ki.seed_state_variables(model)
    expected = [dropout.seed_generator.state, noise.seed_generator.state,
                rnn.cell.seed_generator.state, gate.seed_generator.state]
    assert [id(v) for v in found] == [id(v) for v in expected]
    assert [id(v) for v in found] == [id(v) for v in _by_path(model)]
    # not the other non-trainable state: moving statistics, the carried RNN state
    assert not {id(v) for v in found} & {id(v) for v in model.non_trainable_weights}
    assert len(model.non_trainable_weights) == 3


def test_seed_state_variables_of_a_model_subclass_and_of_a_model_without_any():
    model = ConditionalGatedMLP(units=6, gater_units=4, num_classes=3, input_dropout=0.2,
                                seed=1)
    model.build((2, 5))
    found = ki.seed_state_variables(model)
    assert len(found) == 2 and [id(v) for v in found] == [id(v) for v in _by_path(model)]
    assert ki.seed_state_variables(_dense_model()) == []


# -- keras.layers.RNN.inner_loop and keras.layers.RNN.states --------------------
def test_check_rnn_inner_loop_and_the_override_runs(monkeypatch):
    ki.check_rnn_inner_loop.cache_clear()
    ki.check_rnn_inner_loop()
    calls = []
    original = DeepTransitionRNN.inner_loop

    def spy(self, sequences, initial_state, mask, training=False):
        calls.append(training)
        return original(self, sequences, initial_state, mask, training=training)

    monkeypatch.setattr(DeepTransitionRNN, "inner_loop", spy)
    layer = DeepTransitionRNN(3, weight_noise=0.1, seed=0)
    layer(np.ones((2, 4, 5), "float32"), training=True)  # noise needs the override
    assert calls == [True]


def test_check_rnn_inner_loop_errors_name_the_method(monkeypatch):
    def other(self, sequences, initial_state, mask, training=False, extra=None):
        return None

    ki.check_rnn_inner_loop.cache_clear()
    monkeypatch.setattr(keras.layers.RNN, "inner_loop", other)
    with pytest.raises(RuntimeError) as error:
        DeepTransitionRNN(3)
    _assert_names(error, "keras.layers.RNN.inner_loop")
    assert "'extra'" in str(error.value)
    ki.check_rnn_inner_loop.cache_clear()
    monkeypatch.delattr(keras.layers.RNN, "inner_loop")
    with pytest.raises(RuntimeError) as error:
        ki.check_rnn_inner_loop()
    _assert_names(error, "keras.layers.RNN.inner_loop")
    monkeypatch.undo()
    ki.check_rnn_inner_loop.cache_clear()
    ki.check_rnn_inner_loop()


def test_rnn_state_variables_are_tracked_and_carried_by_fit():
    inputs = keras.Input((4, 5), batch_size=2)
    layer = DeepTransitionRNN(3, transition_layers=[2], return_sequences=True, stateful=True)
    model = keras.Model(inputs, layer(inputs))
    states = ki.rnn_state_variables(layer)
    assert len(states) == 1 and tuple(states[0].shape) == (2, 3)
    assert [id(v) for v in layer.non_trainable_weights] == [id(states[0])]
    layer.build((2, 4, 5))  # a second build tracks nothing twice
    assert len(layer.non_trainable_weights) == 1
    model.compile(keras.optimizers.SGD(0.0), "mse")
    model.fit(np.ones((4, 4, 5), "float32"), np.zeros((4, 4, 3), "float32"), batch_size=2,
              shuffle=False, verbose=0)
    # the state after the last batch is the one fit left (on JAX too)
    assert np.abs(np.asarray(layer.states[0])).max() > 0


def test_rnn_state_variables_errors_name_the_attribute():
    class Bare:
        pass

    with pytest.raises(RuntimeError) as error:
        ki.rnn_state_variables(Bare())
    _assert_names(error, "keras.layers.RNN.states")
    unbuilt = keras.layers.SimpleRNN(2, stateful=True)  # states not created yet
    with pytest.raises(RuntimeError) as error:
        ki.rnn_state_variables(unbuilt)
    _assert_names(error, "keras.layers.RNN.states")
    assert "holds None" in str(error.value)


def test_the_module_docstring_lists_every_function():
    doc = ki.__doc__
    functions = [name for name, obj in vars(ki).items()
                 if inspect.isfunction(obj) and not name.startswith("_")]
    functions += ["check_rnn_inner_loop"]
    for name in set(functions):
        assert f"`{name}`" in doc, name


# -- an optimizer wrapping another: _variables, _trainable_variables, _iterations --
def test_a_wrapping_optimizers_private_needs():
    variables = [keras.Variable(np.zeros((2, 3), "float32"))]
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(variables)
    own = ki.own_optimizer_variables(optimizer)
    assert [v.path for v in own] == [v.path for v in optimizer.variables]
    assert ki.optimizer_trainable_variables(optimizer) == variables
    before = int(keras.ops.convert_to_numpy(optimizer.iterations))
    ki.count_optimizer_step(optimizer)
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == before + 1


@pytest.mark.parametrize("attribute, function", [
    ("_variables", "own_optimizer_variables"),
    ("_trainable_variables", "optimizer_trainable_variables"),
    ("_iterations", "count_optimizer_step"),
])
def test_a_wrapping_optimizers_errors_name_the_attribute(attribute, function):
    class Bare:
        pass

    with pytest.raises(RuntimeError) as error:
        getattr(ki, function)(Bare())
    _assert_names(error, f"keras.optimizers.Optimizer.{attribute}")


def test_run_rnn_inner_loop_uses_the_stand_in_cell_and_restores_the_layer():
    layer = keras.layers.SimpleRNN(3, return_sequences=False)
    x = np.random.default_rng(0).normal(size=(2, 4, 5)).astype("float32")
    layer(x)
    cell = layer.cell
    calls = []

    def stand_in(inputs, states):
        calls.append(inputs.shape)
        out, new = cell(inputs, states)
        return out + 1.0, [out + 1.0]

    init = [keras.ops.zeros((2, 3))]
    last, outputs, _ = ki.run_rnn_inner_loop(layer, stand_in, keras.ops.convert_to_tensor(x),
                                             init, None)
    assert tuple(outputs.shape) == (2, 4, 3)          # every step, not only the last
    last, outputs = keras.ops.convert_to_numpy(last), keras.ops.convert_to_numpy(outputs)
    np.testing.assert_allclose(last, outputs[:, -1])
    h = np.zeros((2, 3), "float32")
    K, R, b = (np.asarray(v) for v in (cell.kernel, cell.recurrent_kernel, cell.bias))
    for t in range(4):
        h = np.tanh(x[:, t] @ K + b + h @ R) + 1.0
    np.testing.assert_allclose(np.asarray(last), h, rtol=1e-5, atol=1e-5)
    assert layer.cell is cell and layer.return_sequences is False and calls


def test_install_train_step_is_used_by_the_next_fit_and_restored():
    model = _dense_model()
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    model.fit(x, y, verbose=0)
    seen = []

    def step(data):
        seen.append(1)
        return {"seven": keras.ops.convert_to_tensor(7.0)}

    if keras.backend.backend() == "jax":
        def step(state, data):  # noqa: F811
            seen.append(1)
            return {"seven": keras.ops.convert_to_tensor(7.0)}, state
    ki.install_train_step(model, step)
    history = model.fit(x, y, verbose=0, batch_size=4)
    assert seen and history.history["seven"] == [7.0]
    ki.restore_train_step(model)
    assert "train_step" not in model.__dict__ and model.train_function is None
    assert "seven" not in model.fit(x, y, verbose=0, batch_size=4).history


def test_track_loss_updates_the_reported_loss():
    model = _dense_model()
    x = np.ones((4, 3), "float32")
    model.fit(x, np.zeros((4, 2), "float32"), verbose=0)
    model.reset_metrics()
    ki.track_loss(model, keras.ops.convert_to_tensor(2.0), x)
    ki.track_loss(model, keras.ops.convert_to_tensor(4.0), x[:2])
    assert float(model.get_metrics_result()["loss"]) == pytest.approx((2 * 4 + 4 * 2) / 6)


def test_new_internals_errors_name_the_attribute():
    class Bare:
        pass

    with pytest.raises(RuntimeError) as error:
        ki.track_loss(Bare(), 1.0, np.ones((1, 1)))
    _assert_names(error, "keras.Model._loss_tracker")
    with pytest.raises(RuntimeError) as error:
        ki.install_train_step(Bare(), None)
    _assert_names(error, "keras.Model.train_function")
    with pytest.raises(RuntimeError) as error:
        ki.jax_update_metrics(Bare(), [], 0.0, None, None, None, None)
    _assert_names(error, "keras.Model._update_metrics_variables (JAX trainer)")


# -- keras.Model.test_step / test_function, installed steps, symbolic scope -----
def test_install_test_step_is_used_by_the_next_evaluate_and_restored():
    model = _dense_model()
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    model.evaluate(x, y, verbose=0)
    assert ki.installed_step(model, "test_step") is None

    def step(data):
        return {"seven": keras.ops.convert_to_tensor(7.0)}

    if keras.backend.backend() == "jax":
        def step(state, data):  # noqa: F811
            return {"seven": keras.ops.convert_to_tensor(7.0)}, state
    ki.install_test_step(model, step)
    assert ki.installed_step(model, "test_step") is step and model.test_function is None
    assert model.evaluate(x, y, verbose=0, return_dict=True) == {"seven": 7.0}
    ki.restore_test_step(model)
    assert ki.installed_step(model, "test_step") is None and model.test_function is None
    assert "seven" not in model.evaluate(x, y, verbose=0, return_dict=True)
    with pytest.raises(ValueError):
        ki.installed_step(model, "predict_step")


def test_in_symbolic_scope_is_true_only_while_keras_traces_shapes():
    seen = []

    class Probe(keras.layers.Layer):
        def call(self, x):
            seen.append(ki.in_symbolic_scope())
            return x

    assert ki.in_symbolic_scope() is False
    Probe()(keras.Input((3,)))  # shapes only: Keras' compute_output_spec
    Probe()(np.ones((2, 3), "float32"))
    with keras.SymbolicScope():
        assert ki.in_symbolic_scope() is True
    # Keras' torch backend traces a call twice when a dimension is unknown
    # (with sizes 83 and 89, to find which output dimensions follow it).
    traces = 2 if keras.backend.backend() == "torch" else 1
    assert seen == [True] * traces + [False] and ki.in_symbolic_scope() is False


def test_test_step_internals_errors_name_the_attribute():
    class Bare:
        pass

    with pytest.raises(RuntimeError) as error:
        ki.install_test_step(Bare(), None)
    _assert_names(error, "keras.Model.test_function")

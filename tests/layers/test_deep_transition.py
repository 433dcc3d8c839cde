"""Tests for deepkit.layers.deep_transition: the contract, every variant
(RNN, DT, DT(S), leaky fixed and learned) against a numpy loop, masking,
stateful truncated BPTT, go_backwards, unroll, gradients, argument errors."""

import json

import keras
import numpy as np

from deepkit.layers import DeepTransitionCell, DeepTransitionRNN
from deepkit.testing import TestCase

ACTIVATIONS = {
    "tanh": np.tanh,
    "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a)),
    "relu": lambda a: np.maximum(a, 0.0),
    "linear": lambda a: a,
}

VARIANTS = {
    "rnn": dict(transition_layers=[]),
    "dt": dict(transition_layers=[6]),
    "dt_two_layers": dict(transition_layers=[6, 4]),
    "dts": dict(transition_layers=[6], shortcut=True),
    "dts_two_layers": dict(transition_layers=[6, 4], shortcut=True),
    "leaky_fixed": dict(transition_layers=[6], shortcut=True, leaky=0.3),
    "leaky_learned": dict(transition_layers=[6], leaky="learned"),
    "rnn_leaky_learned": dict(transition_layers=[], leaky="learned"),
}


def _randomize(layer, seed=0):
    """Give every weight (biases and leaks too) random, non-trivial values."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(scale=0.5, size=w.shape).astype("float32"))


def _weights(cell):
    """The cell's weights by role, as float64 numpy arrays."""
    get = lambda v: None if v is None else np.asarray(v.numpy(), "float64")
    return {
        "U": get(cell.kernel),
        "W1": get(cell.recurrent_kernel),
        "b1": get(cell.bias),
        "W": [get(k) for k in cell.transition_kernels],
        "b": [get(b) for b in cell.transition_biases],
        "Ws": get(cell.shortcut_kernel),
        "leak": get(cell.leak),
    }


def _numpy_step(w, x_t, h_prev, act, transition_act, leaky):
    """The paper's DT(S) transition with leaky integration, written plainly."""
    depth = len(w["W"])  # number of layers after the first
    pre = x_t @ w["U"] + h_prev @ w["W1"] + w["b1"]
    z = act(pre) if depth == 0 else transition_act(pre)
    for l in range(depth):
        pre = z @ w["W"][l] + w["b"][l]
        if l == depth - 1:
            if w["Ws"] is not None:
                pre = pre + h_prev @ w["Ws"]
            z = act(pre)
        else:
            z = transition_act(pre)
    if leaky is None:
        return z
    a = 1.0 / (1.0 + np.exp(-w["leak"])) if leaky == "learned" else leaky
    return a * h_prev + (1.0 - a) * z


def _numpy_rnn(cell_weights, x, act, transition_act, leaky, mask=None, h0=None,
               go_backwards=False):
    """Outputs (batch, steps, units) and last state; masked steps keep the state."""
    batch, steps, _ = x.shape
    units = cell_weights["W1"].shape[0]
    h = np.zeros((batch, units)) if h0 is None else np.array(h0, "float64")
    order = range(steps - 1, -1, -1) if go_backwards else range(steps)
    outputs = []
    for t in order:
        new = _numpy_step(cell_weights, x[:, t].astype("float64"), h, act, transition_act, leaky)
        if mask is not None:
            keep = mask[:, t][:, None]
            new = np.where(keep, new, h)
        h = new
        outputs.append(h)
    return np.stack(outputs, axis=1), h


def _copy_trainable(source, target):
    for s, t in zip(source.trainable_weights, target.trainable_weights):
        t.assign(s)


def _input(shape=(3, 7, 5), seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


class DeepTransitionContractTest(TestCase):
    def test_layer_contract_dts(self):
        self.run_layer_test(
            DeepTransitionRNN,
            dict(units=4, transition_layers=[6], shortcut=True, return_sequences=True),
            input_data=_input(),
            expected_output_shape=(3, 7, 4),
            # U, W_1, b_1, W_2, b_2, W_s
            expected_num_trainable_weights=6,
            expected_num_non_trainable_weights=0,
        )

    def test_layer_contract_leaky_learned_last_output(self):
        self.run_layer_test(
            DeepTransitionRNN,
            dict(units=4, transition_layers=[3, 5], leaky="learned",
                 activation="sigmoid", transition_activation="relu"),
            input_data=_input(),
            expected_output_shape=(3, 4),
            # U, W_1, b_1, W_2, b_2, W_3, b_3, leak
            expected_num_trainable_weights=8,
        )

    def test_layer_contract_plain_rnn_fixed_leak(self):
        self.run_layer_test(
            DeepTransitionRNN,
            dict(units=4, leaky=0.25, return_sequences=True),
            input_data=_input(),
            expected_output_shape=(3, 7, 4),
            expected_num_trainable_weights=3,
        )

    def test_cell_config_round_trip_and_registration(self):
        cell = DeepTransitionCell(
            5, transition_layers=[7, 3], shortcut=True, leaky="learned",
            activation="sigmoid", recurrent_regularizer={"class_name": "L2", "config": {"l2": 0.01}},
        )
        serialized = keras.saving.serialize_keras_object(cell)
        self.assertEqual(serialized["registered_name"], "deepkit>DeepTransitionCell")
        revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
        self.assertIsInstance(revived, DeepTransitionCell)
        self.assertEqual(revived.get_config(), cell.get_config())
        self.assertEqual(revived.transition_layers, [7, 3])
        self.assertEqual(revived.leaky, "learned")

    def test_rnn_config_keeps_sequence_options(self):
        layer = DeepTransitionRNN(
            4, transition_layers=[2], leaky=0.5, return_sequences=True,
            return_state=True, go_backwards=True, stateful=True, unroll=True,
        )
        config = json.loads(json.dumps(layer.get_config()))
        revived = DeepTransitionRNN.from_config(config)
        for name in ("return_sequences", "return_state", "go_backwards", "stateful", "unroll"):
            self.assertTrue(getattr(revived, name), name)
        self.assertEqual(revived.leaky, 0.5)
        self.assertEqual(revived.transition_layers, [2])
        self.assertEqual(revived.get_config(), layer.get_config())

    def test_regularizers_add_losses(self):
        layer = DeepTransitionRNN(
            4, transition_layers=[3], shortcut=True,
            kernel_regularizer="l2", recurrent_regularizer="l2", bias_regularizer="l2",
        )
        layer(_input())
        # kernel, 3 recurrent matrices (W_1, W_2, W_s), 2 biases.
        self.assertLen(layer.losses, 6)

    def test_argument_errors(self):
        with self.assertRaisesRegex(ValueError, "shortcut"):
            DeepTransitionCell(4, shortcut=True)
        with self.assertRaisesRegex(ValueError, "leak"):
            DeepTransitionCell(4, leaky=1.0)
        with self.assertRaisesRegex(ValueError, "leaky"):
            DeepTransitionCell(4, leaky=True)
        with self.assertRaisesRegex(ValueError, "leaky"):
            DeepTransitionCell(4, leaky="sometimes")
        with self.assertRaisesRegex(ValueError, "units"):
            DeepTransitionCell(0)
        with self.assertRaisesRegex(ValueError, "transition_layers"):
            DeepTransitionCell(4, transition_layers=[3, 0])


class DeepTransitionNumbersTest(TestCase):
    def _check_variant(self, name, activation="sigmoid", transition_activation="tanh"):
        kwargs = dict(VARIANTS[name], activation=activation,
                      transition_activation=transition_activation)
        x = _input()
        layer = DeepTransitionRNN(4, return_sequences=True, return_state=True, **kwargs)
        layer(x)
        _randomize(layer)
        outputs, state = layer(x)
        expected, last = _numpy_rnn(
            _weights(layer.cell), x, ACTIVATIONS[activation],
            ACTIVATIONS[transition_activation], kwargs.get("leaky"),
        )
        self.assertAllClose(outputs, expected, atol=2e-5, rtol=1e-5, msg=name)
        self.assertAllClose(state, last, atol=2e-5, rtol=1e-5, msg=name)
        # The cell alone in keras.layers.RNN (input projected at each step)
        # gives the same numbers as the wrapper (input projected up front).
        plain = keras.layers.RNN(layer.cell, return_sequences=True)
        self.assertAllClose(plain(x), expected, atol=2e-5, rtol=1e-5, msg=name)

    def test_conventional_rnn(self):
        self._check_variant("rnn")

    def test_dt_rnn(self):
        self._check_variant("dt")
        self._check_variant("dt_two_layers", activation="tanh", transition_activation="relu")

    def test_dts_rnn(self):
        self._check_variant("dts")
        self._check_variant("dts_two_layers")

    def test_leaky_fixed(self):
        self._check_variant("leaky_fixed")

    def test_leaky_learned(self):
        self._check_variant("leaky_learned")
        self._check_variant("rnn_leaky_learned", activation="tanh")

    def test_shortcut_changes_the_output(self):
        # The DT(S) shortcut is used: zeroing W_s changes the result to DT's.
        x = _input()
        layer = DeepTransitionRNN(4, transition_layers=[6], shortcut=True, return_sequences=True)
        layer(x)
        _randomize(layer)
        with_shortcut = keras.ops.convert_to_numpy(layer(x))
        layer.cell.shortcut_kernel.assign(np.zeros((4, 4), "float32"))
        dt = DeepTransitionRNN(4, transition_layers=[6], return_sequences=True)
        dt(x)
        for source, target in zip(layer.cell.weights, dt.cell.weights):
            target.assign(source)  # U, W_1, b_1, W_2, b_2: same order
        self.assertAllClose(layer(x), dt(x), atol=1e-6)
        self.assertGreater(np.abs(with_shortcut - keras.ops.convert_to_numpy(dt(x))).max(), 1e-3)

    def test_learned_leak_starts_at_one_half(self):
        layer = DeepTransitionRNN(3, leaky="learned")
        layer(_input())
        self.assertAllClose(layer.cell.leak, np.zeros(3))

    def test_unroll_matches_loop(self):
        x = _input()
        looped = DeepTransitionRNN(4, transition_layers=[5], shortcut=True, return_sequences=True)
        unrolled = DeepTransitionRNN(4, transition_layers=[5], shortcut=True,
                                     return_sequences=True, unroll=True)
        looped(x), unrolled(x)
        _randomize(looped)
        unrolled.set_weights(looped.get_weights())
        self.assertAllClose(unrolled(x), looped(x), atol=1e-6)


class DeepTransitionSequenceTest(TestCase):
    def _layer(self, x, **kwargs):
        layer = DeepTransitionRNN(4, transition_layers=[5], shortcut=True, leaky="learned",
                                  **kwargs)
        layer(x)
        _randomize(layer)
        return layer

    def test_masked_steps_keep_the_state(self):
        x = _input()
        mask = np.ones((3, 7), bool)
        mask[0, 5:] = False  # padding at the end
        mask[1, 2] = False  # a gap
        mask[2, 0] = False  # a masked first step
        layer = self._layer(x, return_sequences=True, return_state=True)
        outputs, state = layer(x, mask=mask)
        outputs, state = keras.ops.convert_to_numpy(outputs), keras.ops.convert_to_numpy(state)
        w = _weights(layer.cell)
        expected, last = _numpy_rnn(w, x, np.tanh, np.tanh, "learned", mask=mask)
        self.assertAllClose(outputs, expected, atol=2e-5, rtol=1e-5)
        self.assertAllClose(state, last, atol=2e-5, rtol=1e-5)
        # Explicitly: a masked step repeats the previous output.
        self.assertAllEqual(outputs[0, 5], outputs[0, 4])
        self.assertAllEqual(outputs[0, 6], outputs[0, 4])
        self.assertAllEqual(outputs[1, 2], outputs[1, 1])
        self.assertAllClose(state[0], outputs[0, 4])

    def test_masking_layer_in_a_model(self):
        x = _input()
        x[1, 4:] = 0.0
        inputs = keras.Input((7, 5))
        layer = DeepTransitionRNN(4, transition_layers=[5])
        model = keras.Model(inputs, layer(keras.layers.Masking(0.0)(inputs)))
        _randomize(layer)
        short = DeepTransitionRNN(4, transition_layers=[5])
        short(x[1:2, :4])
        short.set_weights(layer.get_weights())
        self.assertAllClose(model(x)[1], short(x[1:2, :4])[0], atol=1e-6)

    def test_stateful_halves_equal_one_full_sequence(self):
        x = _input((3, 8, 5))
        full = self._layer(x, return_sequences=True)
        expected = keras.ops.convert_to_numpy(full(x))
        stateful = DeepTransitionRNN(4, transition_layers=[5], shortcut=True, leaky="learned",
                                     return_sequences=True, stateful=True)
        stateful(x[:, :4])
        _copy_trainable(full, stateful)
        stateful.reset_state()
        first = keras.ops.convert_to_numpy(stateful(x[:, :4]))
        second = keras.ops.convert_to_numpy(stateful(x[:, 4:]))
        self.assertAllClose(np.concatenate([first, second], axis=1), expected, atol=1e-5)
        # After a reset the second half starts from zeros again, which differs.
        stateful.reset_state()
        fresh = keras.ops.convert_to_numpy(stateful(x[:, 4:]))
        self.assertGreater(np.abs(fresh - second).max(), 1e-3)

    def test_stateful_in_a_model_with_fit_batches(self):
        # With the batch-major layout of the PTB loader (row w*B + b is window
        # w of stream b), predict with batch_size=B and stateful layers gives
        # the outputs of the streams run whole.
        streams = _input((2, 12, 5))
        windows = streams.reshape(2, 3, 4, 5).transpose(1, 0, 2, 3).reshape(6, 4, 5)
        whole = self._layer(streams, return_sequences=True)
        expected = keras.ops.convert_to_numpy(whole(streams))
        inputs = keras.Input((4, 5), batch_size=2)
        layer = DeepTransitionRNN(4, transition_layers=[5], shortcut=True, leaky="learned",
                                  return_sequences=True, stateful=True)
        model = keras.Model(inputs, layer(inputs))
        _copy_trainable(whole, layer)
        layer.reset_state()
        got = model.predict(windows, batch_size=2, verbose=0)
        got = got.reshape(3, 2, 4, 4).transpose(1, 0, 2, 3).reshape(2, 12, 4)
        self.assertAllClose(got, expected, atol=1e-5)
        # The carried state is a non-trainable weight: it holds the state
        # after the last batch, and fit carries it too.
        self.assertLen(layer.non_trainable_weights, 1)
        self.assertAllClose(layer.states[0], expected[:, -1], atol=1e-5)
        layer.reset_state()
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        model.fit(windows, np.zeros((6, 4, 4), "float32"), batch_size=2, shuffle=False,
                  verbose=0)
        self.assertAllClose(layer.states[0], expected[:, -1], atol=1e-5)

    def test_go_backwards(self):
        x = _input()
        layer = self._layer(x, return_sequences=True, go_backwards=True)
        outputs = keras.ops.convert_to_numpy(layer(x))
        w = _weights(layer.cell)
        expected, _ = _numpy_rnn(w, x, np.tanh, np.tanh, "learned", go_backwards=True)
        self.assertAllClose(outputs, expected, atol=2e-5, rtol=1e-5)
        # The same as running forwards over the reversed sequence.
        forward = DeepTransitionRNN(4, transition_layers=[5], shortcut=True, leaky="learned",
                                    return_sequences=True)
        forward(x)
        forward.set_weights(layer.get_weights())
        self.assertAllClose(forward(x[:, ::-1]), outputs, atol=1e-6)

    def test_bidirectional(self):
        x = _input()
        layer = keras.layers.Bidirectional(
            DeepTransitionRNN(4, transition_layers=[5], shortcut=True, return_sequences=True)
        )
        outputs = keras.ops.convert_to_numpy(layer(x))
        self.assertEqual(outputs.shape, (3, 7, 8))
        self.assertTrue(layer.backward_layer.go_backwards)
        forward, _ = _numpy_rnn(_weights(layer.forward_layer.cell), x, np.tanh, np.tanh, None)
        backward, _ = _numpy_rnn(_weights(layer.backward_layer.cell), x, np.tanh, np.tanh, None,
                                 go_backwards=True)
        self.assertAllClose(outputs[..., :4], forward, atol=2e-5, rtol=1e-5)
        self.assertAllClose(outputs[..., 4:], backward[:, ::-1], atol=2e-5, rtol=1e-5)

    def test_initial_state(self):
        x = _input()
        layer = self._layer(x, return_sequences=True)
        h0 = np.random.default_rng(5).normal(size=(3, 4)).astype("float32")
        expected, _ = _numpy_rnn(_weights(layer.cell), x, np.tanh, np.tanh, "learned", h0=h0)
        self.assertAllClose(layer(x, initial_state=[h0]), expected, atol=2e-5, rtol=1e-5)

    def test_fit_step_updates_every_weight(self):
        x = _input()
        y = np.random.default_rng(3).normal(size=(3, 7, 4)).astype("float32")
        inputs = keras.Input((7, 5))
        layer = DeepTransitionRNN(4, transition_layers=[5, 3], shortcut=True, leaky="learned",
                                  return_sequences=True)
        model = keras.Model(inputs, layer(inputs))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [np.array(w.numpy()) for w in layer.trainable_weights]
        model.fit(x, y, batch_size=3, epochs=1, verbose=0)
        for w, b in zip(layer.trainable_weights, before):
            self.assertFalse(np.array_equal(np.asarray(w.numpy()), b), w.path)


class WeightNoiseTest(TestCase):
    def test_weight_noise_only_in_training_with_the_right_scale(self):
        # One step, no transition layers, linear units, zero weights: in
        # training h_1 = x (U + N_U), so h_1 ~ N(0, stddev^2 |x|^2) per unit.
        stddev = 0.3
        layer = DeepTransitionRNN(
            64, activation="linear", weight_noise=stddev, seed=5,
            kernel_initializer="zeros", recurrent_initializer="zeros",
        )
        x = np.array([[[1.0, 2.0, -2.0]]], "float32")  # |x| = 3
        self.assertAllClose(layer(x, training=False), np.zeros((1, 64)))
        draws = np.concatenate([keras.ops.convert_to_numpy(layer(x, training=True)) for _ in range(40)])
        self.assertAllClose(draws.mean(), 0.0, atol=0.05)
        self.assertAllClose(draws.std(), stddev * 3.0, rtol=0.1)
        # Fresh noise at every call.
        self.assertFalse(np.allclose(draws[0], draws[1]))

    def test_weight_noise_config_and_errors(self):
        self.run_layer_test(
            DeepTransitionRNN,
            {"units": 3, "transition_layers": [2], "shortcut": True,
             "weight_noise": 0.075, "seed": 1},
            input_shape=(2, 4, 3),
            expected_output_shape=(2, 3),
        )
        with self.assertRaisesRegex(ValueError, "weight_noise must be a non-negative number"):
            DeepTransitionRNN(3, weight_noise=-0.1)
        rnn = keras.layers.RNN(DeepTransitionCell(3, weight_noise=0.1))
        with self.assertRaisesRegex(ValueError, "one noise sample per sequence"):
            rnn(np.zeros((1, 2, 3), "float32"), training=True)

    def test_cell_error_message_is_plain_text(self):
        # Keras wraps an error leaving `call` in "\x1b[1m...\x1b[0m" (bold);
        # the message that reaches the user, in a call and in a fit, has none.
        want = ("DeepTransitionCell: weight_noise draws one noise sample per sequence; "
                "use the cell through DeepTransitionRNN (or wrap the RNN call in "
                "`with cell.noisy_weights(training):`)")
        rnn = keras.layers.RNN(DeepTransitionCell(3, weight_noise=0.1))
        with self.assertRaises(ValueError) as raised:
            rnn(np.zeros((1, 2, 3), "float32"), training=True)
        message = str(raised.exception)
        self.assertNotIn("\x1b", message)
        self.assertIn(f"\n\n{want}\n\n", message)
        self.assertTrue(message.startswith("Exception encountered when calling "
                                           "DeepTransitionCell.call()"), message)

        model = keras.Sequential(
            [keras.Input((2, 3)), keras.layers.RNN(DeepTransitionCell(4, weight_noise=0.1))])
        model.compile("sgd", "mse")
        with self.assertRaises(ValueError) as raised:
            model.fit(np.zeros((2, 2, 3), "float32"), np.zeros((2, 4), "float32"), verbose=0)
        self.assertNotIn("\x1b", str(raised.exception))
        self.assertIn(want, str(raised.exception))

    def test_plain_value_error_strips_ansi_escapes(self):
        from deepkit.layers.deep_transition import PlainValueError

        error = PlainValueError("a \x1b[1mbold\x1b[0m and \x1b[31;1mred\x1b[0m word")
        self.assertIsInstance(error, ValueError)
        self.assertEqual(str(error), "a bold and red word")

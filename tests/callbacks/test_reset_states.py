"""Tests for deepkit.callbacks.ResetStates and stateful_layers."""

import keras
import numpy as np
from keras import ops

from deepkit.callbacks import ResetStates, reset_states, stateful_layers
from deepkit.testing import TestCase


def stateful_model():
    inputs = keras.Input((4, 2), batch_size=3)
    hidden = keras.layers.SimpleRNN(5, stateful=True, return_sequences=True, name="inner")(inputs)
    wrapped = keras.layers.TimeDistributed(keras.layers.Dense(2))(hidden)
    outer = keras.layers.SimpleRNN(2, stateful=True, name="outer")(wrapped)
    return keras.Model(inputs, outer)


class ResetStatesTest(TestCase):
    def test_finds_every_stateful_layer_and_zeroes_it(self):
        model = stateful_model()
        self.assertEqual(sorted(layer.name for layer in stateful_layers(model)),
                         ["inner", "outer"])
        x = np.ones((3, 4, 2), "float32")
        model(x)  # an eager call carries the state forward
        states = [ops.convert_to_numpy(s) for layer in stateful_layers(model)
                  for s in layer.states]
        self.assertTrue(all(np.abs(s).max() > 0 for s in states))
        self.assertEqual(reset_states(model), 2)
        for layer in stateful_layers(model):
            for s in layer.states:
                self.assertAllEqual(ops.convert_to_numpy(s), np.zeros(s.shape))
        plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        self.assertEqual(reset_states(plain), 0)

    def test_each_epoch_and_evaluation_start_from_zeros(self):
        model = stateful_model()
        model.compile("sgd", "mse")
        x, y = np.ones((6, 4, 2), "float32"), np.zeros((6, 2), "float32")
        callback = ResetStates()
        callback.set_model(model)

        def state_norm():
            return sum(float(np.abs(ops.convert_to_numpy(s)).sum())
                       for layer in stateful_layers(model) for s in layer.states)

        for hook in (lambda: callback.on_epoch_begin(0), lambda: callback.on_test_begin()):
            model(x[:3])
            self.assertGreater(state_norm(), 0.0)
            hook()
            self.assertEqual(state_norm(), 0.0)
        history = model.fit(x, y, batch_size=3, epochs=2, shuffle=False, verbose=0,
                            validation_data=(x, y), callbacks=[ResetStates()])
        self.assertLen(history.history["val_loss"], 2)

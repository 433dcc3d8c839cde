"""Tests for deepkit.training.schedules."""

import json
import os

import keras
import numpy as np
from keras import ops

from deepkit.callbacks import MomentumSchedule
from deepkit.testing import TestCase
from deepkit.training import ExponentialDecayWithFloor, VariableMomentumSGD


def _reference(step, initial, factor, minimum):
    return np.maximum(initial / np.float64(factor) ** np.asarray(step, "float64"), minimum)


def _constant_gradient_model(optimizer):
    """w starts at 0; the loss is w, so every gradient is exactly 1."""
    inputs = keras.Input((1,))
    outputs = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizer, loss=lambda y_true, y_pred: ops.mean(y_pred))
    return model


class ExponentialDecayWithFloorTest(TestCase):
    def test_values_match_numpy_for_the_paper_setting(self):
        schedule = ExponentialDecayWithFloor(0.1, 1.000004, 1e-6)
        steps = [0, 1, 2, 10, 1000, 100_000, 500_000, 1_000_000, 1_500_000,
                 2_000_000, 2_878_000, 3_000_000, 10_000_000]
        got = [float(ops.convert_to_numpy(schedule(s))) for s in steps]
        want = _reference(steps, 0.1, 1.000004, 1e-6)
        # 1e-5 relative: a float32 power (1.000004 rounded to float32) is
        # already 6% off at 1e6 steps, so this would catch it.
        self.assertAllClose(got, want, rtol=1e-5, atol=0)
        self.assertEqual(got[0], np.float32(0.1))
        self.assertEqual(got[-1], np.float32(1e-6))  # on the floor
        self.assertGreater(got[-4], 1e-6)  # 2.0e6 updates: not yet

    def test_integer_step_tensor(self):
        schedule = ExponentialDecayWithFloor(1.0, 2.0, 0.1)
        got = ops.convert_to_numpy(schedule(ops.convert_to_tensor([0, 1, 2, 3, 4], "int32")))
        self.assertAllClose(got, [1.0, 0.5, 0.25, 0.125, 0.1])

    def test_updates_use_the_rate_of_their_step(self):
        # lr: 0.1, 0.05, 0.03 (floor), 0.03; every gradient is 1.
        schedule = ExponentialDecayWithFloor(0.1, 2.0, 0.03)
        model = _constant_gradient_model(keras.optimizers.SGD(schedule))
        x = np.ones((4, 1), "float32")
        model.fit(x, x, batch_size=1, epochs=1, verbose=0, shuffle=False)
        weight = float(ops.convert_to_numpy(model.trainable_weights[0])[0, 0])
        self.assertAlmostEqual(weight, -(0.1 + 0.05 + 0.03 + 0.03), places=6)
        self.assertAlmostEqual(
            float(ops.convert_to_numpy(model.optimizer.learning_rate)), 0.03, places=7
        )

    def test_config_registration_and_saving(self):
        schedule = ExponentialDecayWithFloor(0.1, 1.000004, 1e-6)
        self.assertEqual(
            schedule.get_config(),
            {"initial_learning_rate": 0.1, "decay_factor": 1.000004, "minimum": 1e-6},
        )
        serialized = keras.saving.serialize_keras_object(schedule)
        self.assertEqual(serialized["registered_name"], "deepkit>ExponentialDecayWithFloor")
        revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
        self.assertIsInstance(revived, ExponentialDecayWithFloor)
        self.assertEqual(revived.get_config(), schedule.get_config())

        inputs = keras.Input((1,))
        model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
        model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.5), loss="mse")
        x = np.ones((2, 1), "float32")
        model.fit(x, x, batch_size=1, epochs=1, verbose=0)
        path = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True, compile=True)
        loaded_schedule = loaded.optimizer._learning_rate
        self.assertIsInstance(loaded_schedule, ExponentialDecayWithFloor)
        self.assertEqual(loaded_schedule.get_config(), schedule.get_config())

    def test_bad_arguments(self):
        cases = [
            (dict(initial_learning_rate=0, decay_factor=1.1, minimum=0),
             "initial_learning_rate must be a number > 0, got 0"),
            (dict(initial_learning_rate="0.1", decay_factor=1.1, minimum=0),
             "initial_learning_rate must be a number > 0, got '0.1'"),
            (dict(initial_learning_rate=0.1, decay_factor=0.9, minimum=0),
             "decay_factor must be a number >= 1, got 0.9"),
            (dict(initial_learning_rate=0.1, decay_factor=float("inf"), minimum=0),
             "decay_factor must be a number >= 1, got inf"),
            (dict(initial_learning_rate=0.1, decay_factor=1.1, minimum=-1e-6),
             "minimum must be a number >= 0, got -1e-06"),
        ]
        for kwargs, message in cases:
            with self.subTest(**{k: repr(v) for k, v in kwargs.items()}):
                with self.assertRaises(ValueError) as caught:
                    ExponentialDecayWithFloor(**kwargs)
                self.assertIn("ExponentialDecayWithFloor: " + message, str(caught.exception))


def _two_layer_model(optimizer, seed=3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    model.compile(optimizer=optimizer, loss="mse")
    return model


class VariableMomentumSGDTest(TestCase):
    def _data(self):
        rng = np.random.default_rng(0)
        return rng.normal(size=(12, 3)).astype("float32"), rng.normal(size=(12, 2)).astype("float32")

    def test_same_updates_as_keras_sgd(self):
        x, y = self._data()
        for nesterov in (False, True):
            with self.subTest(nesterov=nesterov):
                ours = _two_layer_model(
                    VariableMomentumSGD(0.05, momentum=0.7, nesterov=nesterov)
                )
                theirs = _two_layer_model(
                    keras.optimizers.SGD(0.05, momentum=0.7, nesterov=nesterov)
                )
                for model in (ours, theirs):
                    model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
                for a, b in zip(ours.get_weights(), theirs.get_weights()):
                    self.assertAllClose(a, b, atol=1e-6, rtol=1e-5)

    def test_assigned_momentum_takes_effect_without_retracing(self):
        model = _constant_gradient_model(VariableMomentumSGD(0.1, momentum=0.0))
        forced = []
        original = model.make_train_function

        def counting(force=False):
            forced.append(force)
            return original(force=force)

        model.make_train_function = counting
        x = np.ones((2, 1), "float32")
        model.fit(x, x, batch_size=1, epochs=3, verbose=0, shuffle=False,
                  callbacks=[MomentumSchedule(0.0, 0.8, epochs=2)])  # 0, .4, .8
        weight, velocity = 0.0, 0.0
        for mu in (0.0, 0.0, 0.4, 0.4, 0.8, 0.8):
            velocity = mu * velocity - 0.1
            weight += velocity
        got = float(ops.convert_to_numpy(model.trainable_weights[0])[0, 0])
        self.assertAlmostEqual(got, weight, places=5)
        self.assertEqual(sum(forced), 0)

    def test_config_and_saving(self):
        optimizer = VariableMomentumSGD(0.1, momentum=0.5, nesterov=True)
        serialized = keras.saving.serialize_keras_object(optimizer)
        self.assertEqual(serialized["registered_name"], "deepkit>VariableMomentumSGD")
        revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
        self.assertIsInstance(revived, VariableMomentumSGD)
        self.assertEqual(revived.get_config(), optimizer.get_config())

        x, y = self._data()
        model = _two_layer_model(optimizer)
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        optimizer.momentum.assign(0.625)
        path = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        self.assertIsInstance(loaded.optimizer, VariableMomentumSGD)
        self.assertAlmostEqual(float(ops.convert_to_numpy(loaded.optimizer.momentum)), 0.625)
        for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
            self.assertAllClose(a, b)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, r"momentum must be a number in \[0, 1\], got 1.5"):
            VariableMomentumSGD(0.1, momentum=1.5)
        with self.assertRaisesRegex(ValueError, "nesterov must be True or False, got 'yes'"):
            VariableMomentumSGD(0.1, momentum=0.5, nesterov="yes")

"""Tests for deepkit.training.schedules."""

import json
import os

import keras
import numpy as np
from keras import ops

from deepkit.testing import TestCase
from deepkit.training import ExponentialDecayWithFloor


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
        got = ops.convert_to_numpy(schedule(ops.convert_to_tensor([0, 1, 2, 3, 4], "int64")))
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

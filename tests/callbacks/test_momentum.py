"""Tests for deepkit.callbacks.momentum.MomentumSchedule."""

import json

import keras
import numpy as np
from keras import ops

from deepkit.callbacks import MomentumSchedule
from deepkit.testing import TestCase

LEARNING_RATE = 0.1
STEPS_PER_EPOCH = 2


def _constant_gradient_model(optimizer):
    """w starts at 0; the loss is w, so every gradient is exactly 1."""
    inputs = keras.Input((1,))
    outputs = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizer, loss=lambda y_true, y_pred: ops.mean(y_pred))
    return model


def _fit(model, epochs, callbacks, initial_epoch=0):
    x = np.ones((STEPS_PER_EPOCH, 1), "float32")
    model.fit(
        x, x, batch_size=1, epochs=epochs, initial_epoch=initial_epoch,
        callbacks=callbacks, verbose=0, shuffle=False,
    )
    return float(keras.ops.convert_to_numpy(model.trainable_weights[0])[0, 0])


def _expected_weight(momenta, weight=0.0, velocity=0.0):
    """Keras SGD: v = mu * v - lr * g; w = w + v; g = 1; one mu per epoch."""
    for mu in momenta:
        for _ in range(STEPS_PER_EPOCH):
            velocity = mu * velocity - LEARNING_RATE
            weight += velocity
    return weight


class _SetAttribute(keras.callbacks.Callback):
    """What a naive schedule does: assign the float and nothing else."""

    def __init__(self, momenta):
        super().__init__()
        self.momenta = momenta

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.momentum = self.momenta[epoch]


class _VariableMomentumSGD(keras.optimizers.Optimizer):
    """SGD with momentum whose momentum is an optimizer variable."""

    def __init__(self, learning_rate, momentum):
        super().__init__(learning_rate=learning_rate, name="variable_momentum_sgd")
        self.momentum = keras.Variable(momentum, trainable=False, name="momentum")

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = self.add_optimizer_variables(variables, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        velocity = self.velocities[self._get_variable_index(variable)]
        momentum = ops.cast(self.momentum, variable.dtype)
        learning_rate = ops.cast(learning_rate, variable.dtype)
        self.assign(velocity, momentum * velocity - learning_rate * gradient)
        self.assign_add(variable, velocity)


class MomentumScheduleTest(TestCase):
    def test_values(self):
        schedule = MomentumSchedule(start=0.5, end=0.7, epochs=250)
        for epoch, want in [(0, 0.5), (1, 0.5008), (125, 0.6), (249, 0.6992),
                            (250, 0.7), (300, 0.7)]:
            self.assertAlmostEqual(schedule.momentum_at(epoch), want, places=12)
        delayed = MomentumSchedule(start=0.5, end=0.7, epochs=250, start_epoch=1)
        for epoch, want in [(0, 0.5), (1, 0.5), (126, 0.6), (251, 0.7), (999, 0.7)]:
            self.assertAlmostEqual(delayed.momentum_at(epoch), want, places=12)
        falling = MomentumSchedule(start=0.9, end=0.1, epochs=4)
        self.assertAlmostEqual(falling.momentum_at(2), 0.5, places=12)
        jump = MomentumSchedule(start=0.2, end=0.9, epochs=0, start_epoch=3)
        self.assertEqual([jump.momentum_at(e) for e in range(5)], [0.2, 0.2, 0.2, 0.9, 0.9])

    def test_plain_attribute_assignment_is_ignored_after_tracing(self):
        # The reason for retracing: the traced step keeps the first momentum.
        momenta = [0.5, 0.9, 0.0]
        model = _constant_gradient_model(keras.optimizers.SGD(LEARNING_RATE, momentum=0.5))
        weight = _fit(model, 3, [_SetAttribute(momenta)])
        if keras.backend.backend() == "torch":
            # Keras' torch trainer runs the step eagerly (nothing is traced):
            # there the plain attribute is read at every step.
            self.assertAlmostEqual(weight, _expected_weight(momenta), places=5)
            self.assertNotAlmostEqual(weight, _expected_weight([0.5, 0.5, 0.5]), places=3)
            return
        self.assertAlmostEqual(weight, _expected_weight([0.5, 0.5, 0.5]), places=5)
        self.assertNotAlmostEqual(weight, _expected_weight(momenta), places=3)

    def test_schedule_changes_the_update(self):
        schedule = MomentumSchedule(start=0.5, end=0.9, epochs=2)  # .5, .7, .9, .9
        model = _constant_gradient_model(keras.optimizers.SGD(LEARNING_RATE, momentum=0.5))
        weight = _fit(model, 4, [schedule])
        momenta = [0.5, 0.7, 0.9, 0.9]
        self.assertAlmostEqual(model.optimizer.momentum, 0.9)
        self.assertAlmostEqual(weight, _expected_weight(momenta), places=5)
        self.assertNotAlmostEqual(weight, _expected_weight([0.5] * 4), places=3)

    def test_second_fit_continues_the_schedule(self):
        schedule = MomentumSchedule(start=0.5, end=0.8, epochs=3)
        model = _constant_gradient_model(keras.optimizers.SGD(LEARNING_RATE, momentum=0.5))
        _fit(model, 2, [schedule])
        weight = _fit(model, 4, [schedule], initial_epoch=2)
        self.assertAlmostEqual(weight, _expected_weight([0.5, 0.6, 0.7, 0.8]), places=5)

    def test_retraces_only_when_the_momentum_changes(self):
        schedule = MomentumSchedule(start=0.5, end=0.7, epochs=2)  # .5, .6, .7, .7, .7
        model = _constant_gradient_model(keras.optimizers.SGD(LEARNING_RATE, momentum=0.5))
        forced = []
        original = model.make_train_function

        def counting(force=False):
            forced.append(force)
            return original(force=force)

        model.make_train_function = counting
        _fit(model, 5, [schedule])
        self.assertEqual(sum(forced), 2)

    def test_variable_momentum_is_assigned_without_retracing(self):
        schedule = MomentumSchedule(start=0.5, end=0.9, epochs=2)
        model = _constant_gradient_model(_VariableMomentumSGD(LEARNING_RATE, 0.5))
        forced = []
        original = model.make_train_function

        def counting(force=False):
            forced.append(force)
            return original(force=force)

        model.make_train_function = counting
        weight = _fit(model, 4, [schedule])
        self.assertAlmostEqual(weight, _expected_weight([0.5, 0.7, 0.9, 0.9]), places=5)
        self.assertEqual(sum(forced), 0)
        self.assertAlmostEqual(float(keras.ops.convert_to_numpy(model.optimizer.momentum)), 0.9)

    def test_zero_momentum_optimizer_is_refused(self):
        model = _constant_gradient_model(keras.optimizers.SGD(LEARNING_RATE))
        with self.assertRaisesRegex(ValueError, "created with momentum=0.0"):
            _fit(model, 1, [MomentumSchedule(0.5, 0.7, 10)])

    def test_optimizer_without_momentum_is_refused(self):
        model = _constant_gradient_model(keras.optimizers.Adam())
        with self.assertRaisesRegex(ValueError, "Adam has no `momentum` attribute"):
            _fit(model, 1, [MomentumSchedule(0.5, 0.7, 10)])

    def test_bad_arguments(self):
        cases = [
            (dict(start=1.5, end=0.7, epochs=3), "start must be a number in [0, 1], got 1.5"),
            (dict(start=0.5, end="0.7", epochs=3), "end must be a number in [0, 1], got '0.7'"),
            (dict(start=0.5, end=0.7, epochs=-1), "epochs must be a non-negative integer, got -1"),
            (dict(start=0.5, end=0.7, epochs=2.5), "epochs must be a non-negative integer, got 2.5"),
            (dict(start=0.5, end=0.7, epochs=3, start_epoch=None),
             "start_epoch must be a non-negative integer, got None"),
        ]
        for kwargs, message in cases:
            with self.subTest(**{k: repr(v) for k, v in kwargs.items()}):
                with self.assertRaises(ValueError) as caught:
                    MomentumSchedule(**kwargs)
                self.assertIn("MomentumSchedule: " + message, str(caught.exception))

    def test_config_and_registration(self):
        schedule = MomentumSchedule(0.5, 0.7, 250, start_epoch=1)
        serialized = keras.saving.serialize_keras_object(schedule)
        self.assertEqual(serialized["registered_name"], "deepkit>MomentumSchedule")
        revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
        self.assertIsInstance(revived, MomentumSchedule)
        self.assertEqual(revived.get_config(), schedule.get_config())
        self.assertEqual(
            schedule.get_config(),
            {"start": 0.5, "end": 0.7, "epochs": 250, "start_epoch": 1},
        )

"""Tests for deepkit.training.loss_weights: ScheduledLoss, LossWeightScheduler,
LinearRamp and loss_weight_step. The schedules must be exact: the weight of
training step t is the schedule at t (seen in the reported loss and in the
gradient), across steps_per_execution, validation, save/load and resume."""

import os

import keras
import numpy as np
from keras import ops

from deepkit import _keras_internals
from deepkit.testing import TestCase
from deepkit.training import (LinearRamp, LossWeightScheduler, ScheduledLoss, Stage, fit_stages,
                              loss_weight_step)

TARGET = 10.0
# 4 examples, all zeros: the prediction is the bias b, the loss |10 - b|.
X = np.zeros((4, 1), "float32")
Y = np.full((4, 1), TARGET, "float32")


def ramp():
    return LinearRamp(2.0, 0.5, start_step=1, end_step=4)


def ramp_values(steps):
    return [2.0 if t <= 1 else 0.5 if t >= 4 else 2.0 - 1.5 * (t - 1) / 3 for t in steps]


def bias_model(weight, lr=0.5, **compile_kwargs):
    """y = b (zero inputs); loss w(t)·|10 - b|: its gradient is -w(t), so SGD
    adds lr·w(t) to b at step t."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(
        1, kernel_initializer="zeros", bias_initializer="zeros")])
    model.compile(keras.optimizers.SGD(lr), ScheduledLoss("mean_absolute_error", weight),
                  **compile_kwargs)
    return model


def bias(model):
    return float(ops.convert_to_numpy(model.layers[0].bias)[0])


def expected_run(weights, lr=0.5, start=0.0):
    """(loss of each step, bias after each step) for SGD on w(t)·|10 - b|."""
    losses, biases, b = [], [], start
    for w in weights:
        losses.append(w * (TARGET - b))
        b += lr * w
        biases.append(b)
    return losses, biases


class Biases(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(bias(self.model))


class LinearRampTest(TestCase):
    def test_held_then_linear_then_held(self):
        schedule = ramp()
        found = [float(ops.convert_to_numpy(schedule(t))) for t in range(7)]
        self.assertAllClose(found, ramp_values(range(7)), atol=1e-6)
        config = keras.optimizers.schedules.serialize(schedule)
        self.assertEqual(config["registered_name"], "deepkit>LinearRamp")
        again = keras.optimizers.schedules.deserialize(config)
        self.assertEqual(again.get_config(), schedule.get_config())
        with self.assertRaises(ValueError):
            LinearRamp(1.0, 0.0, start_step=5, end_step=5)


class ScheduledLossTest(TestCase):
    def test_the_weight_at_the_given_step_times_the_wrapped_loss(self):
        y_true = np.array([[0.0], [1.0], [1.0]], "float32")
        y_pred = np.array([[0.2], [0.7], [0.4]], "float32")
        weights = np.array([1.0, 2.0, 0.5], "float32")
        schedule = ramp()
        for loss, plain in (
                ("binary_crossentropy", keras.losses.BinaryCrossentropy()),
                (keras.losses.BinaryCrossentropy(reduction="sum"),
                 keras.losses.BinaryCrossentropy(reduction="sum")),
                (keras.losses.binary_crossentropy, keras.losses.BinaryCrossentropy())):
            scheduled = ScheduledLoss(loss, schedule)
            for step in (0, 2, 3, 9):
                with loss_weight_step(step):
                    found = scheduled(y_true, y_pred, sample_weight=weights)
                self.assertAllClose(found, ramp_values([step])[0] * ops.convert_to_numpy(
                    plain(y_true, y_pred, sample_weight=weights)), atol=1e-6)
        # A rank-1 target beside [B, 1] predictions, as Keras' own wrapper allows.
        with loss_weight_step(0):
            self.assertAllClose(ScheduledLoss("mean_absolute_error", schedule)(
                y_true[:, 0], y_pred), 2.0 * np.abs(y_true - y_pred).mean(), atol=1e-6)

    def test_config_round_trip_and_registration(self):
        for loss in ("sparse_categorical_crossentropy",
                     keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                     keras.losses.mean_squared_error):
            for weight in (0.25, ramp(), keras.optimizers.schedules.PiecewiseConstantDecay(
                    [2, 4], [3.0, 2.0, 1.0])):
                scheduled = ScheduledLoss(loss, weight, name="hint_loss")
                config = scheduled.get_config()
                self.assertEqual(ScheduledLoss.from_config(config).get_config(), config)
                serialized = keras.saving.serialize_keras_object(scheduled)
                self.assertEqual(serialized["registered_name"], "deepkit>ScheduledLoss")
                again = keras.saving.deserialize_keras_object(serialized)
                self.assertEqual(again.get_config(), config)
        with self.assertRaises(TypeError):
            ScheduledLoss("mse", "high")

    def test_a_schedule_without_a_step_is_an_error_and_a_number_needs_none(self):
        with self.assertRaisesRegex(RuntimeError, "LossWeightScheduler"):
            ScheduledLoss("mse", ramp())(Y, Y)
        model = bias_model(0.5)
        history = model.fit(X, Y, batch_size=4, epochs=2, verbose=0)
        self.assertAllClose(history.history["loss"], expected_run([0.5, 0.5])[0], atol=1e-5)
        model = bias_model(ramp())
        with self.assertRaisesRegex(RuntimeError, "LossWeightScheduler"):
            model.fit(X, Y, batch_size=4, epochs=1, verbose=0)


class LossWeightSchedulerTest(TestCase):
    def test_each_steps_weight_is_the_schedule_at_that_step(self):
        # One step per epoch: each epoch's loss is one step's weighted loss,
        # each epoch's bias the gradient's record; validation and the logged
        # weight use the step after the epoch.
        model = bias_model(ramp())
        biases = Biases()
        history = model.fit(X, Y, batch_size=4, epochs=6, verbose=0, validation_data=(X, Y),
                            callbacks=[LossWeightScheduler(), biases])
        losses, expected_biases = expected_run(ramp_values(range(6)))
        self.assertAllClose(history.history["loss"], losses, atol=1e-5)
        self.assertAllClose(biases.seen, expected_biases, atol=1e-5)
        self.assertAllClose(history.history["val_loss"],
                            [w * (TARGET - b) for w, b in zip(ramp_values(range(1, 7)),
                                                              expected_biases)], atol=1e-5)
        self.assertAllClose(history.history["loss_weight"], ramp_values(range(1, 7)), atol=1e-6)
        # The model's own steps are back; evaluate needs the scheduler too.
        for name in ("train_step", "test_step"):
            self.assertIsNone(_keras_internals.installed_step(model, name))
        found = model.evaluate(X, Y, verbose=0, callbacks=[LossWeightScheduler()])
        self.assertAllClose(found, 0.5 * (TARGET - expected_biases[-1]), atol=1e-5)
        with self.assertRaisesRegex(RuntimeError, "LossWeightScheduler"):
            model.evaluate(X, Y, verbose=0)

    def test_every_step_of_a_multi_step_execution_has_its_own_weight(self):
        # Four steps per epoch run two at a time; the weight changes inside
        # a pair (steps 0 -> 1) and at every pair.
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            [0, 2, 5], [3.0, 2.0, 1.5, 1.0])
        weights = [3.0, 2.0, 2.0, 1.5, 1.5, 1.5, 1.0, 1.0]
        model = bias_model(schedule, lr=0.25, steps_per_execution=2)
        x, y = np.zeros((16, 1), "float32"), np.full((16, 1), TARGET, "float32")
        biases = Biases()
        if keras.backend.backend() == "torch":
            # Keras' torch trainer runs one step per execution, and says so.
            with self.assertRaisesRegex(ValueError, "steps_per_execution` must be 1"):
                model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                          callbacks=[LossWeightScheduler(), biases])
            return
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                  callbacks=[LossWeightScheduler(), biases])
        _, expected_biases = expected_run(weights, lr=0.25)
        self.assertAllClose(biases.seen, [expected_biases[3], expected_biases[7]], atol=1e-5)

    def test_a_saved_model_continues_its_schedule(self):
        _, whole = expected_run(ramp_values(range(6)))
        model = bias_model(ramp())
        model.fit(X, Y, batch_size=4, epochs=3, verbose=0, callbacks=[LossWeightScheduler()])
        path = os.path.join(self.get_temp_dir(), "scheduled.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        self.assertEqual(int(ops.convert_to_numpy(loaded.optimizer.iterations)), 3)
        self.assertIsInstance(loaded.loss, ScheduledLoss)
        biases = Biases()
        history = loaded.fit(X, Y, batch_size=4, epochs=3, verbose=0,
                             callbacks=[LossWeightScheduler(), biases])
        losses, _ = expected_run(ramp_values(range(6)))
        self.assertAllClose(history.history["loss"], losses[3:], atol=1e-5)
        self.assertAllClose(biases.seen, whole[3:], atol=1e-5)

    def test_an_interrupted_staged_run_resumes_its_schedule(self):
        class Interrupt(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 3:
                    raise KeyboardInterrupt

        def run(extra, checkpoint_dir):
            model = bias_model(ramp())
            results = fit_stages(model, [Stage("joint", epochs=5, callbacks=extra)], (X, Y),
                                 batch_size=4, seed=1, callbacks=[LossWeightScheduler()],
                                 checkpoint_dir=checkpoint_dir)
            return model, results

        whole, expected = run([], None)
        ckpt = os.path.join(self.get_temp_dir(), "ckpt")
        with self.assertRaises(KeyboardInterrupt):
            run([Interrupt()], ckpt)
        resumed, results = run([], ckpt)
        losses, biases = expected_run(ramp_values(range(5)))
        self.assertAllClose([r["loss"] for r in expected[0].history], losses, atol=1e-5)
        self.assertAllClose([r["loss"] for r in results[0].history], losses, atol=1e-5)
        self.assertAllClose(bias(resumed), biases[-1], atol=1e-5)
        self.assertAllClose(bias(whole), biases[-1], atol=1e-5)

    def test_it_wraps_a_step_another_callback_installed_and_puts_it_back(self):
        model = bias_model(ramp())
        calls = []

        def counted(*args):
            calls.append(1)
            return type(model).train_step(model, *args)

        _keras_internals.install_train_step(model, counted)
        history = model.fit(X, Y, batch_size=4, epochs=2, verbose=0,
                            callbacks=[LossWeightScheduler()])
        self.assertTrue(calls)
        self.assertAllClose(history.history["loss"], expected_run(ramp_values(range(2)))[0],
                            atol=1e-5)
        self.assertIs(_keras_internals.installed_step(model, "train_step"), counted)
        _keras_internals.restore_train_step(model)

    def test_the_scheduler_is_registered_with_an_empty_config(self):
        callback = LossWeightScheduler()
        serialized = keras.saving.serialize_keras_object(callback)
        self.assertEqual(serialized["registered_name"], "deepkit>LossWeightScheduler")
        self.assertEqual(LossWeightScheduler.from_config(callback.get_config()).get_config(), {})

"""Tests for deepkit.training.stages: Stage, fit_stages and their resume contract."""

import keras
import numpy as np
from keras import ops

from deepkit.callbacks import AnnealOnPlateau
from deepkit.datasets.epoch_arrays import EpochShuffledArrays
from deepkit.callbacks import ExactBackupAndRestore
from deepkit.testing import TestCase
from deepkit.training import (Stage, Trainer, TrainingDiverged, fit_stages,
                              previous_train_loss)
from deepkit.training.stages import best_train_loss, stage_seed

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 6)).astype("float32")
Y = (X[:, 0] + X[:, 1] > 0).astype("int32")
XV = RNG.normal(size=(32, 6)).astype("float32")
YV = (XV[:, 0] + XV[:, 1] > 0).astype("int32")


def model(dropout=0.0, lr=0.1):
    keras.utils.set_random_seed(3)
    layers = [keras.Input((6,)), keras.layers.Dense(8, activation="tanh")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, seed=5))
    net = keras.Sequential(layers + [keras.layers.Dense(2, activation="softmax")])
    net.compile(keras.optimizers.SGD(lr), "sparse_categorical_crossentropy",
                metrics=["accuracy"])
    return net


def weights(net):
    return [np.asarray(w) for w in net.get_weights()]


class Interrupt(keras.callbacks.Callback):
    """Raise once at the start of epoch `epoch` (a stand-in for a kill)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def two_stages(extra=()):
    return [
        Stage("first", epochs=3, callbacks=[*extra]),
        Stage("second", epochs=2, merge_validation=True,
              compile={"optimizer": keras.optimizers.SGD(0.05),
                       "loss": "sparse_categorical_crossentropy"}),
    ]


class FitStagesTest(TestCase):
    def test_one_stage_is_one_fit_on_the_epoch_shuffled_data(self):
        staged = model(dropout=0.3)
        results = fit_stages(staged, [Stage("only", epochs=3)], (X, Y), batch_size=16, seed=4)
        by_hand = model(dropout=0.3)
        data = EpochShuffledArrays((X, Y), 16, stage_seed(4, 0))
        order = ExactBackupAndRestore(self.get_temp_dir() + "/unused", seed=stage_seed(4, 0),
                                      data=data)
        order.on_train_begin = lambda logs=None: None
        order.on_epoch_end = lambda epoch, logs=None: None
        order.on_train_end = lambda logs=None: None
        history = by_hand.fit(data, epochs=3, shuffle=False, verbose=0, callbacks=[order])
        for a, b in zip(weights(staged), weights(by_hand)):
            self.assertAllClose(a, b, atol=1e-6)
        self.assertAllClose([r["loss"] for r in results[0].history],
                            history.history["loss"], atol=1e-6)
        self.assertEqual(results[0].epochs, 3)
        self.assertEqual(stage_seed(4, 2), 4 + 2 * 7919)

    def test_the_second_stage_continues_on_train_plus_valid_with_its_own_optimizer(self):
        net = model()
        results = fit_stages(net, two_stages(), (X, Y), validation_data=(XV, YV),
                             batch_size=16, seed=1)
        self.assertEqual([r.name for r in results], ["first", "second"])
        self.assertEqual([r.epochs for r in results], [3, 2])
        self.assertAllClose(float(ops.convert_to_numpy(net.optimizer.learning_rate)), 0.05)
        # Stage 2 steps over 96 + 32 examples: 8 batches of 16 per epoch.
        self.assertEqual(int(net.optimizer.iterations), 8 * 2)
        self.assertEqual(results[0].summary()["stage"], "first")

    def test_checkpointed_numbers_equal_uncheckpointed_ones_with_dropout(self):
        plain = model(dropout=0.5)
        fit_stages(plain, two_stages(), (X, Y), validation_data=(XV, YV), batch_size=16, seed=2)
        saved = model(dropout=0.5)
        fit_stages(saved, two_stages(), (X, Y), validation_data=(XV, YV), batch_size=16, seed=2,
                   checkpoint_dir=self.get_temp_dir() + "/ckpt")
        for a, b in zip(weights(plain), weights(saved)):
            self.assertAllClose(a, b, atol=1e-6)

    def test_an_interrupted_run_resumes_to_the_uninterrupted_result(self):
        whole = model(dropout=0.5)
        expected = fit_stages(whole, two_stages(), (X, Y), validation_data=(XV, YV),
                              batch_size=16, seed=2)
        ckpt = self.get_temp_dir() + "/resume"
        messages = []
        for stop_at in (2, None):  # killed in epoch 3 of stage 1, then run again
            net = model(dropout=0.5)
            extra = [Interrupt(stop_at)] if stop_at is not None else []
            try:
                results = fit_stages(net, two_stages(extra), (X, Y), validation_data=(XV, YV),
                                     batch_size=16, seed=2, checkpoint_dir=ckpt,
                                     log=messages.append)
            except KeyboardInterrupt:
                continue
        for a, b in zip(weights(net), weights(whole)):
            self.assertAllClose(a, b, atol=1e-6)
        # Stage 2 started from its own epoch 0 although stage 1 was restored
        # at epoch 2 (Keras keeps the restored epoch on the model).
        self.assertEqual([r.epochs for r in results], [3, 2])
        self.assertAllClose([r["loss"] for r in results[1].history],
                            [r["loss"] for r in expected[1].history], atol=1e-6)
        # Once more: every stage is finished, nothing trains.
        again = model(dropout=0.5)
        results = fit_stages(again, two_stages(), (X, Y), validation_data=(XV, YV),
                             batch_size=16, seed=2, checkpoint_dir=ckpt, log=messages.append)
        self.assertEqual([r.resumed for r in results], [True, True])
        self.assertIn("stage 1 (second) already finished; weights loaded", messages)
        for a, b in zip(weights(again), weights(whole)):
            self.assertAllClose(a, b, atol=1e-6)

    def test_until_the_previous_stages_best_training_loss(self):
        net = model()
        stages = [Stage("first", epochs=4, callbacks=[keras.callbacks.EarlyStopping(
                      "val_accuracy", mode="max", patience=10)]),
                  Stage("second", epochs=30, merge_validation=True,
                        until=("val_loss", previous_train_loss))]
        results = fit_stages(net, stages, (X, Y), validation_data=(XV, YV), batch_size=16,
                             seed=1)
        first = results[0].history
        accuracy = [float(r["val_accuracy"]) for r in first]
        self.assertEqual(results[0].best_train_loss,
                         float(first[int(np.argmax(accuracy))]["loss"]))
        second = [float(r["val_loss"]) for r in results[1].history]
        target = results[0].best_train_loss
        if results[1].epochs < 30:  # it stopped at the first epoch that reached the target
            self.assertLessEqual(second[-1], target)
        self.assertTrue(all(v > target for v in second[:-1]))

    def test_best_train_loss_follows_the_stopping_callbacks_direction(self):
        rows = [{"loss": "0.9", "val_accuracy": "0.5", "val_loss": "0.7"},
                {"loss": "0.6", "val_accuracy": "0.8", "val_loss": "0.9"},
                {"loss": "0.4", "val_accuracy": "0.7", "val_loss": "0.5"}]
        stop = keras.callbacks.EarlyStopping("val_accuracy", mode="max")
        self.assertEqual(best_train_loss(rows, [stop]), 0.6)
        anneal = AnnealOnPlateau("val_loss", mode="min")
        self.assertEqual(best_train_loss(rows, [anneal]), 0.4)
        self.assertEqual(best_train_loss(rows, []), 0.4)  # the last epoch
        self.assertIsNone(best_train_loss([], [stop]))
        auto = keras.callbacks.EarlyStopping("val_loss")  # mode auto, loss: min
        self.assertEqual(best_train_loss(rows, [auto]), 0.4)
        unknown = keras.callbacks.EarlyStopping("val_accuracy")
        with self.assertRaisesRegex(ValueError, "give mode='min' or mode='max'"):
            best_train_loss(rows, [unknown])
        with self.assertRaisesRegex(ValueError, "needs a stage before this one"):
            previous_train_loss([])

    def test_a_nan_stops_with_the_last_good_checkpoint_named(self):
        class Poison(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 1:  # the weights diverge in the second epoch
                    kernel = self.model.layers[0].kernel
                    kernel.assign(np.full(kernel.shape, np.nan, "float32"))

        net = model()
        ckpt = self.get_temp_dir() + "/nan"
        with self.assertRaises(TrainingDiverged) as caught:
            fit_stages(net, [Stage("blowup", epochs=3, callbacks=[Poison()])], (X, Y),
                       batch_size=16, seed=1, checkpoint_dir=ckpt)
        error = caught.exception
        self.assertEqual((error.stage, error.index, error.epoch, error.batch),
                         ("blowup", 0, 1, 0))
        self.assertIn("the loss became NaN at epoch 2, batch 1 of stage 0 (blowup)", str(error))
        self.assertEqual(error.checkpoint_epoch, 1)  # the end of the first epoch is kept

    def test_a_trainer_receives_the_stage(self):
        class CountingTrainer(Trainer):
            def __init__(self):
                self.calls = []

            def fit(self, model, x=None, y=None, **kwargs):
                self.calls.append((x, kwargs["epochs"]))
                return model.fit(x, **kwargs)

        trainer = CountingTrainer()
        net = model()
        fit_stages(net, [Stage("custom", epochs=2, trainer=trainer)], (X, Y), batch_size=16)
        self.assertLen(trainer.calls, 1)
        self.assertIsInstance(trainer.calls[0][0], EpochShuffledArrays)
        self.assertEqual(trainer.calls[0][1], 2)
        with self.assertRaises(TypeError):
            Trainer()  # abstract: fit is required

    def test_bad_stages_are_refused_with_their_name(self):
        with self.assertRaisesRegex(ValueError, "Stage 'x': epochs must be a positive integer"):
            Stage("x", epochs=0)
        with self.assertRaisesRegex(ValueError, "until must be \\(monitor, target\\)"):
            Stage("x", until="val_loss")
        with self.assertRaisesRegex(ValueError, "trainer must have a fit"):
            Stage("x", trainer=object())
        net = model()
        with self.assertRaisesRegex(ValueError, "merge_validation needs validation_data"):
            fit_stages(net, [Stage("m", merge_validation=True)], (X, Y))
        with self.assertRaisesRegex(ValueError, "stage names must differ"):
            fit_stages(net, [Stage("a"), Stage("a")], (X, Y))
        with self.assertRaisesRegex(ValueError, "non-empty list of Stage"):
            fit_stages(net, [], (X, Y))

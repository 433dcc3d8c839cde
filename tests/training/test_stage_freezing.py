"""Stages that freeze parts of a model, train on some outputs only, and
anneal loss weights: guided pre-training (hints, then the task with the
lower part frozen, then everything) and joint training, with `fit_stages`."""

import keras
import numpy as np
from keras import ops

from deepkit.datasets import pentomino
from deepkit.datasets.epoch_arrays import EpochShuffledArrays
from deepkit.models import StructuredMLP
from deepkit.testing import TestCase
from deepkit.training import LinearRamp, ScheduledLoss, Stage, StageError, fit_stages

DATA = pentomino.generate(96, seed=3)
X = DATA.images.astype("float32")
Y = {"hints": DATA.hints, "label": DATA.labels}
VALID = pentomino.generate(32, seed=3, split="valid")
XV, YV = VALID.images.astype("float32"), {"hints": VALID.hints, "label": VALID.labels}
HINTS = "sparse_categorical_crossentropy"


def smlp():
    net = StructuredMLP(p1nn_units=(8,), p2nn_units=(4,), standardize="batch",
                        kernel_regularizer=keras.regularizers.L2(1e-3), seed=2)
    net(X[:2])
    net.compile(keras.optimizers.SGD(0.5, momentum=0.5), loss={"hints": HINTS, "label": None})
    return net


def snapshot(layer):
    return [np.array(w) for w in layer.get_weights()]


def label_compile(lr=0.1):
    return {"optimizer": keras.optimizers.SGD(lr), "loss": {"hints": None,
                                                             "label": "binary_crossentropy"},
            "metrics": {"label": ["accuracy"]}}


class Watch(keras.callbacks.Callback):
    """The weights of P1NN and P2NN after each epoch, and what trained."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        self.rows.append((snapshot(model.p1nn), snapshot(model.p2nn),
                          len(model.trainable_weights)))


class StageFreezingTest(TestCase):
    def test_guided_pretraining_freezes_each_part_bit_for_bit(self):
        net = smlp()
        p1nn0, p2nn0 = snapshot(net.p1nn), snapshot(net.p2nn)
        watch = Watch()
        stages = [Stage("hints", epochs=2, trainable=["p1nn"]),
                  Stage("label", epochs=2, frozen=["p1nn"], compile=label_compile()),
                  Stage("all", epochs=1, compile=label_compile(0.01))]
        results = fit_stages(net, stages, (X, Y), batch_size=32, seed=1, observers=[watch])
        # Stage 1: P2NN (with an L2 penalty that would shrink it) unchanged.
        for row in watch.rows[:2]:
            for a, b in zip(row[1], p2nn0):
                np.testing.assert_array_equal(a, b)
        self.assertFalse(all(np.array_equal(a, b) for a, b in zip(watch.rows[1][0], p1nn0)))
        # Stage 2: P1NN as stage 1 left it, P2NN trains.
        for row in watch.rows[2:4]:
            for a, b in zip(row[0], watch.rows[1][0]):
                np.testing.assert_array_equal(a, b)
        self.assertFalse(all(np.array_equal(a, b) for a, b in zip(watch.rows[3][1], p2nn0)))
        # Kernels and biases: P1NN 2 layers, P2NN 2 layers; all 8 train in stage 3.
        self.assertEqual([row[2] for row in watch.rows], [4, 4, 4, 4, 8])
        self.assertFalse(all(np.array_equal(a, b)
                             for a, b in zip(watch.rows[4][0], watch.rows[3][0])))
        # Stage 1 logs the hints loss only; stage 2 the label's accuracy.
        self.assertIn("label_accuracy", results[1].history[0])
        # The last stage trained everything, as before fit_stages.
        self.assertEqual(len(net.trainable_weights), 8)

    def test_a_stage_that_changes_what_trains_gets_a_fresh_optimizer(self):
        net = smlp()
        fit_stages(net, [Stage("hints", epochs=1, trainable=["p1nn"]),
                         Stage("p2nn", epochs=1, trainable=["p2nn"])],
                   (X, Y), batch_size=32, seed=1)
        # Recompiled from the model's compile configuration: same SGD settings,
        # its step count from 0 (3 batches in the second stage).
        self.assertEqual(int(ops.convert_to_numpy(net.optimizer.iterations)), 3)
        self.assertAllClose(float(ops.convert_to_numpy(net.optimizer.momentum)), 0.5)

    def test_layers_are_found_by_name_and_by_path(self):
        net = smlp()
        before = snapshot(net.p1nn.get_layer("p1nn_hidden_0"))
        fit_stages(net, [Stage("out", epochs=1, trainable=["p1nn/p1nn_output"])],
                   (X, Y), batch_size=32, seed=1)
        for a, b in zip(snapshot(net.p1nn.get_layer("p1nn_hidden_0")), before):
            np.testing.assert_array_equal(a, b)
        with self.assertRaisesRegex(StageError, r"Stage 'x': trainable names 'p3nn', which is "
                                                r"not a layer of .*its layers: .*p1nn"):
            fit_stages(smlp(), [Stage("x", epochs=1, trainable=["p3nn"])], (X, Y))
        with self.assertRaisesRegex(StageError, "give trainable or frozen, not both"):
            Stage("x", trainable=["p1nn"], frozen=["p2nn"])
        with self.assertRaisesRegex(StageError, "non-empty list of layer names"):
            Stage("x", trainable=[])

    def test_an_annealed_hint_weight_follows_its_schedule_during_a_stage(self):
        net = smlp()
        ramp = LinearRamp(1.0, 0.2, 1, 5)
        joint = {"optimizer": keras.optimizers.SGD(0.1),
                 "loss": {"hints": ScheduledLoss(HINTS, ramp), "label": "binary_crossentropy"}}
        # The second stage's optimizer starts at step 0: its ramp is its own.
        results = fit_stages(net, [Stage("hints", epochs=1, trainable=["p1nn"]),
                                   Stage("joint", epochs=3, compile=joint)],
                             (X, Y), batch_size=32, seed=1)
        logged = [row["hints_loss_weight"] for row in results[1].history]
        # Logged at each epoch's end: steps 3, 6, 9 (3 batches an epoch).
        expected = [float(ops.convert_to_numpy(ramp(step))) for step in (3, 6, 9)]
        self.assertAllClose(logged, expected)
        self.assertAllClose(expected, [1.0 - 0.8 * 2 / 4, 0.2, 0.2])

    def test_dict_targets_are_shuffled_together_and_merged_with_validation(self):
        data = EpochShuffledArrays((X, Y), 10, seed=4)
        data.set_epoch(1)
        x, y = data[0]
        rows = data.order[:10]
        np.testing.assert_array_equal(x, X[rows])
        np.testing.assert_array_equal(y["hints"], DATA.hints[rows])
        np.testing.assert_array_equal(y["label"], DATA.labels[rows])
        net = smlp()
        results = fit_stages(net, [Stage("all", epochs=1, merge_validation=True)], (X, Y),
                             validation_data=(XV, YV), batch_size=32, seed=1)
        self.assertEqual(int(ops.convert_to_numpy(net.optimizer.iterations)), 4)  # 128 / 32
        self.assertIn("val_loss", results[0].history[0])
        with self.assertRaisesRegex(ValueError, "differ in length"):
            EpochShuffledArrays((X, {"hints": DATA.hints, "label": DATA.labels[:5]}), 10, 0)

"""Tests for deepkit.training.alternation: Collobert et al.'s alternating algorithm."""

import os

import keras
import numpy as np
from keras import ops

from deepkit.models import HardParallelMixture
from deepkit.training import Alternation, Stage, balanced_assignment, fit_alternating, fit_stages
from deepkit.training.alternation import _ExpertPhase
from deepkit.testing import TestCase, weight_gradients

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 2, 3)).astype("float32")
Y = ((X[:, 0, 0] > 0).astype("int32") + 2 * (X[:, 1, 1] > 0)).astype("int32")


def small(**kwargs):
    config = dict(num_experts=4, expert_units=5, num_classes=4, gater_units=3, seed=1)
    config.update(kwargs)
    return HardParallelMixture(**config)


def compiled(**kwargs):
    model = small(**kwargs)
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def numpy_expert_logits(model, m, x):
    w1, b1, w2, b2 = (ops.convert_to_numpy(v) for v in model.expert_variables)
    h = np.maximum(x.reshape(len(x), -1) @ w1[m] + b1[m], 0.0)
    return h @ w2[m] + b2[m]


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class BalancedAssignmentTest(TestCase):
    def test_hand_worked_example(self):
        # Everyone prefers expert 0; capacity 2 sends the third and fourth
        # examples (in assignment order) to their second choices.
        weights = np.array([[0.9, 0.1, 0.0],
                            [0.6, 0.3, 0.1],
                            [0.7, 0.1, 0.2],
                            [0.8, 0.15, 0.05]])
        got = balanced_assignment(weights, capacity=2, order=[0, 1, 2, 3])
        self.assertAllEqual(got, [0, 0, 2, 1])
        # Another order: example 3 and 2 come first and keep expert 0.
        got = balanced_assignment(weights, capacity=2, order=[3, 2, 1, 0])
        self.assertAllEqual(got, [1, 1, 0, 0])

    def test_capacity_is_never_exceeded(self):
        weights = RNG.random((101, 5))
        weights[:, 2] += 10.0  # a popular expert
        got = balanced_assignment(weights, capacity=21, order=RNG.permutation(101))
        counts = np.bincount(got, minlength=5)
        self.assertLessEqual(counts.max(), 21)
        self.assertEqual(counts.sum(), 101)
        self.assertEqual(counts[2], 21)

    def test_too_small_a_capacity_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "capacity 2 x 3 experts holds fewer than the 7"):
            balanced_assignment(np.ones((7, 3)), capacity=2, order=range(7))




class AlternationTest(TestCase):
    def test_expert_phase_trains_each_expert_on_its_own_group_only(self):
        model = small()
        model(X)
        grouped = X.reshape(4, 16, -1)[None]  # expert m gets the m-th 16 examples
        labels = Y.reshape(4, 16)[None]
        phase = _ExpertPhase(model)
        scale = 4.0

        def loss_fn(out):
            # On [M*b, C] rows, as in fit's expert phase (Keras 3.15's torch
            # sparse cross-entropy fails in backward on 4-D outputs).
            rows = ops.reshape(out, (-1, ops.shape(out)[-1]))
            return scale * ops.mean(
                keras.losses.sparse_categorical_crossentropy(labels.reshape(-1), rows)
            )

        for layer in model.gater:  # as in fit's expert phase
            layer.trainable = False
        grads = weight_gradients(phase, grouped, loss_fn)
        names = [v.path for v in phase.trainable_variables]
        self.assertLen(names, 4)
        kernel_grad = grads[names.index(model.experts.expert_kernel_2.path)]
        for m in range(4):
            # Each expert's gradient is that of its own mean loss on its group.
            x = X.reshape(4, 16, -1)[m]
            h = np.maximum(x @ ops.convert_to_numpy(model.experts.expert_kernel_1)[m]
                           + ops.convert_to_numpy(model.experts.expert_bias_1)[m], 0.0)
            p = softmax(numpy_expert_logits(model, m, x))
            p[np.arange(16), labels[0, m]] -= 1.0
            self.assertAllClose(kernel_grad[m], h.T @ p / 16, atol=1e-5)

    def test_gater_phase_leaves_the_experts_and_expert_phase_the_gater(self):
        model = compiled()
        model(X)
        trainer = Alternation(seed=1)
        experts_before = [ops.convert_to_numpy(v) for v in model.expert_variables]
        gater_before = [ops.convert_to_numpy(v) for layer in model.gater for v in layer.weights]
        trainer.train_gater(model, X, Y, 8, np.random.default_rng(0))
        for before, v in zip(experts_before, model.expert_variables):
            self.assertAllEqual(ops.convert_to_numpy(v), before)
        gater_mid = [ops.convert_to_numpy(v) for layer in model.gater for v in layer.weights]
        self.assertTrue(any(np.abs(a - b).max() > 0 for a, b in zip(gater_mid, gater_before)))
        assignment = trainer.assignment(model, X.reshape(64, -1), 0)
        trainer.train_experts(model, X, Y, assignment, 4, np.random.default_rng(1))
        for before, v in zip(gater_mid, [v for layer in model.gater for v in layer.weights]):
            self.assertAllEqual(ops.convert_to_numpy(v), before)
        self.assertTrue(any(
            np.abs(ops.convert_to_numpy(v) - b).max() > 0
            for v, b in zip(model.expert_variables, experts_before)
        ))
        # Freezing was temporary.
        self.assertTrue(all(v.trainable for v in model.trainable_variables))
        self.assertLen(model.trainable_variables, 4 + 2 * len(model.gater))

    def test_an_expert_without_examples_sits_out_the_round(self):
        model = compiled()
        model(X)
        before = [ops.convert_to_numpy(v) for v in model.expert_variables]
        assignment = np.arange(64) % 3  # expert 3 gets nothing
        Alternation().train_experts(model, X, Y, assignment, 4, np.random.default_rng(0))
        after = [ops.convert_to_numpy(v) for v in model.expert_variables]
        for b, a in zip(before, after):
            self.assertAllEqual(a[3], b[3])
            self.assertGreater(np.abs(a[:3] - b[:3]).max(), 0)

    def test_round_zero_is_an_even_random_split_and_later_rounds_respect_capacity(self):
        model = small()
        model(X)
        trainer = Alternation(capacity_slack=0.25, seed=1)
        first = trainer.assignment(model, X, 0)
        self.assertAllEqual(np.bincount(first, minlength=4), [16, 16, 16, 16])
        self.assertAllEqual(first, trainer.assignment(model, X, 0))  # from (seed, round)
        later = trainer.assignment(model, X, 1)
        self.assertEqual(trainer.capacity(model, 64), 20)
        self.assertLessEqual(np.bincount(later, minlength=4).max(), 20)
        weights = ops.convert_to_numpy(model.gater_weights(X))
        order = np.random.default_rng([1, 1]).permutation(64)
        self.assertAllEqual(later, balanced_assignment(weights, 20, order))

    def test_fit_runs_rounds_and_logs(self):
        model = compiled()
        trainer = Alternation(expert_epochs=2, seed=1)
        history = trainer.fit(model, X, Y, batch_size=4, epochs=3, validation_data=(X, Y),
                              verbose=0)
        logs = history.history
        for key in ("loss", "accuracy", "expert_loss", "reassigned", "largest_subset",
                    "val_loss", "val_accuracy"):
            self.assertLen(logs[key], 3)
        self.assertEqual(logs["reassigned"][0], 1.0)
        self.assertLessEqual(max(logs["largest_subset"][1:]), trainer.capacity(model, 64) * 4 / 64)
        self.assertLess(logs["loss"][-1], logs["loss"][0])

    def test_early_stopping_ends_the_rounds(self):
        model = compiled()
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=10.0)
        history = fit_alternating(model, X, Y, seed=1, batch_size=4, epochs=5,
                                  validation_data=(X, Y), callbacks=[stop], verbose=0)
        self.assertLen(history.history["loss"], 2)

    def test_resuming_at_a_round_continues_exactly(self):
        whole = compiled()
        logs = Alternation(seed=1).fit(whole, X, Y, batch_size=4, epochs=3, verbose=0).history
        first = compiled()
        Alternation(seed=1).fit(first, X, Y, batch_size=4, epochs=2, verbose=0)
        path = os.path.join(self.get_temp_dir(), "round2.weights.h5")
        first.save_weights(path)
        resumed = compiled()
        resumed(X)
        resumed.load_weights(path)  # weights and the last assignment
        self.assertAllEqual(resumed.last_assignment, first.last_assignment)
        resumed_logs = Alternation(seed=1).fit(resumed, X, Y, batch_size=4, epochs=3,
                                              initial_epoch=2, verbose=0).history
        for a, b in zip(resumed.get_weights(), whole.get_weights()):
            self.assertAllClose(a, b, atol=1e-5)
        self.assertAllClose(resumed_logs["reassigned"][0], logs["reassigned"][2])
        self.assertAllClose(resumed_logs["loss"][0], logs["loss"][2], atol=1e-5)

    def test_fit_accepts_a_dataset_holding_arrays(self):
        class Holder:
            arrays = (X, Y)
            batch_size = 4

        model = compiled()
        history = Alternation().fit(model, Holder(), epochs=1, verbose=0)
        self.assertLen(history.history["loss"], 1)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "expert_epochs must be an integer >= 1"):
            Alternation(expert_epochs=0)
        with self.assertRaisesRegex(ValueError, "capacity_slack must be >= 0"):
            Alternation(capacity_slack=-0.1)
        trainer = Alternation()
        with self.assertRaisesRegex(ValueError, "compile the HardParallelMixture"):
            trainer.fit(small(), X, Y, epochs=1, verbose=0)
        model = compiled()
        with self.assertRaisesRegex(ValueError, "does not take \\['steps_per_epoch'\\]"):
            trainer.fit(model, X, Y, epochs=1, steps_per_epoch=3)
        with self.assertRaisesRegex(ValueError, "3 training examples cannot be split among 4"):
            trainer.fit(model, X[:3], Y[:3], epochs=1, verbose=0)
        with self.assertRaisesRegex(ValueError, "needs the training set as arrays"):
            trainer.fit(model, X, epochs=1, verbose=0)
        with self.assertRaisesRegex(ValueError, "does not take sample weights; got 3 arrays"):
            trainer.fit(model, (X, Y, np.ones(64)), epochs=1, verbose=0)
        dense = keras.Sequential([keras.Input((2, 3)), keras.layers.Flatten(),
                                  keras.layers.Dense(4)])
        dense.compile("sgd", "mse")
        with self.assertRaisesRegex(ValueError, "Alternation trains a HardParallelMixture"):
            trainer.fit(dense, X, Y, epochs=1, verbose=0)

    def test_config_round_trip(self):
        trainer = Alternation(expert_epochs=3, gater_epochs=2, capacity_slack=0.2,
                              gater_learning_rate=0.05, seed=7)
        config = keras.saving.serialize_keras_object(trainer)
        again = keras.saving.deserialize_keras_object(config)
        self.assertIsInstance(again, Alternation)
        self.assertEqual(again.get_config(), trainer.get_config())

    def test_a_stage_of_fit_stages_can_be_trained_by_alternation(self):
        # The same rounds through fit_stages (its data, order and callbacks)
        # as through Alternation.fit on the arrays.
        direct = compiled()
        logs = Alternation(seed=1).fit(direct, X, Y, batch_size=4, epochs=2, verbose=0).history
        staged = compiled()
        results = fit_stages(staged, [Stage("rounds", epochs=2, trainer=Alternation(seed=1))],
                             (X, Y), batch_size=4, seed=3)
        self.assertEqual(results[0].epochs, 2)
        self.assertAllClose([r["loss"] for r in results[0].history], logs["loss"], atol=1e-6)
        for a, b in zip(staged.get_weights(), direct.get_weights()):
            self.assertAllClose(a, b, atol=1e-6)

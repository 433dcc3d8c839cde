"""Tests for deepkit.metrics.tasks: the fraction of sequences wrong on answers
counted by hand, weights and masks, exact means over batches, serialization,
and use in compile/evaluate on the pathological data sets."""

import json

import keras
import numpy as np
import pytest

from deepkit import datasets
from deepkit.datasets import pathological
from deepkit.metrics import SequenceErrorRate, sequence_errors, task_solved
from deepkit.metrics import tasks
from deepkit.testing import TestCase

# Class scores whose argmax is 0, 1, 1 (three sequences, 3 classes).
SCORES = np.array([[2.0, 0.1, 0.3], [0.0, 1.0, 0.5], [0.2, 0.9, 0.1]], "float32")


def _rate(metric, *batches):
    metric.reset_state()
    for batch in batches:
        metric.update_state(*batch)
    return float(keras.ops.convert_to_numpy(metric.result()))


class SequenceErrorRateTest(TestCase):
    def test_regression_wrong_when_the_squared_error_exceeds_the_threshold(self):
        y_true = np.array([[0.5], [0.5], [0.1], [0.3]], "float32")
        y_pred = np.array([[0.6], [0.8], [0.1], [0.0]], "float32")
        # Squared errors 0.01, 0.09, 0, 0.09: two of four above 0.04.
        self.assertAlmostEqual(_rate(SequenceErrorRate("regression"), (y_true, y_pred)), 0.5)
        # Above 0.005, 0.01 is wrong too; the targets may come as [N].
        metric = SequenceErrorRate("regression", threshold=0.005)
        self.assertAlmostEqual(_rate(metric, (y_true[:, 0], y_pred)), 0.75)
        wrong, weight = sequence_errors(y_true, y_pred, "regression")
        self.assertAllEqual(wrong, [0.0, 1.0, 0.0, 1.0])
        self.assertAllEqual(weight, [1.0, 1.0, 1.0, 1.0])

    def test_classification_wrong_when_the_argmax_is_not_the_target(self):
        labels = np.array([0, 2, 1], "int32")  # the second is wrong
        metric = SequenceErrorRate()
        self.assertAlmostEqual(_rate(metric, (labels, SCORES)), 1 / 3, places=6)
        self.assertAlmostEqual(_rate(metric, (labels[:, None], SCORES)), 1 / 3, places=6)
        one_hot = np.eye(3, dtype="float32")[labels]
        self.assertAlmostEqual(_rate(metric, (one_hot, SCORES)), 1 / 3, places=6)
        # Logits or probabilities: only the argmax matters.
        self.assertAlmostEqual(_rate(metric, (labels, keras.ops.softmax(SCORES))), 1 / 3,
                               places=6)

    def test_per_step_wrong_when_any_step_is_wrong(self):
        # Two sequences of 4 steps, 3 classes (2 = blank).
        labels = np.array([[2, 2, 0, 1], [2, 2, 1, 1]], "int32")
        predicted = np.array([[2, 2, 0, 1], [2, 2, 1, 0]])
        scores = np.eye(3, dtype="float32")[predicted]
        metric = SequenceErrorRate("noiseless_memorization")
        self.assertAlmostEqual(_rate(metric, (labels, scores)), 0.5)
        # A step weight of 0 (padding) is not checked.
        mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], "float32")
        self.assertAlmostEqual(_rate(metric, (labels, scores, mask)), 0.0)
        # A sequence of padding only does not count.
        mask = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], "float32")
        self.assertAlmostEqual(_rate(metric, (labels, scores, mask)), 0.0)
        _, weight = sequence_errors(labels, scores, sample_weight=mask)
        self.assertAllEqual(weight, [1.0, 0.0])

    def test_the_rate_is_exact_over_batches_and_weights(self):
        metric = SequenceErrorRate()
        labels = np.array([0, 2, 1], "int32")
        # 1 of 3 wrong, then 2 of 5 wrong: 3 / 8, not the mean of 1/3 and 2/5.
        second = (np.array([1, 1, 0, 0, 2], "int32"),
                  np.eye(3, dtype="float32")[[1, 0, 0, 1, 2]])
        self.assertAlmostEqual(_rate(metric, (labels, SCORES), second), 3 / 8, places=6)
        # Per-sequence weights 1, 3, 0: (0 * 1 + 1 * 3) / 4.
        weights = np.array([1.0, 3.0, 0.0], "float32")
        self.assertAlmostEqual(_rate(metric, (labels, SCORES, weights)), 0.75, places=6)
        metric.reset_state()
        self.assertEqual(float(metric.result()), 0.0)

    def test_kinds_task_names_and_refusals(self):
        self.assertEqual(SequenceErrorRate("adding").kind, "regression")
        self.assertEqual(SequenceErrorRate("temporal_order_3bit").kind, "classification")
        for name, spec in pathological.TASKS.items():
            self.assertEqual(tasks.TASK_KINDS[name], spec.kind)
        with self.assertRaisesRegex(ValueError, "kind must be one of"):
            SequenceErrorRate("addition")
        with self.assertRaisesRegex(ValueError, "threshold must be >= 0"):
            SequenceErrorRate("regression", threshold=-1)
        with self.assertRaisesRegex(ValueError, "kind must be one of"):
            sequence_errors(SCORES, SCORES, kind="ranking")

    def test_config_round_trip(self):
        metric = SequenceErrorRate("regression", threshold=0.01, name="add_error")
        serialized = keras.saving.serialize_keras_object(metric)
        self.assertEqual(serialized["registered_name"], "deepkit>SequenceErrorRate")
        revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
        self.assertIsInstance(revived, SequenceErrorRate)
        self.assertEqual(revived.get_config(), metric.get_config())
        self.assertEqual((revived.kind, revived.threshold, revived.name),
                         ("regression", 0.01, "add_error"))
        batch = (np.array([[0.0], [0.0]], "float32"), np.array([[0.05], [0.2]], "float32"))
        self.assertAlmostEqual(_rate(revived, batch), _rate(metric, batch))
        self.assertAlmostEqual(_rate(revived, batch), 0.5)

    def test_compile_and_evaluate_on_the_temporal_order_task(self):
        x, y = datasets.load("temporal_order", "test", length=20, max_length=30, size=50,
                             seed=2)
        model = keras.Sequential([keras.Input((None, 6)), keras.layers.Masking(0.0),
                                  keras.layers.SimpleRNN(8), keras.layers.Dense(4)])
        model.compile(optimizer="sgd",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[SequenceErrorRate("temporal_order")])
        logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
        expected = np.mean(model.predict(x, verbose=0).argmax(-1) != y)
        self.assertAlmostEqual(logs["sequence_error_rate"], expected, places=6)
        self.assertEqual(task_solved(logs["sequence_error_rate"]), expected < 0.01)

    def test_compile_and_evaluate_on_the_adding_task(self):
        x, y = datasets.load("adding", "valid", length=20, size=40, seed=2)
        model = keras.Sequential([keras.Input((None, 2)), keras.layers.SimpleRNN(8),
                                  keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse", metrics=[SequenceErrorRate("adding")])
        logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
        expected = np.mean(((model.predict(x, verbose=0) - y) ** 2)[:, 0] > 0.04)
        self.assertAlmostEqual(logs["sequence_error_rate"], expected, places=6)

    def test_weighted_metric_skips_memorization_padding(self):
        x, y, w = datasets.load("noiseless_memorization", "valid", length=2, max_length=5,
                                size=20, seed=1, n_values=3, n_positions=2)
        model = keras.Sequential([keras.Input((None, 5)),
                                  keras.layers.SimpleRNN(6, return_sequences=True),
                                  keras.layers.Dense(4)])
        model.compile(optimizer="sgd",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      weighted_metrics=[SequenceErrorRate("noiseless_memorization")])
        logs = model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
        predicted = model.predict(x, verbose=0).argmax(-1)
        expected = np.mean(((predicted != y) & (w > 0)).any(axis=1))
        self.assertAlmostEqual(logs["sequence_error_rate"], expected, places=6)


def test_task_solved_is_the_papers_one_percent():
    assert tasks.SOLVED_ERROR_RATE == 0.01 and tasks.EVALUATION_SEQUENCES == 10000
    assert task_solved(0.0099)
    assert not task_solved(0.01)
    assert task_solved(np.float32(0.0))
    assert not task_solved(0.0001, threshold=1e-6)


@pytest.mark.parametrize("name", ["adding", "random_permutation"])
def test_a_perfect_answer_is_never_wrong(name):
    x, y = datasets.load(name, "test", length=10, size=30, seed=0)
    scores = y if y.dtype == np.float32 else np.eye(100, dtype="float32")[y]
    assert float(_rate(SequenceErrorRate(name), (y, scores))) == 0.0

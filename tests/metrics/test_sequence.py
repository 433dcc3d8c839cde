"""Tests for deepkit.metrics.sequence: values against numpy by hand, exact
means over batches of unequal sizes and masks, use in compile/evaluate,
serialization."""

import json
import math

import keras
import numpy as np

from deepkit.metrics import BitsPerCharacter, FrameBinaryCrossentropy, FrameNLL, Perplexity
from deepkit.testing import TestCase


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _frame_nll_numpy(y, p):
    y, p = y.astype("float64"), p.astype("float64")
    return -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(-1)


def _token_nll_numpy(ids, logits):
    logits = logits.astype("float64")
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, ids[..., None], axis=-1)[..., 0]


def _music_batch(rng, n, steps=5, keys=6):
    y = (rng.random((n, steps, keys)) < 0.3).astype("float32")
    logits = rng.normal(size=(n, steps, keys)).astype("float32")
    lengths = rng.integers(1, steps + 1, size=n)
    mask = (np.arange(steps)[None] < lengths[:, None]).astype("float32")
    return y, logits, mask


class FrameNLLTest(TestCase):
    def test_hand_computed_single_frame(self):
        # Two keys: p = (0.5, 0.25), target (1, 0): NLL = ln 2 + ln(4/3).
        metric = FrameNLL()
        metric.update_state(np.array([[[1.0, 0.0]]]), np.array([[[0.5, 0.25]]]))
        self.assertAllClose(metric.result(), math.log(2) + math.log(4 / 3), atol=1e-6)

    def test_probabilities_and_logits_agree_with_numpy(self):
        rng = np.random.default_rng(0)
        y, logits, mask = _music_batch(rng, 4)
        expected = (_frame_nll_numpy(y, _sigmoid(logits)) * mask).sum() / mask.sum()
        from_logits = FrameNLL(from_logits=True)
        from_logits.update_state(y, logits, sample_weight=mask)
        self.assertAllClose(from_logits.result(), expected, atol=1e-5, rtol=1e-6)
        from_probs = FrameNLL()
        from_probs.update_state(y, _sigmoid(logits).astype("float32"), sample_weight=mask)
        self.assertAllClose(from_probs.result(), expected, atol=1e-5, rtol=1e-6)

    def test_sum_over_keys_not_mean(self):
        # 88 keys each predicted 0.5: the NLL of a frame is 88 ln 2.
        metric = FrameNLL()
        metric.update_state(np.zeros((1, 3, 88)), np.full((1, 3, 88), 0.5))
        self.assertAllClose(metric.result(), 88 * math.log(2), atol=1e-4)

    def test_exact_over_batches_of_unequal_sizes_and_masks(self):
        rng = np.random.default_rng(1)
        batches = [_music_batch(rng, n) for n in (3, 1, 2)]
        batches[1][2][:] = 0.0
        batches[1][2][0, :1] = 1.0  # one real frame in the second batch
        metric = FrameNLL(from_logits=True)
        totals, counts, batch_means = 0.0, 0.0, []
        for y, logits, mask in batches:
            metric.update_state(y, logits, sample_weight=mask)
            nll = _frame_nll_numpy(y, _sigmoid(logits)) * mask
            totals += nll.sum()
            counts += mask.sum()
            batch_means.append(nll.sum() / mask.sum())
        self.assertAllClose(metric.result(), totals / counts, atol=1e-5, rtol=1e-6)
        # The exact figure is not the mean of the batch means here.
        self.assertGreater(abs(np.mean(batch_means) - totals / counts), 1e-2)
        metric.reset_state()
        self.assertAllClose(metric.result(), 0.0)

    def test_per_sequence_weights_broadcast_over_time(self):
        rng = np.random.default_rng(2)
        y, logits, _ = _music_batch(rng, 3)
        weights = np.array([1.0, 0.0, 2.0], "float32")
        metric = FrameNLL(from_logits=True)
        metric.update_state(y, logits, sample_weight=weights)
        nll = _frame_nll_numpy(y, _sigmoid(logits))
        expected = (nll * weights[:, None]).sum() / (weights.sum() * y.shape[1])
        self.assertAllClose(metric.result(), expected, atol=1e-5, rtol=1e-6)

    def test_evaluate_over_unequal_batches_is_exact(self):
        rng = np.random.default_rng(3)
        y, logits, mask = _music_batch(rng, 5, steps=4)
        x = logits  # the model is the identity: y_pred = x (logits)
        inputs = keras.Input((4, 6))
        model = keras.Model(inputs, keras.layers.Identity()(inputs))
        # Keras passes sample_weight to `weighted_metrics` only.
        model.compile(loss=FrameBinaryCrossentropy(from_logits=True),
                      weighted_metrics=[FrameNLL(from_logits=True)])
        # batch_size 2 over 5 examples: batches of 2, 2 and 1.
        logs = model.evaluate(x, y, sample_weight=mask, batch_size=2, verbose=0,
                              return_dict=True)
        expected = (_frame_nll_numpy(y, _sigmoid(logits)) * mask).sum() / mask.sum()
        self.assertAllClose(logs["frame_nll"], expected, atol=1e-5, rtol=1e-6)

    def test_config_round_trip(self):
        metric = FrameNLL(from_logits=True, name="nll")
        serialized = keras.saving.serialize_keras_object(metric)
        self.assertEqual(serialized["registered_name"], "deepkit>FrameNLL")
        revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
        self.assertIsInstance(revived, FrameNLL)
        self.assertEqual(revived.get_config(), metric.get_config())
        self.assertTrue(revived.from_logits)


class FrameBinaryCrossentropyTest(TestCase):
    def test_mean_over_real_frames(self):
        rng = np.random.default_rng(4)
        y, logits, mask = _music_batch(rng, 3)
        loss = FrameBinaryCrossentropy(from_logits=True)
        nll = _frame_nll_numpy(y, _sigmoid(logits))
        self.assertAllClose(loss(y, logits, sample_weight=mask),
                            (nll * mask).sum() / mask.sum(), atol=1e-5, rtol=1e-6)
        self.assertAllClose(loss(y, logits), nll.mean(), atol=1e-5, rtol=1e-6)
        probabilities = FrameBinaryCrossentropy()
        self.assertAllClose(probabilities(y, _sigmoid(logits).astype("float32")), nll.mean(),
                            atol=1e-4, rtol=1e-5)

    def test_trains_and_round_trips(self):
        loss = FrameBinaryCrossentropy(from_logits=True)
        revived = keras.losses.deserialize(json.loads(json.dumps(keras.losses.serialize(loss))))
        self.assertIsInstance(revived, FrameBinaryCrossentropy)
        self.assertEqual(revived.get_config(), loss.get_config())
        rng = np.random.default_rng(5)
        y, logits, mask = _music_batch(rng, 4)
        model = keras.Sequential([keras.Input((5, 6)), keras.layers.Dense(6)])
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
        history = model.fit(logits, y, sample_weight=mask, epochs=5, batch_size=4, verbose=0)
        self.assertLess(history.history["loss"][-1], history.history["loss"][0])


class TokenMetricsTest(TestCase):
    def test_uniform_distribution(self):
        # Uniform over 4 symbols: 2 bits per character, perplexity 4.
        ids = np.array([[0, 3, 2]])
        probabilities = np.full((1, 3, 4), 0.25, "float32")
        bpc, ppl = BitsPerCharacter(), Perplexity()
        bpc.update_state(ids, probabilities)
        ppl.update_state(ids, probabilities)
        self.assertAllClose(bpc.result(), 2.0, atol=1e-6)
        self.assertAllClose(ppl.result(), 4.0, atol=1e-5)

    def test_against_numpy_with_masks_over_unequal_batches(self):
        rng = np.random.default_rng(6)
        total, count = 0.0, 0.0
        bpc, ppl = BitsPerCharacter(from_logits=True), Perplexity(from_logits=True)
        for n in (4, 1, 3):
            ids = rng.integers(0, 7, size=(n, 5))
            logits = rng.normal(scale=2.0, size=(n, 5, 7)).astype("float32")
            mask = (rng.random((n, 5)) < 0.7).astype("float32")
            bpc.update_state(ids, logits, sample_weight=mask)
            ppl.update_state(ids[..., None], logits, sample_weight=mask)  # (n, 5, 1) ids
            total += (_token_nll_numpy(ids, logits) * mask).sum()
            count += mask.sum()
        self.assertAllClose(bpc.result(), total / count / math.log(2), atol=1e-5, rtol=1e-6)
        self.assertAllClose(ppl.result(), math.exp(total / count), atol=1e-4, rtol=1e-5)

    def test_probabilities_equal_logits(self):
        rng = np.random.default_rng(7)
        ids = rng.integers(0, 5, size=(2, 3))
        logits = rng.normal(size=(2, 3, 5)).astype("float32")
        probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        a, b = Perplexity(from_logits=True), Perplexity()
        a.update_state(ids, logits)
        b.update_state(ids, probabilities.astype("float32"))
        self.assertAllClose(a.result(), b.result(), atol=1e-4, rtol=1e-5)

    def test_in_compile_with_logged_names(self):
        rng = np.random.default_rng(8)
        ids = rng.integers(0, 6, size=(5, 4))
        targets = rng.integers(0, 6, size=(5, 4))
        weights = (rng.random((5, 4)) < 0.8).astype("float32")
        model = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(6, 6)])
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=[BitsPerCharacter(from_logits=True), Perplexity(from_logits=True)],
        )
        logs = model.evaluate(ids, targets, sample_weight=weights, batch_size=2, verbose=0,
                              return_dict=True)
        logits = model.predict(ids, verbose=0)
        mean = (_token_nll_numpy(targets, logits) * weights).sum() / weights.sum()
        self.assertAllClose(logs["bits_per_character"], mean / math.log(2), atol=1e-5, rtol=1e-5)
        self.assertAllClose(logs["perplexity"], math.exp(mean), atol=1e-4, rtol=1e-5)

    def test_registered(self):
        for cls in (BitsPerCharacter, Perplexity):
            serialized = keras.saving.serialize_keras_object(cls(from_logits=True))
            self.assertEqual(serialized["registered_name"], f"deepkit>{cls.__name__}")
            revived = keras.saving.deserialize_keras_object(serialized)
            self.assertTrue(revived.from_logits)

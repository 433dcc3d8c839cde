"""Tests for deepkit.models.HardParallelMixture (architecture, inference, plain fit)."""

import os

import keras
import numpy as np
from keras import ops

from deepkit.models import HardParallelMixture
from deepkit.testing import TestCase
from deepkit.training import Alternation

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


class HardParallelMixtureTest(TestCase):
    def test_config_round_trip_and_registration(self):
        model = small(combine="soft", eval_capacity_factor=2.0)
        self.assertConfigRoundTrip(model)

    def test_hard_output_is_the_argmax_experts_softmax(self):
        model = small(combine="hard")
        probs = ops.convert_to_numpy(model(X))
        weights = ops.convert_to_numpy(model.gater_weights(X))
        chosen = weights.argmax(axis=1)
        expected = np.stack([
            softmax(numpy_expert_logits(model, m, X[i:i + 1]))[0] for i, m in enumerate(chosen)
        ])
        self.assertAllClose(probs, expected, atol=1e-5)

    def test_soft_output_is_the_gater_weighted_mixture(self):
        model = small(combine="soft")
        probs = ops.convert_to_numpy(model(X))
        weights = ops.convert_to_numpy(model.gater_weights(X))
        experts = np.stack([softmax(numpy_expert_logits(model, m, X)) for m in range(4)], axis=1)
        self.assertAllClose(probs, (weights[:, :, None] * experts).sum(axis=1), atol=1e-5)

    def test_save_and_load(self):
        model = compiled()
        Alternation(seed=1).fit(model, X, Y, batch_size=4, epochs=1, verbose=0)
        path = os.path.join(self.get_temp_dir(), "hard_mixture.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        self.assertIsInstance(loaded, HardParallelMixture)
        self.assertAllClose(loaded.predict(X, verbose=0), model.predict(X, verbose=0), atol=1e-6)


    def test_a_saved_assignment_comes_back_with_the_weights(self):
        model = compiled()
        Alternation(seed=1).fit(model, X, Y, batch_size=4, epochs=1, verbose=0)
        path = os.path.join(self.get_temp_dir(), "mixture.weights.h5")
        model.save_weights(path)
        again = small()
        again(X)
        self.assertIsNone(again.last_assignment)
        again.load_weights(path)
        self.assertAllEqual(again.last_assignment, model.last_assignment)

    def test_an_old_config_with_training_settings_still_loads(self):
        config = small().get_config()
        config.update(capacity_slack=0.2, expert_epochs=2, gater_epochs=1,
                      gater_learning_rate=None)
        model = HardParallelMixture.from_config(config)
        self.assertEqual(model.num_experts, 4)
        self.assertFalse(hasattr(model, "expert_epochs"))

    def test_plain_fit_takes_the_usual_arguments(self):
        # No fit of its own: Keras' fit trains the mixture end to end on the
        # compiled loss, steps_per_epoch and all; the soft mixture trains the
        # gater and the experts both.
        model = compiled(combine="soft")
        model(X)
        before = [ops.convert_to_numpy(v) for v in model.trainable_variables]
        history = model.fit(X, Y, batch_size=8, epochs=3, steps_per_epoch=4, verbose=0,
                            validation_data=(X, Y), validation_steps=2)
        self.assertLen(history.history["loss"], 3)
        self.assertIn("val_accuracy", history.history)
        self.assertLess(history.history["loss"][-1], history.history["loss"][0])
        after = [ops.convert_to_numpy(v) for v in model.trainable_variables]
        self.assertTrue(all(np.abs(a - b).max() > 0 for a, b in zip(after, before)))
        self.assertNotIn("fit", HardParallelMixture.__dict__)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "combine must be one of"):
            small(combine="top_k")
        with self.assertRaisesRegex(ValueError, "num_experts must be at least 1"):
            small(num_experts=0)

"""Tests for deepkit.models.ConditionalGatedMLP."""

import os

import keras
import numpy as np
from keras import ops

from deepkit.models import ConditionalGatedMLP
from deepkit.testing import TestCase

X = np.random.default_rng(0).random((16, 4, 5)).astype("float32")
Y = np.random.default_rng(1).integers(0, 3, 16)


def small(**kwargs):
    config = dict(units=12, gater_units=6, num_classes=3, seed=1)
    config.update(kwargs)
    return ConditionalGatedMLP(**config)


class ConditionalGatedMLPTest(TestCase):
    def test_config_round_trip_and_registration(self):
        model = small(gate="reinforce", inference="top_fraction")
        self.assertConfigRoundTrip(model)

    def test_forward_is_gate_times_main_path(self):
        model = small(inference="threshold")
        probs = ops.convert_to_numpy(model(X))
        self.assertEqual(probs.shape, (16, 3))
        self.assertAllClose(probs.sum(axis=1), np.ones(16), atol=1e-5)
        x = X.reshape(16, -1)
        a = model.gater_output(model.gater_hidden(x))
        gates = (ops.convert_to_numpy(ops.sigmoid(a)) > 0.5).astype("float32")
        expected = model.classifier(gates * ops.convert_to_numpy(model.main(x)))
        self.assertAllClose(probs, expected, atol=1e-5)

    def test_every_gate_trains_and_the_max_norm_holds(self):
        for gate in ("straight_through", "straight_through_sigmoid",
                     "stochastic_times_smooth", "reinforce", "noisy_rectifier"):
            model = small(gate=gate, max_norm=0.5, output_max_norm=0.25)
            model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy",
                          metrics=["accuracy"])
            model.build(X.shape)
            before = ops.convert_to_numpy(model.gater_hidden.kernel).copy()
            history = model.fit(X, Y, batch_size=8, epochs=2, verbose=0)
            self.assertTrue(np.all(np.isfinite(history.history["loss"])), gate)
            after = ops.convert_to_numpy(model.gater_hidden.kernel)
            self.assertFalse(np.array_equal(before, after), f"{gate}: gater did not learn")
            for layer in (model.gater_hidden, model.gater_output, model.main):
                norms = np.linalg.norm(ops.convert_to_numpy(layer.kernel), axis=0)
                self.assertLessEqual(norms.max(), 0.5 + 1e-5, f"{gate}: {layer.name}")
            norms = np.linalg.norm(ops.convert_to_numpy(model.classifier.kernel), axis=0)
            self.assertLessEqual(norms.max(), 0.25 + 1e-5, f"{gate}: classifier")

    def test_input_dropout_masks_both_paths_in_training_only(self):
        model = small(inference="threshold", input_dropout=0.5, max_norm=None)
        plain = small(inference="threshold", max_norm=None)
        model.build(X.shape)
        plain.build(X.shape)
        # Saturate the gates (|a| in the hundreds at least): a training-time sample
        # 1[u < sigm(a)] is then the step 1[a > 0], so the training forward
        # pass is deterministic given the dropout mask.
        model.gater_output.kernel.assign(model.gater_output.kernel * 1.0e5)
        plain.set_weights(model.get_weights())
        # At inference the dropout layer is the identity.
        self.assertAllClose(model(X), plain(X), atol=1e-6)
        # In training both paths see x * mask / (1 - rate): replay the
        # layer's mask from its seed state and rebuild the forward pass.
        state = ops.convert_to_numpy(model.dropout.seed_generator.state).copy()
        out = ops.convert_to_numpy(model(X, training=True))
        model.dropout.seed_generator.state.assign(state)
        x = X.reshape(16, -1)
        dropped = ops.convert_to_numpy(model.dropout(x, training=True))
        kept = dropped != 0
        self.assertGreater(kept.mean(), 0.3)
        self.assertLess(kept.mean(), 0.7)
        self.assertAllClose(dropped[kept], 2.0 * x[kept], atol=1e-6)
        a = ops.convert_to_numpy(model.gater_output(model.gater_hidden(dropped)))
        self.assertGreater(np.abs(a).min(), 20.0)
        gates = (a > 0).astype("float32")
        expected = ops.convert_to_numpy(
            model.classifier(gates * ops.convert_to_numpy(model.main(dropped)))
        )
        self.assertAllClose(out, expected, atol=1e-5)
        self.assertGreater(np.abs(out - ops.convert_to_numpy(plain(X))).max(), 1e-3)
        self.assertEqual(self.assertConfigRoundTrip(model)["input_dropout"], 0.5)
        with self.assertRaisesRegex(ValueError, "input_dropout must be in"):
            small(input_dropout=1.0)

    def test_output_max_norm_none_leaves_the_softmax_unconstrained(self):
        model = small(max_norm=0.5, output_max_norm=None)
        self.assertIsNone(model.classifier.kernel_constraint)
        self.assertIsNotNone(model.main.kernel_constraint)
        model.compile(keras.optimizers.SGD(2.0), "sparse_categorical_crossentropy")
        model.fit(X, Y, batch_size=8, epochs=3, verbose=0)
        norms = np.linalg.norm(ops.convert_to_numpy(model.classifier.kernel), axis=0)
        self.assertGreater(norms.max(), 0.5)

    def test_reinforce_trains_the_gater_only_through_compute_loss(self):
        # Without a sparsity penalty, the gater's only gradient is REINFORCE.
        model = small(gate="reinforce", sparsity_weight=0.0)
        model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
        model.build(X.shape)
        before = ops.convert_to_numpy(model.gater_output.kernel).copy()
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
        self.assertFalse(np.array_equal(before, ops.convert_to_numpy(model.gater_output.kernel)))

        # The same model built as a plain functional model (no compute_loss
        # override) leaves the gater untouched: the gate has no pathwise gradient.
        inputs = keras.Input((4, 5))
        flat = keras.layers.Flatten()(inputs)
        gates = model.gates.__class__(estimator="reinforce", sparsity_weight=0.0)(
            keras.layers.Dense(12, name="gater")(flat)
        )
        outputs = keras.layers.Dense(3, activation="softmax")(
            keras.layers.Multiply()([gates, keras.layers.Dense(12)(flat)])
        )
        plain = keras.Model(inputs, outputs)
        plain.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
        gater = plain.get_layer("gater")
        before = ops.convert_to_numpy(gater.kernel).copy()
        plain.fit(X, Y, batch_size=16, epochs=1, verbose=0)
        self.assertAllEqual(ops.convert_to_numpy(gater.kernel), before)

    def test_reinforce_surrogate_adds_zero_to_the_loss_value(self):
        model = small(gate="reinforce", sparsity_weight=0.0)
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        y_pred = model(X, training=True)
        self.assertIsNotNone(model.gates.pending_reinforce_terms())
        loss = model.compute_loss(X, Y, y_pred, training=True)
        expected = keras.losses.sparse_categorical_crossentropy(Y, y_pred)
        self.assertAllClose(loss, ops.mean(expected), atol=1e-6)

    def test_save_and_load(self):
        model = small(gate="straight_through", inference="top_fraction")
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
        path = os.path.join(self.get_temp_dir(), "gated.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        self.assertIsInstance(loaded, ConditionalGatedMLP)
        self.assertAllClose(loaded.predict(X, verbose=0), model.predict(X, verbose=0), atol=1e-6)

    def test_bad_gate(self):
        with self.assertRaises(ValueError):
            small(gate="dropout")

"""Tests for deepkit.training.ScaledSGD (per-layer learning-rate factors)."""

import json
import os

import keras
import numpy as np
from keras import ops

from deepkit.testing import TestCase
from deepkit.training import ScaledSGD


def _model(optimizer, seed=3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="tanh", name="lower")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="upper")(hidden))
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(12, 3)).astype("float32"),
            rng.normal(size=(12, 2)).astype("float32"))


def _one_step(optimizer):
    """Weights before and after one full-batch step, by variable path."""
    x, y = _data()
    model = _model(optimizer)
    before = {v.path: ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    model.fit(x, y, batch_size=12, epochs=1, verbose=0, shuffle=False)
    after = {v.path: ops.convert_to_numpy(v) for v in model.trainable_variables}
    return before, after


class ScaledSGDTest(TestCase):
    def test_each_variable_moves_by_its_factor_times_the_sgd_step(self):
        # After one step from the same weights, SGD's change of a variable
        # is -lr * g (momentum has no velocity yet); a factor s makes it
        # -s * lr * g. The clipping norm is that of the unscaled gradients,
        # so the reference clips the same way.
        scales = {"lower": 0.1, "lower/bias": 0.0, "upper/kernel": 2.5}
        want_factor = {"lower/kernel": 0.1, "lower/bias": 0.0,
                       "upper/kernel": 2.5, "upper/bias": 1.0}
        for clip in (None, 0.05):
            with self.subTest(global_clipnorm=clip):
                before, plain = _one_step(
                    keras.optimizers.SGD(0.3, momentum=0.9, global_clipnorm=clip))
                before2, scaled = _one_step(
                    ScaledSGD(0.3, momentum=0.9, global_clipnorm=clip, lr_scales=scales))
                self.assertEqual(sorted(scaled), sorted(want_factor))
                for path, factor in want_factor.items():
                    self.assertAllClose(before[path], before2[path])
                    sgd_step = plain[path] - before[path]
                    self.assertGreater(np.abs(sgd_step).max(), 1e-4, path)
                    self.assertAllClose(scaled[path] - before[path], factor * sgd_step,
                                        atol=1e-6, rtol=1e-4, msg=path)

    def test_without_scales_it_is_keras_sgd(self):
        x, y = _data()
        ours = _model(ScaledSGD(0.05, momentum=0.7, nesterov=True))
        theirs = _model(keras.optimizers.SGD(0.05, momentum=0.7, nesterov=True))
        for model in (ours, theirs):
            model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
        for a, b in zip(ours.get_weights(), theirs.get_weights()):
            self.assertAllClose(a, b, atol=1e-6, rtol=1e-5)

    def test_factor_zero_freezes_a_layer_through_fit(self):
        x, y = _data()
        model = _model(ScaledSGD(0.2, momentum=0.9, lr_scales={"lower": 0.0}))
        lower = [w.copy() for w in model.get_layer("lower").get_weights()]
        upper = [w.copy() for w in model.get_layer("upper").get_weights()]
        model.fit(x, y, batch_size=4, epochs=3, verbose=0)
        for a, b in zip(lower, model.get_layer("lower").get_weights()):
            self.assertAllClose(a, b, atol=0, rtol=0)
        self.assertFalse(np.allclose(upper[0], model.get_layer("upper").get_weights()[0]))

    def test_keys_match_whole_path_segments_in_a_sequential_model(self):
        # Sequential models prefix their variable paths with the model name.
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="lower"),
                                  keras.layers.Dense(2, name="lower_2")], name="net")
        optimizer = ScaledSGD(0.1, lr_scales={"lower": 0.5, "lower_2/bias": 0.25})
        optimizer.build(model.trainable_variables)
        factors = dict(zip([v.path for v in model.trainable_variables],
                           optimizer._variable_lr_scales))
        self.assertEqual(factors, {"net/lower/kernel": 0.5, "net/lower/bias": 0.5,
                                   "net/lower_2/kernel": 1.0, "net/lower_2/bias": 0.25})

    def test_config_and_saving(self):
        optimizer = ScaledSGD(0.1, momentum=0.5, lr_scales={"lower": 0.1})
        serialized = keras.saving.serialize_keras_object(optimizer)
        self.assertEqual(serialized["registered_name"], "deepkit>ScaledSGD")
        revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
        self.assertIsInstance(revived, ScaledSGD)
        self.assertEqual(revived.get_config(), optimizer.get_config())
        self.assertEqual(revived.lr_scales, {"lower": 0.1})

        x, y = _data()
        model = _model(optimizer)
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        path = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        self.assertIsInstance(loaded.optimizer, ScaledSGD)
        self.assertEqual(loaded.optimizer.lr_scales, {"lower": 0.1})
        self.assertAllClose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
        # Training goes on with the same factors: the loaded copy and the
        # original take the same next step.
        for m in (model, loaded):
            m.fit(x, y, batch_size=12, epochs=1, verbose=0, shuffle=False)
        for a, b in zip(loaded.get_weights(), model.get_weights()):
            self.assertAllClose(a, b, atol=1e-6)

    def test_a_key_that_matches_no_variable_is_an_error_naming_the_variables(self):
        x, y = _data()
        # "low" is a prefix of "lower" but not a layer name: no match.
        model = _model(ScaledSGD(0.1, lr_scales={"low": 0.1}))
        with self.assertRaisesRegex(ValueError,
                                    r"lr_scales key\(s\) \['low'\] match no trainable variable; "
                                    r"the variables are: lower/kernel, lower/bias"):
            model.fit(x, y, epochs=1, verbose=0)

    def test_bad_arguments(self):
        for scales, message in (
            ([0.1], "lr_scales must be a mapping"),
            ({"lower": -1}, r"lr_scales\['lower'\] must be a number >= 0, got -1"),
            ({"lower": "x"}, r"lr_scales\['lower'\] must be a number >= 0"),
            ({"lower": True}, r"lr_scales\['lower'\] must be a number >= 0"),
            ({"": 0.1}, "lr_scales keys must be layer names"),
        ):
            with self.subTest(scales=scales):
                with self.assertRaisesRegex(ValueError, "ScaledSGD: " + message):
                    ScaledSGD(0.1, lr_scales=scales)

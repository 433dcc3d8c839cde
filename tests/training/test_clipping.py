"""Tests for deepkit.training.clipping: the clipping math against numpy, the
adaptive thresholds by hand, ClipGradients' policies, state and distribution."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from deepkit.testing import TestCase
from deepkit.training import (AverageNorm, ClipGradients, ClippingLogs, NonFiniteGradient,
                              PercentileNorm, ZScoreNorm, adaptive_clip, clip_by_global_norm,
                              clip_by_value, global_norm)

HERE = Path(__file__).resolve().parent
RNG = np.random.default_rng(0)
G = [RNG.normal(size=(3, 4)).astype("float32"), RNG.normal(size=(4,)).astype("float32")]
NORM = float(np.sqrt(sum((g.astype("float64") ** 2).sum() for g in G)))


def numpy_values(tensors):
    return [ops.convert_to_numpy(t) for t in tensors]


def data():
    x = RNG.normal(size=(32, 5)).astype("float32")
    return x, (x.sum(axis=1, keepdims=True) * 10).astype("float32")


def model(optimizer, recurrent=False):
    keras.utils.set_random_seed(1)
    if recurrent:
        layers = [keras.Input((3, 5)), keras.layers.SimpleRNN(4), keras.layers.Dense(1)]
    else:
        layers = [keras.Input((5,)), keras.layers.Dense(3), keras.layers.Dense(1)]
    net = keras.Sequential(layers)
    net.compile(optimizer, "mse")
    return net


def value(variable):
    return ops.convert_to_numpy(variable)


class PureFunctionsTest(TestCase):
    def test_global_norm_and_algorithm_1(self):
        self.assertAllClose(value(global_norm(G + [None])), NORM, rtol=1e-6)
        same = numpy_values(clip_by_global_norm(G, NORM * 2))
        for a, b in zip(same, G):
            self.assertAllClose(a, b)
        clipped = numpy_values(clip_by_global_norm(G, 1.5))
        for a, b in zip(clipped, G):
            self.assertAllClose(a, b * 1.5 / NORM, rtol=1e-6)
        self.assertAllClose(np.sqrt(sum((c ** 2).sum() for c in clipped)), 1.5, rtol=1e-6)

    def test_clip_by_value(self):
        clipped = numpy_values(clip_by_value(G, 0.3))
        for a, b in zip(clipped, G):
            self.assertAllClose(a, np.clip(b, -0.3, 0.3))

    def test_unitwise_adaptive_clipping(self):
        w = RNG.normal(size=(3, 4)).astype("float32")
        g = w * np.array([0.001, 0.5, 0.02, 3.0], "float32")  # per output unit
        out = value(adaptive_clip([g], [w], clipping=0.01)[0])
        w_norm = np.sqrt((w ** 2).sum(axis=0))
        g_norm = np.sqrt((g ** 2).sum(axis=0))
        limit = 0.01 * np.maximum(w_norm, 1e-3)
        expected = g * np.where(g_norm > limit, limit / g_norm, 1.0)
        self.assertAllClose(out, expected, rtol=1e-5)
        self.assertAllClose(out[:, 0], g[:, 0])  # under the limit: unchanged
        bias = np.array([0.0, 2.0], "float32")  # zero weights: eps keeps it movable
        self.assertAllClose(value(adaptive_clip([np.array([1.0, 1.0], "float32")], [bias])[0]),
                            [1e-5, 0.02], rtol=1e-5)


class ThresholdRulesTest(TestCase):
    def run_rule(self, rule, norms):
        state = {k: np.zeros(s, "float32") for k, s in rule.state_shapes().items()}
        limits = []
        for step, norm in enumerate(norms):
            limit = float(value(rule.threshold(state, step)))
            limits.append(limit)
            clipped = min(norm, limit)
            state = {k: value(v) for k, v in rule.update(state, np.float32(norm),
                                                         np.float32(clipped), step).items()}
        return limits

    def test_average_norm(self):
        limits = self.run_rule(AverageNorm(multiple=2.0), [1.0, 3.0, 5.0])
        self.assertEqual(limits[0], float("inf"))  # nothing seen yet
        self.assertAllClose(limits[1:], [2.0 * 1.0, 2.0 * 2.0])
        ema = self.run_rule(AverageNorm(multiple=1.0, decay=0.5), [4.0, 2.0, 8.0])
        self.assertAllClose(ema[1:], [4.0, 3.0])

    def test_percentile_norm_over_a_window(self):
        limits = self.run_rule(PercentileNorm(percentile=50, window=3), [5.0, 1.0, 3.0, 9.0, 7.0])
        # Steps 1-4 see [5], [5, 1], [5, 1, 3], then the window [9, 1, 3].
        self.assertAllClose(limits[1:], [5.0, 1.0, 3.0, 3.0])

    def test_zscore_norm(self):
        rule = ZScoreNorm(z=2.0, decay=0.5, warmup_steps=2)
        limits = self.run_rule(rule, [2.0, 4.0, 100.0, 3.0])
        self.assertEqual(limits[:2], [float("inf")] * 2)
        mean, var = 3.0, 1.0  # the warm-up's mean and (population) variance
        self.assertAllClose(limits[2], mean + 2.0 * np.sqrt(var), rtol=1e-6)
        clipped = limits[2]  # the spike enters the averages clipped
        mean2 = 0.5 * mean + 0.5 * clipped
        var2 = 0.5 * var + 0.5 * (clipped - mean2) ** 2
        self.assertAllClose(limits[3], mean2 + 2.0 * np.sqrt(var2), rtol=1e-5)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "multiple must be > 0"):
            AverageNorm(0)
        with self.assertRaisesRegex(ValueError, "percentile must be in"):
            PercentileNorm(0)
        with self.assertRaisesRegex(ValueError, "decay must be in"):
            ZScoreNorm(decay=1.0)


class ClipGradientsTest(TestCase):
    def test_a_fixed_threshold_is_keras_global_clipnorm_on_one_device(self):
        x, y = data()
        ours = model(ClipGradients(keras.optimizers.Adam(0.01), threshold=1.0))
        theirs = model(keras.optimizers.Adam(0.01, global_clipnorm=1.0))
        logs = ClippingLogs()
        a = ours.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[logs])
        b = theirs.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        for u, v in zip(ours.get_weights(), theirs.get_weights()):
            self.assertAllClose(u, v, atol=1e-6)
        self.assertAllClose(a.history["loss"], b.history["loss"], rtol=1e-6)
        self.assertEqual(a.history["clipped"], [1.0, 1.0])  # norms ~50 > 1
        self.assertEqual(a.history["skipped"], [0, 0])
        self.assertGreater(a.history["grad_norm"][0], 1.0)
        optimizer = ours.optimizer
        self.assertEqual(int(value(optimizer.steps)), 8)
        self.assertIs(optimizer.iterations, optimizer.inner_optimizer.iterations)
        self.assertEqual(int(value(optimizer.iterations)), 8)

    def test_value_rule_is_keras_clipvalue_and_unitwise_clips_per_unit(self):
        x, y = data()
        ours = model(ClipGradients(keras.optimizers.SGD(0.01), threshold=0.5, rule="value"))
        theirs = model(keras.optimizers.SGD(0.01, clipvalue=0.5))
        history = ours.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                           callbacks=[ClippingLogs()])
        theirs.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        for u, v in zip(ours.get_weights(), theirs.get_weights()):
            self.assertAllClose(u, v, atol=1e-6)
        self.assertEqual(history.history["clipped"], [1.0])
        # Unit-wise: one step of SGD(1) moves each unit's kernel by at most
        # clipping x its norm (the bias: clipping x max(|b|, eps)).
        net = model(ClipGradients(keras.optimizers.SGD(1.0), threshold=0.01, rule="unitwise"))
        before = [w.copy() for w in net.get_weights()]
        net.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)
        for old, new in zip(before, net.get_weights()):
            moved = np.abs(new - old)
            if old.ndim == 2:
                limit = 0.01 * np.maximum(np.sqrt((old ** 2).sum(axis=0)), 1e-3)
                self.assertTrue(np.all(np.sqrt((moved ** 2).sum(axis=0)) <= limit * (1 + 1e-4)))
            else:
                self.assertTrue(np.all(moved <= 0.01 * np.maximum(np.abs(old), 1e-3) * (1 + 1e-4)))

    def test_the_logged_norm_is_the_pre_clip_norm(self):
        x, y = data()
        net = model(ClipGradients(keras.optimizers.SGD(0.0), threshold=1e-3))
        history = net.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[ClippingLogs()])
        # SGD(0) leaves the weights: the norm of the full-batch MSE gradient.
        w1, b1, w2, b2 = net.get_weights()
        h = x @ w1 + b1
        r = 2.0 * (h @ w2 + b2 - y) / len(x)
        grads = [x.T @ (r @ w2.T), (r @ w2.T).sum(0), h.T @ r, r.sum(0)]
        expected = np.sqrt(sum((g.astype("float64") ** 2).sum() for g in grads))
        self.assertAllClose(history.history["grad_norm"][0], expected, rtol=1e-4)

    def test_a_non_finite_step_is_skipped_and_adam_state_kept(self):
        x, y = data()
        net = model(ClipGradients(keras.optimizers.Adam(0.01), threshold=1.0))
        net.fit(x, y, batch_size=8, epochs=1, verbose=0)
        weights = [w.copy() for w in net.get_weights()]
        inner = [value(v) for v in net.optimizer.inner_optimizer.variables]
        bad = x.copy()
        bad[0, 0] = np.nan
        history = net.fit(bad[:8], y[:8], batch_size=8, epochs=1, verbose=0,
                          callbacks=[ClippingLogs()])
        self.assertEqual(history.history["skipped"], [1])
        for a, b in zip(net.get_weights(), weights):
            self.assertAllEqual(a, b)
        for a, b in zip([value(v) for v in net.optimizer.inner_optimizer.variables], inner):
            self.assertAllEqual(a, b)  # moments and step count untouched
        self.assertEqual(int(value(net.optimizer.skipped_steps)), 1)

    def test_shrink_takes_two_percent_off_the_recurrent_weights(self):
        x = RNG.normal(size=(8, 3, 5)).astype("float32")
        y = RNG.normal(size=(8, 1)).astype("float32")
        net = model(ClipGradients(keras.optimizers.SGD(0.1), threshold=1.0,
                                  non_finite="shrink"), recurrent=True)
        before = {v.path: value(v) for v in net.trainable_variables}
        x[0, 0, 0] = np.inf
        net.fit(x, y, batch_size=8, epochs=1, verbose=0)
        for v in net.trainable_variables:
            expected = before[v.path] * (0.98 if "recurrent_kernel" in v.path else 1.0)
            self.assertAllClose(value(v), expected, rtol=1e-6)

    def test_stop_raises_at_the_end_of_the_epoch_and_apply_is_keras(self):
        x, y = data()
        x[3, 1] = np.nan
        net = model(ClipGradients(keras.optimizers.SGD(0.1), threshold=1.0, non_finite="stop"))
        with self.assertRaisesRegex(NonFiniteGradient, "1 step\\(s\\) of epoch 1"):
            net.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[ClippingLogs()])
        self.assertTrue(all(np.isfinite(w).all() for w in net.get_weights()))
        net = model(ClipGradients(keras.optimizers.SGD(0.1), threshold=1.0, non_finite="apply"))
        net.fit(x, y, batch_size=8, epochs=1, verbose=0)
        self.assertFalse(all(np.isfinite(w).all() for w in net.get_weights()))

    def test_state_is_saved_with_the_optimizer_and_the_config_round_trips(self):
        x, y = data()
        clip = ClipGradients(keras.optimizers.SGD(0.01, momentum=0.9),
                             threshold=PercentileNorm(25, window=4))
        net = model(clip)
        net.fit(x, y, batch_size=8, epochs=1, verbose=0)
        path = os.path.join(self.get_temp_dir(), "clipped.keras")
        net.save(path)
        loaded = keras.saving.load_model(path)
        self.assertIsInstance(loaded.optimizer, ClipGradients)
        self.assertIsInstance(loaded.optimizer.threshold, PercentileNorm)
        for a, b in zip(loaded.optimizer.variables, net.optimizer.variables):
            self.assertAllClose(value(a), value(b))
        # Both continue identically.
        net.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        for a, b in zip(loaded.get_weights(), net.get_weights()):
            self.assertAllClose(a, b, atol=1e-6)
        config = keras.optimizers.serialize(clip)
        again = keras.optimizers.deserialize(config)
        self.assertEqual(again.get_config()["threshold"], clip.get_config()["threshold"])
        self.assertEqual(again.rule, "global_norm")

    def test_the_learning_rate_is_the_wrapped_optimizers(self):
        clip = ClipGradients(keras.optimizers.SGD(0.05))
        self.assertAllClose(value(clip.learning_rate), 0.05)
        clip.learning_rate = 0.5
        self.assertAllClose(value(clip.inner_optimizer.learning_rate), 0.5)

    def test_bad_arguments(self):
        sgd = keras.optimizers.SGD(0.1)
        with self.assertRaisesRegex(ValueError, "threshold must be a positive number"):
            ClipGradients(sgd, threshold=0)
        with self.assertRaisesRegex(ValueError, "rule must be one of"):
            ClipGradients(sgd, rule="norm")
        with self.assertRaisesRegex(ValueError, "an adaptive threshold needs rule='global_norm'"):
            ClipGradients(sgd, threshold=AverageNorm(), rule="value")
        with self.assertRaisesRegex(ValueError, "non_finite must be one of"):
            ClipGradients(sgd, non_finite="ignore")
        with self.assertRaisesRegex(ValueError, "optimizer must be a Keras optimizer"):
            ClipGradients("sgd")
        with self.assertRaisesRegex(ValueError, "set them on the wrapped optimizer"):
            ClipGradients(sgd, global_clipnorm=1.0)
        net = model("sgd")
        with self.assertRaisesRegex(ValueError, "needs a model compiled with a ClipGradients"):
            net.fit(*data(), epochs=1, verbose=0, callbacks=[ClippingLogs()])


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_one_clipped_step_on_two_devices_is_the_single_device_step(backend, tmp_path):
    # tf.distribute.MirroredStrategy over two logical CPUs; JAX DataParallel
    # over two host devices. Keras' global_clipnorm clips each replica's part
    # on TF, so its step differs; the wrapper clips the global gradient.
    out = tmp_path / "weights.npz"
    env = dict(os.environ, KERAS_BACKEND=backend,
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, str(HERE / "distributed_step.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    w = np.load(out)
    for i in range(2):
        np.testing.assert_allclose(w[f"plain_1_{i}"], w[f"plain_2_{i}"], atol=1e-6)
        np.testing.assert_allclose(w[f"wrapper_1_{i}"], w[f"wrapper_2_{i}"], atol=1e-6)
    # A NaN in one replica's half of the batch: the step is skipped everywhere.
    for devices in (1, 2):
        for i in range(2):
            np.testing.assert_array_equal(w[f"skip_{devices}_{i}"], w[f"initial_{i}"])
    # The clipped step is not the unclipped one (the threshold acted).
    assert np.abs(w["wrapper_1_0"] - w["plain_1_0"]).max() > 1e-3
    keras_gap = np.abs(w["keras_1_0"] - w["keras_2_0"]).max()
    if backend == "tensorflow":
        assert keras_gap > 1e-3, keras_gap  # per-replica clipping: another step
    else:
        assert keras_gap < 1e-6, keras_gap  # JAX's gradient is global already


def test_a_recipe_names_the_wrapper_its_optimizer_and_an_adaptive_threshold():
    from deepkit.recipe import names
    from deepkit.recipe.errors import RecipeError
    from deepkit.recipe.schema import ObjectSpec

    spec = ObjectSpec("ClipGradients", {"optimizer": {"SGD": {"learning_rate": 0.1}},
                                        "threshold": {"ZScoreNorm": {"z": 3.0}}},
                      "compile.optimizer.ClipGradients")
    built = names.build("optimizer", spec)
    assert isinstance(built, ClipGradients)
    assert isinstance(built.inner_optimizer, keras.optimizers.SGD)
    assert isinstance(built.threshold, ZScoreNorm) and built.threshold.z == 3.0
    bad = ObjectSpec("ClipGradients", {"optimizer": {"SGD": {}}, "threshold": {"ZScore": {}}},
                     "compile.optimizer.ClipGradients")
    with pytest.raises(RecipeError, match="unknown name 'ZScore'.*ZScoreNorm"):
        names.build("optimizer", bad)

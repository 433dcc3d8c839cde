"""Tests for deepkit.layers.corruption: salt-and-pepper, masking, Gaussian, binomial."""

import numpy as np
from keras import ops

from deepkit.layers import BinomialSample, GaussianCorruption, MaskingCorruption, SaltAndPepper
from deepkit.testing import TestCase, input_gradient

X = np.random.default_rng(0).random((4, 6)).astype("float32")
# Large enough for proportions within ±0.006 (5 standard errors at p = 0.4).
HALF = np.full((200, 200), 0.5, "float32")
N = HALF.size


def within(fraction, expected, n=N, sigmas=5):
    return abs(fraction - expected) < sigmas * np.sqrt(expected * (1 - expected) / n)


class ContractTest(TestCase):
    def test_contract(self):
        for cls, kwargs in (
            (SaltAndPepper, {"rate": 0.3, "seed": 1}),
            (MaskingCorruption, {"rate": 0.3, "seed": 1}),
            (GaussianCorruption, {"stddev": 0.5, "seed": 1}),
            (BinomialSample, {"seed": 1}),
        ):
            self.run_layer_test(
                cls,
                kwargs,
                input_data=X,
                expected_output_shape=(4, 6),
                expected_num_trainable_weights=0,
                expected_num_losses=0,
                run_training_check=False,  # no weights
            )

    def test_argument_errors(self):
        for bad in (-0.1, 1.5):
            with self.assertRaisesRegex(ValueError, "rate must be in"):
                SaltAndPepper(bad)
            with self.assertRaisesRegex(ValueError, "rate must be in"):
                MaskingCorruption(bad)
        with self.assertRaisesRegex(ValueError, "stddev"):
            GaussianCorruption(-1.0)


class ModesTest(TestCase):
    def test_identity_at_inference_and_the_corrupt_switch(self):
        for layer in (SaltAndPepper(0.5, seed=1), MaskingCorruption(0.5, seed=1),
                      GaussianCorruption(1.0, seed=1), BinomialSample(seed=1)):
            name = type(layer).__name__
            self.assertAllEqual(layer(X), X, msg=name)
            self.assertAllEqual(layer(X, training=False), X, msg=name)
            self.assertAllEqual(layer(X, training=True, corrupt=False), X, msg=name)
            self.assertFalse(np.array_equal(ops.convert_to_numpy(layer(X, training=True)), X),
                             name)
            self.assertFalse(np.array_equal(ops.convert_to_numpy(layer(X, corrupt=True)), X),
                             name)

    def test_replayed_noise_gives_the_same_corruption(self):
        # draw_noise from a saved generator state, then apply_noise, equals call.
        for layer in (SaltAndPepper(0.4, seed=2), MaskingCorruption(0.4, seed=2),
                      GaussianCorruption(2.0, seed=2), BinomialSample(seed=2)):
            state = np.array(ops.convert_to_numpy(layer.seed_generator.state.value))
            out = ops.convert_to_numpy(layer(X, training=True))
            layer.seed_generator.state.assign(state)
            noise = layer.draw_noise(X.shape)
            self.assertAllEqual(layer.apply_noise(X, noise), out, msg=type(layer).__name__)

    def test_an_explicit_seed_overrides_the_layer_generator(self):
        a = SaltAndPepper(0.5, seed=1).corrupted(HALF[:20], seed=7)
        b = SaltAndPepper(0.5, seed=99).corrupted(HALF[:20], seed=7)
        self.assertAllEqual(a, b)
        c = SaltAndPepper(0.5, seed=1).corrupted(HALF[:20], seed=8)
        self.assertFalse(np.array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(c)))


class StatisticsTest(TestCase):
    def test_salt_and_pepper(self):
        for rate in (0.1, 0.4, 1.0):
            out = ops.convert_to_numpy(SaltAndPepper(rate, seed=3)(HALF, training=True))
            changed = out != 0.5
            self.assertTrue(np.all((out[changed] == 0) | (out[changed] == 1)), rate)
            self.assertTrue(np.all(out[~changed] == 0.5))
            if rate < 1:
                self.assertTrue(within(changed.mean(), rate), (rate, changed.mean()))
            else:
                self.assertTrue(changed.all())
            # Salt and pepper equally likely.
            ones = (out[changed] == 1).mean()
            self.assertTrue(within(ones, 0.5, n=changed.sum()), (rate, ones))

    def test_salt_and_pepper_gradient_reaches_only_kept_elements(self):
        layer = SaltAndPepper(0.5, seed=4)

        def fn(x):
            out = layer(x, training=True)
            return ops.sum(out * 3.0), out

        grad, out = input_gradient(fn, HALF[:10], has_aux=True)
        kept = out == 0.5
        self.assertTrue(0.3 < kept.mean() < 0.7)
        self.assertAllEqual(grad, 3.0 * kept)

    def test_masking(self):
        out = ops.convert_to_numpy(MaskingCorruption(0.3, seed=5)(HALF, training=True))
        self.assertTrue(np.all((out == 0) | (out == 0.5)))
        self.assertTrue(within((out == 0).mean(), 0.3))

    def test_gaussian(self):
        out = ops.convert_to_numpy(GaussianCorruption(2.0, seed=6)(HALF, training=True))
        noise = out - 0.5
        self.assertAllClose(noise.mean(), 0.0, atol=5 * 2.0 / np.sqrt(N))
        self.assertAllClose(noise.std(), 2.0, atol=0.02)

    def test_binomial_sample(self):
        p = np.tile(np.array([[0.0, 0.1, 0.5, 0.9, 1.0]], "float32"), (20000, 1))
        out = ops.convert_to_numpy(BinomialSample(seed=7)(p, training=True))
        self.assertTrue(np.all((out == 0) | (out == 1)))
        self.assertAllEqual(out[:, 0], 0.0)
        self.assertAllEqual(out[:, 4], 1.0)
        for j in (1, 2, 3):
            self.assertTrue(within(out[:, j].mean(), p[0, j], n=len(p)), (j, out[:, j].mean()))

        def fn(x):
            return ops.sum(BinomialSample(seed=1)(x, corrupt=True)), x

        self.assertAllEqual(input_gradient(fn, X, has_aux=True)[0], np.zeros_like(X))

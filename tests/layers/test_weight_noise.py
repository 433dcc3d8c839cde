"""NoisyDense: Dense with Gaussian weight noise in training."""

import keras
import numpy as np

from deepkit.layers import NoisyDense
from deepkit.testing import TestCase, weight_gradients


def _output_and_gradient(layer, x):
    """(y, d |y|^2/2 / d kernel) of one training call, as numpy arrays."""
    layer.build(x.shape)
    grads, y = weight_gradients(layer, x, lambda y: 0.5 * keras.ops.sum(y * y), training=True,
                                return_output=True)
    return y, grads[0]


class NoisyDenseTest(TestCase):
    def test_layer_contract(self):
        self.run_layer_test(
            NoisyDense,
            {"units": 3, "activation": "sigmoid", "weight_noise": 0.075, "seed": 1},
            input_shape=(2, 5, 4),
            expected_output_shape=(2, 5, 3),
            expected_num_trainable_weights=2,
        )

    def test_inference_is_dense(self):
        layer = NoisyDense(4, activation="tanh", weight_noise=0.5, seed=2)
        x = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
        y = keras.ops.convert_to_numpy(layer(x, training=False))
        kernel, bias = (np.asarray(w) for w in layer.get_weights())
        self.assertAllClose(y, np.tanh(x @ kernel + bias), atol=1e-6)

    def test_noise_scale_and_one_sample_per_call(self):
        # Zero weights, linear: in training y = x N with N ~ N(0, s^2), so
        # each output is N(0, s^2 |x|^2); identical rows of a batch share the
        # noise sample and get identical outputs.
        stddev = 0.3
        layer = NoisyDense(64, weight_noise=stddev, seed=5, kernel_initializer="zeros")
        x = np.array([[1.0, 2.0, -2.0]] * 2, "float32")  # |x| = 3
        self.assertAllClose(layer(x, training=False), np.zeros((2, 64)))
        draws = [keras.ops.convert_to_numpy(layer(x, training=True)) for _ in range(40)]
        for d in draws:
            self.assertAllClose(d[0], d[1])
        values = np.stack([d[0] for d in draws])
        self.assertAllClose(values.mean(), 0.0, atol=0.05)
        self.assertAllClose(values.std(), stddev * 3.0, rtol=0.1)
        self.assertFalse(np.allclose(draws[0], draws[1]))

    def test_gradient_taken_at_the_noisy_kernel(self):
        # loss = |x (W + N)|^2 / 2 has gradient x^T y for W, with y the noisy
        # output of the same call: it differs from the noiseless x^T (x W).
        layer = NoisyDense(2, use_bias=False, weight_noise=1.0, seed=3,
                           kernel_initializer="ones")
        x = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, 1.0]], "float32")
        y, grad = _output_and_gradient(layer, x)
        self.assertAllClose(grad, x.T @ y, atol=1e-5)
        self.assertFalse(np.allclose(y, x @ np.ones((3, 2), "float32"), atol=1e-3))

    def test_bad_noise(self):
        with self.assertRaisesRegex(ValueError, "weight_noise must be a non-negative number"):
            NoisyDense(3, weight_noise=-1)
        with self.assertRaisesRegex(ValueError, "weight_noise must be a non-negative number"):
            NoisyDense(3, weight_noise="0.1")

"""Tests for deepkit.layers.maxout: contract, numbers vs numpy, gradients,
max-norm after an SGD update, argument errors."""

import keras
import numpy as np

from deepkit.layers import Maxout, MaxoutConv2D
from deepkit.testing import TestCase, weight_gradients


def _gradients(layer, x, upstream):
    """d sum(layer(x) * upstream) / d trainable weights, as numpy arrays."""
    return weight_gradients(layer, x, lambda y: keras.ops.sum(keras.ops.multiply(y, upstream)))


def _pools(units, pieces, pool_stride):
    """columns[u] = the kernel columns of unit u's pieces, as documented."""
    if pool_stride is None or pool_stride == pieces:
        return [[p * units + u for p in range(pieces)] for u in range(units)]
    return [[u * pool_stride + p for p in range(pieces)] for u in range(units)]


def _maxout_numpy(x, kernel, bias, units, pieces, pool_stride=None, min_zero=False):
    """Forward values and the winning column of each output, by loops."""
    z = x.astype("float64") @ kernel.astype("float64") + bias
    flat = z.reshape(-1, z.shape[-1])
    out = np.empty((flat.shape[0], units))
    winner = np.empty((flat.shape[0], units), dtype=int)
    for u, cols in enumerate(_pools(units, pieces, pool_stride)):
        for n in range(flat.shape[0]):
            best = max(cols, key=lambda c: flat[n, c])
            out[n, u] = flat[n, best]
            winner[n, u] = best
            if min_zero and out[n, u] < 0:
                out[n, u] = 0.0
                winner[n, u] = -1  # the constant zero won
    shape = z.shape[:-1] + (units,)
    return out.reshape(shape), winner.reshape(shape), z


def _dense_grads_numpy(x, winner, upstream, columns):
    """Gradients of sum(out * upstream) for kernel and bias: only winners."""
    x2 = x.reshape(-1, x.shape[-1]).astype("float64")
    winner2 = winner.reshape(-1, winner.shape[-1])
    up2 = upstream.reshape(-1, upstream.shape[-1])
    dz = np.zeros((x2.shape[0], columns))
    for n in range(x2.shape[0]):
        for u in range(winner2.shape[1]):
            if winner2[n, u] >= 0:
                dz[n, winner2[n, u]] += up2[n, u]
    return x2.T @ dz, dz.sum(axis=0)


def _conv_numpy(x, kernel, bias, strides, padding):
    """Channels-last 2D convolution (cross-correlation) by loops."""
    n, h, w, _ = x.shape
    kh, kw, _, out_channels = kernel.shape
    sh, sw = strides
    if padding == "same":
        out_h, out_w = -(-h // sh), -(-w // sw)
        pad_h = max((out_h - 1) * sh + kh - h, 0)
        pad_w = max((out_w - 1) * sw + kw - w, 0)
        x = np.pad(
            x,
            [(0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)],
        )
    else:
        out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
    z = np.zeros((n, out_h, out_w, out_channels))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :].astype("float64")
            z[:, i, j, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return z + bias


def _random(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


class MaxoutContractTest(TestCase):
    def test_dense_contract(self):
        self.run_layer_test(
            Maxout,
            {"units": 3, "pieces": 4},
            input_shape=(5, 6),
            expected_output_shape=(5, 3),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
        )

    def test_rank3_overlapping_min_zero_max_norm_contract(self):
        self.run_layer_test(
            Maxout,
            {
                "units": 3,
                "pieces": 3,
                "pool_stride": 2,
                "min_zero": True,
                "max_norm": 1.5,
                "kernel_initializer": {
                    "class_name": "RandomUniform",
                    "config": {"minval": -0.005, "maxval": 0.005},
                },
                "kernel_regularizer": "l2",
            },
            input_shape=(4, 2, 6),
            expected_output_shape=(4, 2, 3),
            expected_num_trainable_weights=2,
            expected_num_losses=1,
        )

    def test_no_bias_contract(self):
        layer = self.run_layer_test(
            Maxout,
            {"units": 2, "pieces": 2, "use_bias": False},
            input_shape=(3, 4),
            expected_output_shape=(3, 2),
            expected_num_trainable_weights=1,
        )
        self.assertEqual(tuple(layer.kernel.shape), (4, 4))

    def test_conv_contract_channels_last(self):
        self.run_layer_test(
            MaxoutConv2D,
            {"filters": 3, "pieces": 2, "kernel_size": 3, "padding": "same", "max_norm": 0.9},
            input_shape=(2, 5, 5, 2),
            expected_output_shape=(2, 5, 5, 3),
            expected_num_trainable_weights=2,
        )

    def test_conv_contract_channels_first(self):
        self.run_layer_test(
            MaxoutConv2D,
            {
                "filters": 2,
                "pieces": 3,
                "kernel_size": (3, 2),
                "strides": 2,
                "data_format": "channels_first",
            },
            input_shape=(2, 2, 7, 6),
            expected_output_shape=(2, 2, 3, 3),
            expected_num_trainable_weights=2,
        )

    def test_one_kernel_with_units_times_pieces_columns(self):
        layer = Maxout(4, 3)
        layer.build((None, 5))
        self.assertEqual(tuple(layer.kernel.shape), (5, 12))
        self.assertEqual(tuple(layer.bias.shape), (12,))
        overlapping = Maxout(4, 3, pool_stride=1)
        overlapping.build((None, 5))
        self.assertEqual(tuple(overlapping.kernel.shape), (5, 3 * 1 + 3))
        conv = MaxoutConv2D(4, 3, (2, 3))
        conv.build((None, 6, 6, 2))
        self.assertEqual(tuple(conv.kernel.shape), (2, 3, 2, 12))

    def test_compute_output_shape(self):
        self.assertEqual(Maxout(7, 2).compute_output_shape((None, 3, 5)), (None, 3, 7))
        conv = MaxoutConv2D(4, 2, 3, strides=2)
        self.assertEqual(conv.compute_output_shape((None, 9, 8, 1)), (None, 4, 3, 4))
        conv = MaxoutConv2D(4, 2, 3, strides=2, padding="same")
        self.assertEqual(conv.compute_output_shape((None, 9, 8, 1)), (None, 5, 4, 4))
        self.assertEqual(
            tuple(conv(np.zeros((1, 9, 8, 1), "float32")).shape), (1, 5, 4, 4)
        )


class MaxoutNumbersTest(TestCase):
    def _check_dense(self, units, pieces, pool_stride=None, min_zero=False, shape=(4, 5)):
        layer = Maxout(
            units, pieces, pool_stride=pool_stride, min_zero=min_zero,
            bias_initializer="random_normal",
        )
        x = _random(shape, 0)
        out = np.asarray(keras.ops.convert_to_numpy(layer(x)))
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias)
        expected, winner, _ = _maxout_numpy(
            x, kernel, bias, units, pieces, pool_stride, min_zero
        )
        self.assertAllClose(out, expected, atol=1e-5, rtol=1e-5)

        upstream = _random(expected.shape, 1)
        grad_kernel, grad_bias = _gradients(layer, x, upstream)
        want_kernel, want_bias = _dense_grads_numpy(x, winner, upstream, kernel.shape[1])
        self.assertAllClose(grad_kernel, want_kernel, atol=1e-5, rtol=1e-5)
        self.assertAllClose(grad_bias, want_bias, atol=1e-5, rtol=1e-5)
        return winner, grad_bias

    def test_disjoint_pools_values_and_gradients(self):
        winner, grad_bias = self._check_dense(units=3, pieces=4)
        # Only winning pieces receive gradient: with one example, exactly one
        # column per unit has a non-zero bias gradient.
        single = Maxout(3, 4, bias_initializer="random_normal")
        x = _random((1, 5), 2)
        grads = _gradients(single, x, np.ones((1, 3), "float32"))
        self.assertEqual(int(np.count_nonzero(grads[1])), 3)
        self.assertEqual(int(np.count_nonzero(np.abs(grads[0]).sum(axis=0))), 3)

    def test_piece_major_layout(self):
        # Column p * units + u is piece p of unit u: a kernel that is the
        # identity with piece 1 of unit 0 scaled up makes unit 0 pick it.
        units, pieces = 2, 3
        layer = Maxout(units, pieces, use_bias=False)
        layer.build((None, units * pieces))
        layer.kernel.assign(np.eye(units * pieces, dtype="float32"))
        x = np.arange(1, 7, dtype="float32")[None]  # column c holds c + 1
        # unit 0: columns 0, 2, 4 -> 5; unit 1: columns 1, 3, 5 -> 6
        self.assertAllClose(layer(x), [[5.0, 6.0]])

    def test_rank3_input(self):
        self._check_dense(units=2, pieces=3, shape=(2, 3, 4))

    def test_min_zero(self):
        winner, _ = self._check_dense(units=4, pieces=2, min_zero=True, shape=(6, 3))
        self.assertTrue((winner == -1).any(), "test data never let the zero win")
        self.assertTrue((winner >= 0).any())

    def test_overlapping_pools(self):
        for stride in (1, 2):
            with self.subTest(pool_stride=stride):
                self._check_dense(units=3, pieces=3, pool_stride=stride)

    def test_pool_stride_equal_to_pieces_is_disjoint(self):
        a = Maxout(3, 2, pool_stride=2)
        a.build((None, 4))
        self.assertEqual(tuple(a.kernel.shape), (4, 6))
        self._check_dense(units=3, pieces=2, pool_stride=2)

    def _check_conv(self, padding, strides, data_format):
        filters, pieces = 2, 3
        layer = MaxoutConv2D(
            filters, pieces, (3, 2), strides=strides, padding=padding,
            data_format=data_format, bias_initializer="random_normal",
        )
        x = _random((2, 5, 6, 2), 3)
        x_in = x if data_format == "channels_last" else np.transpose(x, (0, 3, 1, 2))
        out = keras.ops.convert_to_numpy(layer(x_in))
        if data_format == "channels_first":
            out = np.transpose(out, (0, 2, 3, 1))
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias)
        z = _conv_numpy(x, kernel, bias, layer.strides, padding)
        # channel p * filters + f is piece p of filter f
        pieces_z = np.stack([z[..., p * filters : (p + 1) * filters] for p in range(pieces)])
        self.assertAllClose(out, pieces_z.max(axis=0), atol=1e-5, rtol=1e-5)

        upstream = _random(out.shape, 4)
        up_in = upstream if data_format == "channels_last" else np.transpose(upstream, (0, 3, 1, 2))
        _, grad_bias = _gradients(layer, x_in, up_in)
        wins = pieces_z.argmax(axis=0)  # (n, h, w, filters)
        want = np.zeros(filters * pieces)
        for p in range(pieces):
            for f in range(filters):
                want[p * filters + f] = upstream[..., f][wins[..., f] == p].sum()
        self.assertAllClose(grad_bias, want, atol=1e-5, rtol=1e-5)

    def test_conv_values_and_gradients(self):
        for padding, strides, data_format in [
            ("valid", 1, "channels_last"),
            ("same", 2, "channels_last"),
            ("valid", (1, 2), "channels_first"),
        ]:
            with self.subTest(padding=padding, strides=strides, data_format=data_format):
                self._check_conv(padding, strides, data_format)


class MaxNormTest(TestCase):
    def _one_sgd_step(self, layer_fn, kernel, x, target):
        inputs = keras.Input(x.shape[1:])
        layer = layer_fn()
        model = keras.Model(inputs, layer(inputs))
        layer.kernel.assign(kernel)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, target, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
        return keras.ops.convert_to_numpy(layer.kernel)

    def _check(self, layer_fn, plain_fn, kernel, x, target, norm_axes, max_norm):
        constrained = self._one_sgd_step(layer_fn, kernel, x, target)
        plain = self._one_sgd_step(plain_fn, kernel, x, target)
        norms = np.sqrt((constrained.astype("float64") ** 2).sum(axis=norm_axes))
        plain_norms = np.sqrt((plain.astype("float64") ** 2).sum(axis=norm_axes))
        self.assertTrue((norms <= max_norm * (1 + 1e-6)).all(), norms)
        over = plain_norms > max_norm
        self.assertTrue(over.any() and not over.all(), plain_norms)
        # Columns that the update took past max_norm end exactly at max_norm,
        # in the direction of the unconstrained update; the others are the
        # unconstrained update (pylearn2: W * clip(n, 0, m) / (1e-7 + n)).
        self.assertAllClose(norms[over], np.full(over.sum(), max_norm), rtol=1e-5, atol=0)
        scale = np.where(over, max_norm / plain_norms, 1.0)
        self.assertAllClose(constrained, plain * scale, rtol=1e-5, atol=1e-6)

    def test_dense_max_col_norm_after_sgd_update(self):
        x = _random((8, 4), 5)
        target = _random((8, 3), 6)
        kernel = 0.1 * _random((4, 6), 7)
        kernel[:, 1] *= 40.0  # this column's norm is far above max_norm
        self._check(
            lambda: Maxout(3, 2, max_norm=1.0),
            lambda: Maxout(3, 2),
            kernel, x, target, norm_axes=0, max_norm=1.0,
        )

    def test_conv_max_kernel_norm_after_sgd_update(self):
        x = _random((2, 4, 4, 2), 8)
        target = _random((2, 3, 3, 2), 9)
        kernel = 0.1 * _random((2, 2, 2, 4), 10)
        kernel[..., 3] *= 40.0
        self._check(
            lambda: MaxoutConv2D(2, 2, 2, max_norm=0.7),
            lambda: MaxoutConv2D(2, 2, 2),
            kernel, x, target, norm_axes=(0, 1, 2), max_norm=0.7,
        )

    def test_max_norm_is_a_maxnorm_constraint_on_columns(self):
        layer = Maxout(2, 2, max_norm=1.9365)
        layer.build((None, 3))
        self.assertIsInstance(layer.kernel.constraint, keras.constraints.MaxNorm)
        self.assertEqual(layer.kernel.constraint.axis, 0)
        self.assertIsNone(layer.bias.constraint)
        self.assertIsNone(Maxout(2, 2).get_config()["kernel_constraint"])
        self.assertEqual(layer.get_config()["max_norm"], 1.9365)


class MaxoutArgumentsTest(TestCase):
    def test_bad_arguments(self):
        cases = [
            (Maxout, dict(units=3, pieces="five"),
             "Maxout: pieces must be a positive integer, got 'five'"),
            (Maxout, dict(units=0, pieces=2), "Maxout: units must be a positive integer, got 0"),
            (Maxout, dict(units=2.0, pieces=2), "Maxout: units must be a positive integer, got 2.0"),
            (Maxout, dict(units=True, pieces=2), "Maxout: units must be a positive integer, got True"),
            (Maxout, dict(units=2, pieces=2, max_norm=0),
             "Maxout: max_norm must be None or a positive number, got 0"),
            (Maxout, dict(units=2, pieces=2, max_norm="big"),
             "Maxout: max_norm must be None or a positive number, got 'big'"),
            (Maxout, dict(units=2, pieces=2, min_zero="yes"),
             "Maxout: min_zero must be True or False, got 'yes'"),
            (Maxout, dict(units=2, pieces=3, pool_stride=0),
             "Maxout: pool_stride must be a positive integer, got 0"),
            (Maxout, dict(units=2, pieces=3, pool_stride=4),
             "Maxout: pool_stride must be at most pieces (3), got 4"),
            (Maxout, dict(units=2, pieces=3, max_norm=1.0, kernel_constraint="non_neg"),
             "Maxout: pass either max_norm or kernel_constraint, not both"),
            (MaxoutConv2D, dict(filters=2, pieces=-1, kernel_size=3),
             "MaxoutConv2D: pieces must be a positive integer, got -1"),
            (MaxoutConv2D, dict(filters=2, pieces=2, kernel_size=(3, 3, 3)),
             "MaxoutConv2D: kernel_size must be a positive integer or a pair of them"),
            (MaxoutConv2D, dict(filters=2, pieces=2, kernel_size=3, strides=0),
             "MaxoutConv2D: strides must be a positive integer, got 0"),
            (MaxoutConv2D, dict(filters=2, pieces=2, kernel_size=3, padding="full"),
             "MaxoutConv2D: padding must be 'valid' or 'same', got 'full'"),
            (MaxoutConv2D, dict(filters=2, pieces=2, kernel_size=3, data_format="nhwc"),
             "MaxoutConv2D: data_format must be 'channels_last' or 'channels_first'"),
        ]
        for cls, kwargs, message in cases:
            with self.subTest(cls=cls.__name__, **{k: repr(v) for k, v in kwargs.items()}):
                with self.assertRaises(ValueError) as caught:
                    cls(**kwargs)
                self.assertIn(message, str(caught.exception))

    def test_unknown_feature_size(self):
        with self.assertRaisesRegex(ValueError, "last axis of the input"):
            Maxout(2, 2).build((None, None))
        with self.assertRaisesRegex(ValueError, "channel axis of the input"):
            MaxoutConv2D(2, 2, 3).build((None, 5, 5, None))

    def test_wrong_input_size_after_build(self):
        layer = Maxout(2, 2)
        layer(np.zeros((1, 3), "float32"))
        with self.assertRaises(ValueError):
            layer(np.zeros((1, 4), "float32"))

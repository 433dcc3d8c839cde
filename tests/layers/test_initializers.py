"""Tests for deepkit.layers.initializers: SparseSingular, SparseSpectral, SpectralRadius."""

import json
import os

import keras
import numpy as np

from deepkit.layers import DeepTransitionRNN, SparseSingular, SparseSpectral, SpectralRadius
from deepkit.testing import TestCase


def radius(w):
    """The spectral radius (largest absolute eigenvalue) of a matrix."""
    return np.max(np.abs(np.linalg.eigvals(np.asarray(w, dtype=np.float64))))


class SparseSingularTest(TestCase):
    def test_nonzeros_per_row_and_largest_singular_value(self):
        for shape, nonzeros, scale in (((50, 40), 20, 1.0), ((6, 3), 5, 0.5), ((30, 60), 1, 2.0)):
            w = np.asarray(SparseSingular(nonzeros=nonzeros, scale=scale, seed=4)(shape))
            self.assertEqual(w.shape, shape)
            self.assertAllEqual((w != 0).sum(axis=1), np.full(shape[0], min(nonzeros, shape[1])))
            self.assertAllClose(np.linalg.svd(w, compute_uv=False)[0], scale, atol=1e-5, rtol=1e-5)

    def test_scales_the_largest_singular_value_not_the_spectral_radius(self):
        # The singular value bounds the radius; for sparse random matrices the
        # radius is well below it (the reason SparseSpectral exists).
        for shape, seed in (((40, 40), 1), ((100, 100), 2), ((25, 25), 3)):
            w = np.asarray(SparseSingular(nonzeros=20, scale=1.0, seed=seed)(shape))
            self.assertAllClose(np.linalg.svd(w, compute_uv=False)[0], 1.0, rtol=1e-5)
            self.assertLessEqual(radius(w), 1.0 + 1e-5)
            self.assertLess(radius(w), 0.8)

    def test_rows_differ_and_seed_reproduces(self):
        a = np.asarray(SparseSingular(seed=7)((40, 40)))
        b = np.asarray(SparseSingular(seed=7)((40, 40)))
        c = np.asarray(SparseSingular(seed=8)((40, 40)))
        self.assertAllEqual(a, b)
        self.assertFalse(np.array_equal(a != 0, c != 0))
        patterns = {tuple(np.flatnonzero(row)) for row in a != 0}
        self.assertGreater(len(patterns), 30)

    def test_config_and_use_in_a_saved_layer(self):
        init = SparseSingular(nonzeros=3, scale=0.8, seed=1)
        config = json.loads(json.dumps(keras.initializers.serialize(init)))
        revived = keras.initializers.deserialize(config)
        self.assertIsInstance(revived, SparseSingular)
        self.assertEqual(revived.get_config(), init.get_config())
        self.run_layer_test(
            DeepTransitionRNN,
            dict(units=5, transition_layers=[4], shortcut=True, return_sequences=True,
                 recurrent_initializer=init),
            input_shape=(2, 3, 6),
            expected_output_shape=(2, 3, 5),
        )
        layer = DeepTransitionRNN(5, recurrent_initializer="deepkit>SparseSingular")
        layer(np.zeros((1, 2, 3), "float32"))
        w = np.asarray(layer.cell.recurrent_kernel.numpy())
        self.assertAllEqual((w != 0).sum(axis=1), np.full(5, 5))  # 20 capped at 5 columns

    def test_argument_errors(self):
        with self.assertRaises(ValueError):
            SparseSingular(nonzeros=0)
        with self.assertRaises(ValueError):
            SparseSingular(scale=0.0)
        with self.assertRaises(ValueError):
            SparseSingular(seed=1.5)
        with self.assertRaises(ValueError):
            SparseSingular()((2, 3, 4))


class SparseSpectralTest(TestCase):
    def test_spectral_radius_and_nonzeros_per_unit(self):
        cases = (((50, 50), 15, 0.95), ((20, 20), 3, 1.1), ((8, 8), 20, 0.5),
                 ((1, 1), 1, 0.95), ((128, 128), 15, 1.0))
        for (shape, nonzeros, rho) in cases:
            for distribution in ("normal", "uniform"):
                for connections, axis in (("outgoing", 1), ("incoming", 0)):
                    init = SparseSpectral(nonzeros, rho, distribution=distribution,
                                          connections=connections, seed=4)
                    out = init(shape)
                    self.assertTrue(keras.ops.is_tensor(out))
                    self.assertEqual(keras.backend.standardize_dtype(out.dtype), "float32")
                    w = keras.ops.convert_to_numpy(out)
                    self.assertEqual(w.shape, shape)
                    msg = f"{shape} {nonzeros} {distribution} {connections}"
                    self.assertAllClose(radius(w), rho, atol=0, rtol=1e-5, msg=msg)
                    self.assertAllEqual((w != 0).sum(axis=axis),
                                        np.full(shape[0], min(nonzeros, shape[0])), msg=msg)

    def test_the_papers_defaults(self):
        init = SparseSpectral()
        self.assertEqual((init.nonzeros, init.spectral_radius, init.distribution,
                          init.connections), (15, 0.95, "normal", "outgoing"))
        w = np.asarray(SparseSpectral(seed=3)((50, 50)))
        self.assertAllEqual((w != 0).sum(axis=1), np.full(50, 15))
        self.assertAllClose(radius(w), 0.95, atol=0, rtol=1e-5)
        self.assertGreater(len({tuple(np.flatnonzero(row)) for row in w != 0}), 45)

    def test_incoming_is_the_transpose_and_distributions_share_the_pattern(self):
        out = np.asarray(SparseSpectral(seed=9)((30, 30)))
        inc = np.asarray(SparseSpectral(connections="incoming", seed=9)((30, 30)))
        self.assertAllEqual(inc, out.T)
        uni = np.asarray(SparseSpectral(distribution="uniform", seed=9)((30, 30)))
        self.assertAllEqual(uni != 0, out != 0)
        self.assertFalse(np.allclose(uni, out))
        # Uniform draws on [-1, 1] are bounded: no non-zero is more than
        # max/min times larger than the others the way normal tails are.
        scale = SparseSpectral(distribution="uniform", seed=9).sparse_matrix(30)
        self.assertLessEqual(np.abs(scale).max(), 1.0)
        self.assertGreater(np.abs(SparseSpectral(seed=9).sparse_matrix(30)).max(), 1.0)

    def test_seed_reproduces_and_seeds_differ(self):
        a = np.asarray(SparseSpectral(seed=7)((40, 40)))
        b = np.asarray(SparseSpectral(seed=7)((40, 40)))
        c = np.asarray(SparseSpectral(seed=8)((40, 40)))
        init = SparseSpectral(seed=7)
        self.assertAllEqual(a, b)
        self.assertAllEqual(np.asarray(init((40, 40))), np.asarray(init((40, 40))))
        self.assertFalse(np.array_equal(a != 0, c != 0))
        self.assertFalse(np.allclose(a, c))

    def test_no_seed_is_reproducible_under_set_random_seed(self):
        keras.utils.set_random_seed(21)
        first = SparseSpectral()
        a = np.asarray(first((30, 30)))
        keras.utils.set_random_seed(21)
        b = np.asarray(SparseSpectral()((30, 30)))
        self.assertAllEqual(a, b)
        keras.utils.set_random_seed(22)
        c = np.asarray(SparseSpectral()((30, 30)))
        self.assertFalse(np.allclose(a, c))
        self.assertIsNone(first.get_config()["seed"])

    def test_dtypes(self):
        for dtype in ("float16", "bfloat16", "float32"):
            out = SparseSpectral(nonzeros=4, seed=2)((16, 16), dtype=dtype)
            self.assertEqual(keras.backend.standardize_dtype(out.dtype), dtype)
            w = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
            self.assertAllClose(radius(w), 0.95, atol=0, rtol=2e-2)
            self.assertAllEqual((w != 0).sum(axis=1), np.full(16, 4))

    def test_config_round_trip_and_simple_rnn(self):
        init = SparseSpectral(nonzeros=4, spectral_radius=0.9, distribution="uniform",
                              connections="incoming", seed=1)
        self.assertEqual(init.get_config(), dict(nonzeros=4, spectral_radius=0.9,
                                                 distribution="uniform",
                                                 connections="incoming", seed=1))
        config = json.loads(json.dumps(keras.initializers.serialize(init)))
        revived = keras.initializers.deserialize(config)
        self.assertIsInstance(revived, SparseSpectral)
        self.assertEqual(revived.get_config(), init.get_config())
        self.assertAllEqual(revived((10, 10)), init((10, 10)))

        layer = keras.layers.SimpleRNN(10, recurrent_initializer=init)
        out = layer(np.random.default_rng(0).normal(size=(2, 6, 3)).astype("float32"))
        self.assertEqual(tuple(out.shape), (2, 10))
        self.assertTrue(np.all(np.isfinite(keras.ops.convert_to_numpy(out))))
        w = keras.ops.convert_to_numpy(layer.cell.recurrent_kernel.value)
        self.assertAllEqual(w, np.asarray(init((10, 10))))
        self.assertAllEqual((w != 0).sum(axis=0), np.full(10, 4))
        self.assertAllClose(radius(w), 0.9, atol=0, rtol=1e-5)

        by_name = keras.layers.SimpleRNN(20, recurrent_initializer="deepkit>SparseSpectral")
        by_name(np.zeros((1, 2, 3), "float32"))
        w = keras.ops.convert_to_numpy(by_name.cell.recurrent_kernel.value)
        self.assertAllEqual((w != 0).sum(axis=1), np.full(20, 15))
        self.assertAllClose(radius(w), 0.95, atol=0, rtol=1e-5)

    def test_saved_model_gives_identical_outputs(self):
        inputs = keras.Input((5, 3))
        outputs = keras.layers.SimpleRNN(
            12, recurrent_initializer=SparseSpectral(nonzeros=5, seed=3))(inputs)
        model = keras.Model(inputs, outputs)
        x = np.random.default_rng(1).normal(size=(4, 5, 3)).astype("float32")
        path = os.path.join(self.get_temp_dir(), "sparse_spectral.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        self.assertAllEqual(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
        config = loaded.layers[-1].get_config()["recurrent_initializer"]
        self.assertEqual(keras.initializers.deserialize(config).get_config(),
                         SparseSpectral(nonzeros=5, seed=3).get_config())

    def test_argument_errors(self):
        bad = (dict(nonzeros=0), dict(nonzeros=2.0), dict(nonzeros=True),
               dict(spectral_radius=0.0), dict(spectral_radius=-1.0),
               dict(spectral_radius=float("nan")), dict(spectral_radius=float("inf")),
               dict(spectral_radius="0.95"), dict(distribution="cauchy"),
               dict(connections="both"), dict(seed=1.5), dict(seed=True))
        for kwargs in bad:
            (name,) = kwargs
            with self.assertRaisesRegex(ValueError, name, msg=str(kwargs)):
                SparseSpectral(**kwargs)
        for shape in ((3, 4), (4,), (2, 3, 3)):
            with self.assertRaisesRegex(ValueError, "square", msg=str(shape)):
                SparseSpectral(seed=1)(shape)


class SpectralRadiusTest(TestCase):
    def test_rescales_any_square_initializer(self):
        for inner, rho in ((keras.initializers.RandomNormal(stddev=0.1, seed=2), 1.1),
                           (keras.initializers.Orthogonal(seed=3), 0.5),
                           (SparseSingular(nonzeros=3, seed=4), 0.95)):
            for n in (1, 7, 64):
                expected = keras.ops.convert_to_numpy(inner((n, n)))
                w = keras.ops.convert_to_numpy(SpectralRadius(inner, rho)((n, n)))
                self.assertAllClose(radius(w), rho, atol=0, rtol=1e-5)
                # A positive multiple of the inner initializer's matrix.
                self.assertAllClose(w, expected * (rho / radius(expected)), atol=1e-6, rtol=1e-5)

    def test_config_round_trip(self):
        init = SpectralRadius(SparseSingular(nonzeros=3, seed=4), radius=0.8)
        config = json.loads(json.dumps(keras.initializers.serialize(init)))
        revived = keras.initializers.deserialize(config)
        self.assertIsInstance(revived, SpectralRadius)
        self.assertIsInstance(revived.initializer, SparseSingular)
        self.assertEqual(revived.get_config(), init.get_config())
        self.assertAllEqual(revived((9, 9)), init((9, 9)))
        by_name = SpectralRadius("orthogonal", 2.0)
        self.assertIsInstance(by_name.initializer, keras.initializers.Orthogonal)
        self.assertEqual(by_name.radius, 2.0)

        layer = keras.layers.SimpleRNN(6, recurrent_initializer=init)
        layer(np.ones((2, 3, 4), "float32"))
        self.assertAllClose(radius(keras.ops.convert_to_numpy(layer.cell.recurrent_kernel.value)),
                            0.8, atol=0, rtol=1e-5)

    def test_errors(self):
        for kwargs in (dict(radius=0.0), dict(radius=-2.0), dict(radius=float("nan")),
                       dict(radius=None)):
            with self.assertRaisesRegex(ValueError, "radius", msg=str(kwargs)):
                SpectralRadius("orthogonal", **kwargs)
        for initializer in (None, "no_such_initializer", 3):
            with self.assertRaisesRegex(ValueError, "initializer", msg=repr(initializer)):
                SpectralRadius(initializer)
        with self.assertRaisesRegex(ValueError, "square"):
            SpectralRadius("orthogonal")((3, 5))
        with self.assertRaisesRegex(ValueError, "spectral radius"):
            SpectralRadius("zeros")((4, 4))

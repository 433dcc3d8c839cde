"""Tests for deepkit.layers.initializers.SparseSingular."""

import json

import keras
import numpy as np

from deepkit.layers import DeepTransitionRNN, SparseSingular
from deepkit.testing import TestCase


class SparseSingularTest(TestCase):
    def test_nonzeros_per_row_and_largest_singular_value(self):
        for shape, nonzeros, scale in (((50, 40), 20, 1.0), ((6, 3), 5, 0.5), ((30, 60), 1, 2.0)):
            w = np.asarray(SparseSingular(nonzeros=nonzeros, scale=scale, seed=4)(shape))
            self.assertEqual(w.shape, shape)
            self.assertAllEqual((w != 0).sum(axis=1), np.full(shape[0], min(nonzeros, shape[1])))
            self.assertAllClose(np.linalg.svd(w, compute_uv=False)[0], scale, atol=1e-5, rtol=1e-5)

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

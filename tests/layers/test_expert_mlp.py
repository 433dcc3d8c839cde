"""Tests for deepkit.layers.ExpertMLP: contract, numbers vs numpy, the
per-expert initializer rule, call_all against the buffer call, config and
.keras round trips, argument errors."""

import math
import os

import keras
import numpy as np
from keras import ops

from deepkit.layers import ExpertMLP
from deepkit.layers.expert_mlp import per_expert_initializer
from deepkit.testing import TestCase, weight_gradients

BUFFERS = np.random.default_rng(1).normal(size=(4, 5, 6)).astype("float32")


def weights(layer):
    return [
        ops.convert_to_numpy(v).astype("float64")
        for v in (layer.expert_kernel_1, layer.expert_bias_1, layer.expert_kernel_2,
                  layer.expert_bias_2)
    ]


def numpy_experts(layer, buffers, activation=lambda h: np.maximum(h, 0)):
    """Expert e on buffers[e], one expert and one token at a time."""
    w1, b1, w2, b2 = weights(layer)
    experts, tokens, _ = buffers.shape
    out = np.zeros((experts, tokens, w2.shape[-1]))
    for e in range(experts):
        for t in range(tokens):
            hidden = activation(buffers[e, t].astype("float64") @ w1[e] + b1[e])
            out[e, t] = hidden @ w2[e] + b2[e]
    return out


def randomize(layer, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    for v in layer.trainable_variables:
        v.assign(rng.normal(scale=scale, size=v.shape).astype("float32"))


class ContractTest(TestCase):
    def test_layer_contract(self):
        layer = self.run_layer_test(
            ExpertMLP,
            {"num_experts": 4, "units": 8, "output_units": 3},
            input_data=BUFFERS,
            expected_output_shape=(4, 5, 3),
            expected_num_trainable_weights=4,
            expected_num_non_trainable_weights=0,
            expected_num_losses=0,
        )
        self.assertEqual(
            [v.path.split("/")[-1] for v in layer.weights],
            ["expert_kernel_1", "expert_bias_1", "expert_kernel_2", "expert_bias_2"],
        )
        self.assertEqual(
            [tuple(v.shape) for v in layer.weights], [(4, 6, 8), (4, 8), (4, 8, 3), (4, 3)]
        )

    def test_layer_contract_default_output_width_and_two_initializers(self):
        self.run_layer_test(
            ExpertMLP,
            {
                "num_experts": 2,
                "units": 7,
                "activation": "tanh",
                "kernel_initializer": {"class_name": "HeNormal", "config": {"seed": 1}},
                "output_kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": 2}},
                "bias_initializer": "ones",
            },
            input_data=BUFFERS[:2],
            expected_output_shape=(2, 5, 6),
        )

    def test_config_round_trip(self):
        layer = ExpertMLP(3, 5, output_units=2, activation="gelu", name="experts")
        config = self.assertConfigRoundTrip(layer)
        self.assertIsNone(config["output_kernel_initializer"])
        self.assertEqual(config["activation"], "gelu")
        revived = ExpertMLP.from_config(config)
        self.assertEqual((revived.num_experts, revived.units, revived.output_units), (3, 5, 2))
        two = ExpertMLP(3, 5, output_kernel_initializer=keras.initializers.GlorotUniform(4))
        self.assertEqual(
            self.assertConfigRoundTrip(two)["output_kernel_initializer"]["config"]["seed"], 4
        )

    def test_save_and_load_keep_outputs_and_call_all(self):
        inputs = keras.Input((5, 6), batch_size=4)
        layer = ExpertMLP(4, 8, output_units=3, bias_initializer="random_normal")
        model = keras.Model(inputs, layer(inputs))
        path = os.path.join(self.get_temp_dir(), "experts.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        self.assertAllClose(loaded.predict(BUFFERS, verbose=0), model.predict(BUFFERS, verbose=0),
                            atol=0, rtol=0)
        tokens = BUFFERS[0]
        self.assertAllClose(loaded.layers[-1].call_all(tokens), layer.call_all(tokens),
                            atol=0, rtol=0)

    def test_compute_output_shape(self):
        self.assertEqual(ExpertMLP(4, 8).compute_output_shape((4, 5, 6)), (4, 5, 6))
        self.assertEqual(ExpertMLP(4, 8, 3).compute_output_shape((None, None, 6)), (None, None, 3))

    def test_argument_errors(self):
        for kwargs in ({"num_experts": 0, "units": 3}, {"num_experts": 2, "units": 0},
                       {"num_experts": 2, "units": 3, "output_units": 0},
                       {"num_experts": 2.5, "units": 3}, {"num_experts": True, "units": 3}):
            with self.subTest(**kwargs):
                with self.assertRaises(ValueError):
                    ExpertMLP(**kwargs)
        with self.assertRaisesRegex(ValueError, "call_all"):
            ExpertMLP(2, 3).build((5, 6))  # tokens, not buffers
        with self.assertRaisesRegex(ValueError, "num_experts"):
            ExpertMLP(2, 3).build((3, 5, 6))
        with self.assertRaisesRegex(ValueError, "last input dimension"):
            ExpertMLP(2, 3).build((2, 5, None))


class NumericsTest(TestCase):
    def test_buffer_call_equals_a_loop_over_experts_and_tokens(self):
        for kwargs, act in (
            ({}, lambda h: np.maximum(h, 0)),
            ({"activation": "tanh", "output_units": 3}, np.tanh),
            ({"activation": "linear", "output_units": 1}, lambda h: h),
        ):
            with self.subTest(**kwargs):
                layer = ExpertMLP(4, 7, **kwargs)
                layer.build(BUFFERS.shape)
                randomize(layer)
                expected = numpy_experts(layer, BUFFERS, act)
                self.assertAllClose(layer(BUFFERS), expected, atol=1e-5, rtol=1e-5)

    def test_call_all_equals_the_buffer_call_on_every_expert(self):
        layer = ExpertMLP(3, 7, output_units=4)
        tokens = BUFFERS[0]  # [B=5, d=6]
        dense = ops.convert_to_numpy(layer.call_all(tokens))  # builds the layer
        self.assertTrue(layer.built)
        self.assertEqual(dense.shape, (5, 3, 4))
        randomize(layer, seed=3)
        dense = ops.convert_to_numpy(layer.call_all(tokens))
        # Every expert's buffer holds every token.
        buffers = np.broadcast_to(tokens, (3,) + tokens.shape)
        sparse = ops.convert_to_numpy(layer(buffers))  # [E, B, out]
        self.assertAllClose(dense, np.transpose(sparse, (1, 0, 2)), atol=1e-5, rtol=1e-5)
        self.assertAllClose(
            dense, np.transpose(numpy_experts(layer, buffers), (1, 0, 2)), atol=1e-5, rtol=1e-5
        )

    def test_call_all_in_the_compute_dtype(self):
        layer = ExpertMLP(2, 4, dtype="mixed_bfloat16")
        y = layer.call_all(BUFFERS[0])
        self.assertEqual(layer.expert_kernel_1.dtype, "float32")
        self.assertEqual(keras.backend.standardize_dtype(y.dtype), "bfloat16")
        self.assertEqual(keras.backend.standardize_dtype(layer(BUFFERS[:2]).dtype), "bfloat16")

    def test_gradients_stay_within_each_expert(self):
        layer = ExpertMLP(3, 4)
        layer.build((3, None, 6))
        randomize(layer, seed=4)
        buffers = BUFFERS[:3]
        # The loss reads experts 0 and 1 only: expert 2's weights get none.
        grads = weight_gradients(layer, buffers, lambda y: ops.sum(ops.square(y[:2])))
        for grad in grads:
            self.assertTrue(np.all(grad[2] == 0))
            self.assertGreater(np.abs(grad[:2]).sum(), 0)


class InitializerTest(TestCase):
    """Each expert is initialized as a Dense kernel of its own shape would be."""

    def _expert_and_dense_kernels(self, initializer, experts=16, d=64, h=96):
        layer = ExpertMLP(experts, h, output_units=32, kernel_initializer=initializer)
        layer.build((experts, None, d))
        kernel = ops.convert_to_numpy(layer.expert_kernel_1)
        dense = keras.layers.Dense(h, kernel_initializer=initializer)
        dense.build((None, d))
        return kernel, ops.convert_to_numpy(dense.kernel)

    def test_variance_scaling_counts_each_experts_own_fans(self):
        d, h = 64, 96
        for name, variance in (
            ("glorot_uniform", 2.0 / (d + h)),
            ("glorot_normal", 2.0 / (d + h)),
            ("he_normal", 2.0 / d),
            ("lecun_uniform", 1.0 / d),
        ):
            with self.subTest(initializer=name):
                kernel, dense = self._expert_and_dense_kernels(name, d=d, h=h)
                self.assertAllClose(dense.var(), variance, rtol=0.1)
                for e in range(kernel.shape[0]):  # every expert, not just the whole
                    self.assertAllClose(kernel[e].var(), variance, rtol=0.15)
                self.assertAllClose(kernel.var(), dense.var(), rtol=0.05)
                self.assertAllClose(kernel.mean(), 0.0, atol=0.01)
        # The uniform ones also have the Dense limit.
        kernel, _ = self._expert_and_dense_kernels("glorot_uniform", d=d, h=h)
        limit = math.sqrt(6 / (d + h))
        self.assertLessEqual(np.abs(kernel).max(), limit)
        self.assertGreater(np.abs(kernel).max(), 0.99 * limit)

    def test_output_kernel_uses_its_own_fans(self):
        layer = ExpertMLP(8, 96, output_units=16, kernel_initializer="he_uniform")
        layer.build((8, None, 64))
        self.assertAllClose(ops.convert_to_numpy(layer.expert_kernel_2).var(), 2.0 / 96, rtol=0.1)

    def test_other_initializers_are_unchanged(self):
        kernel, dense = self._expert_and_dense_kernels(
            keras.initializers.RandomNormal(stddev=0.3), experts=4
        )
        self.assertAllClose(kernel.std(), 0.3, rtol=0.05)
        self.assertAllClose(dense.std(), 0.3, rtol=0.05)
        ones = per_expert_initializer(keras.initializers.Ones(), 4)
        self.assertIsInstance(ones, keras.initializers.Ones)

    def test_seeded_initializers_equal_variance_scaling_times_experts(self):
        # HardParallelMixture's rule: GlorotUniform(seed) per expert is
        # VarianceScaling(scale=M, fan_avg, uniform, seed) on [M, d, h].
        m, d, h, c = 5, 12, 9, 4
        layer = ExpertMLP(
            m, h, output_units=c,
            kernel_initializer=keras.initializers.GlorotUniform(seed=13),
            output_kernel_initializer=keras.initializers.GlorotUniform(seed=14),
        )
        layer.build((m, None, d))

        def glorot(seed, shape):
            init = keras.initializers.VarianceScaling(
                scale=m, mode="fan_avg", distribution="uniform", seed=seed
            )
            return ops.convert_to_numpy(init(shape))

        self.assertAllEqual(layer.expert_kernel_1, glorot(13, (m, d, h)))
        self.assertAllEqual(layer.expert_kernel_2, glorot(14, (m, h, c)))
        self.assertAllEqual(layer.expert_bias_1, np.zeros((m, h)))
        self.assertAllEqual(layer.expert_bias_2, np.zeros((m, c)))
        # One initializer for both kernels by default: the same seed.
        same = ExpertMLP(m, h, output_units=c,
                         kernel_initializer=keras.initializers.GlorotUniform(seed=13))
        same.build((m, None, d))
        self.assertAllEqual(same.expert_kernel_1, layer.expert_kernel_1)
        self.assertAllEqual(same.expert_kernel_2, glorot(13, (m, h, c)))

    def test_the_rescaled_initializer_keeps_the_seed(self):
        init = keras.initializers.HeNormal(seed=3)
        scaled = per_expert_initializer(init, 6)
        self.assertEqual((scaled.scale, scaled.mode, scaled.distribution, scaled.seed),
                         (2.0 * 6, "fan_in", "truncated_normal", 3))
        self.assertEqual(init.scale, 2.0)  # the original is left alone

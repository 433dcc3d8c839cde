"""Tests for deepkit.layers.GatedExperts."""

import math
import os
import subprocess
import sys
import textwrap
import warnings
from fractions import Fraction

import keras
import numpy as np
from keras import ops

from deepkit.layers import ExpertMLP, GatedExperts, routing
from deepkit.layers.gated_experts import ROUTERS
from deepkit.recipe import names
from deepkit.recipe.schema import ObjectSpec
from deepkit.testing import TestCase, weight_gradients


def numpy_weights(layer):
    return {
        name: ops.convert_to_numpy(getattr(layer, name))
        for name in (
            "router_kernel",
            "expert_kernel_1",
            "expert_bias_1",
            "expert_kernel_2",
            "expert_bias_2",
        )
    }


def reference(layer, x, training=False, mask=None, factor=None):
    """A per-token loop over (choice, token) in Switch/GShard order."""
    w = numpy_weights(layer)
    d = x.shape[-1]
    tokens = x.reshape(-1, d).astype("float64")
    count = len(tokens)
    valid = np.ones(count, bool) if mask is None else mask.reshape(-1)
    experts = layer.num_experts
    logits = tokens @ w["router_kernel"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if layer.router == "softmax":
        index = np.tile(np.arange(experts), (count, 1))
        gates = probs
    else:
        k = layer.k
        index = np.argsort(-probs, axis=-1)[:, :k]
        gates = np.take_along_axis(probs, index, axis=-1)
        if layer.router == "top_k":
            gates = gates / gates.sum(-1, keepdims=True)
        if layer.router == "hard":
            gates = np.ones_like(gates)
    k = index.shape[1]
    if factor is None:
        factor = layer.train_capacity_factor if training else layer.eval_capacity_factor
    exact = Fraction(count * k, experts) * Fraction(str(factor))
    capacity = max(1, min(count, math.ceil(exact)))
    used = np.zeros(experts, int)
    out_dim = w["expert_kernel_2"].shape[-1]
    out = np.zeros((count, out_dim))
    served = np.zeros(count, bool)
    for choice in range(k):
        for t in range(count):
            if not valid[t]:
                continue
            e = index[t, choice]
            if used[e] < capacity:
                hidden = np.maximum(tokens[t] @ w["expert_kernel_1"][e] + w["expert_bias_1"][e], 0)
                out[t] += gates[t, choice] * (hidden @ w["expert_kernel_2"][e] + w["expert_bias_2"][e])
                served[t] = True
            used[e] += 1
    if layer.residual:
        out += tokens
    elif out_dim == d and layer.dropped_tokens == "input":
        out[~served] = tokens[~served]
    return out.reshape(x.shape[:-1] + (out_dim,)), served


def randomize(layer, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    for v in layer.trainable_variables:
        v.assign(rng.normal(scale=scale, size=v.shape).astype("float32"))


X = np.random.default_rng(1).normal(size=(3, 4, 6)).astype("float32")


class ContractTest(TestCase):
    def test_layer_contract_switch_loss(self):
        self.run_layer_test(
            GatedExperts,
            {"num_experts": 4, "expert_units": 8, "top_k": 2, "seed": 1},
            input_data=X,
            expected_output_shape=(3, 4, 6),
            expected_num_trainable_weights=5,
            expected_num_non_trainable_weights=4,
            expected_num_losses=1,
        )

    def test_layer_contract_noisy_top_k_shazeer_z_loss(self):
        self.run_layer_test(
            GatedExperts,
            {
                "num_experts": 4,
                "expert_units": 8,
                "output_units": 3,
                "noise": "noisy_top_k",
                "balance_loss": "shazeer",
                "z_loss_weight": 0.001,
                "seed": 2,
            },
            input_data=X,
            expected_output_shape=(3, 4, 3),
            expected_num_trainable_weights=6,
            expected_num_losses=2,
        )

    def test_layer_contract_switch_router_and_hard_router(self):
        for router in ("switch", "hard", "softmax"):
            self.run_layer_test(
                GatedExperts,
                {"num_experts": 3, "expert_units": 5, "router": router, "noise": "gaussian"},
                input_data=X[0],
                expected_output_shape=(4, 6),
                expected_num_losses=1,
            )

    def test_layer_contract_custom_expert(self):
        layer = self.run_layer_test(
            GatedExperts,
            {
                "num_experts": 3,
                "expert": keras.layers.Dense(5, activation="tanh"),
                "router": "switch",
            },
            input_data=X,
            expected_output_shape=(3, 4, 5),
            expected_num_trainable_weights=1 + 3 * 2,
        )
        self.assertEqual(len(layer.experts), 3)
        self.assertIsNone(layer.expert_mlp)

    def test_argument_errors(self):
        with self.assertRaises(ValueError):
            GatedExperts(4, 8, router="random")
        with self.assertRaises(ValueError):
            GatedExperts(4, 8, top_k=5)
        with self.assertRaises(ValueError):
            GatedExperts(4)  # no expert_units and no expert
        with self.assertRaises(ValueError):
            GatedExperts(4, 8, noise="uniform")
        with self.assertRaises(ValueError):
            GatedExperts(4, 8, train_capacity_factor=0)
        with self.assertRaises(ValueError):
            GatedExperts(2, 8, top_k=2, noise="noisy_top_k", balance_loss="shazeer")
        with self.assertRaises(ValueError):
            GatedExperts(2, 8, output_units=3, residual=True).build((None, 4))

    def test_default_router_starts_near_uniform(self):
        layer = GatedExperts(16, 8)
        layer.build((None, 64))
        kernel = ops.convert_to_numpy(layer.router_kernel)
        self.assertAllClose(kernel.std(), np.sqrt(0.1 / 64), rtol=0.2)
        noisy = GatedExperts(16, 8, noise="noisy_top_k")
        noisy.build((None, 64))
        self.assertAllEqual(noisy.router_kernel, np.zeros((64, 16)))
        self.assertAllEqual(noisy.noise_kernel, np.zeros((64, 16)))

    def test_variance_scaling_uses_each_experts_fans(self):
        layer = GatedExperts(64, 32, kernel_initializer="glorot_uniform")
        layer.build((None, 16))
        kernel = ops.convert_to_numpy(layer.expert_kernel_1)
        limit = math.sqrt(6 / (16 + 32))
        self.assertLessEqual(np.abs(kernel).max(), limit)
        self.assertGreater(np.abs(kernel).max(), 0.9 * limit)


class CustomExpertTest(TestCase):
    def test_copies_of_the_template(self):
        template = keras.layers.Dense(5, activation="tanh", name="my_dense")
        layer = GatedExperts(3, expert=template, router="switch")
        y = layer(X)
        self.assertEqual(tuple(y.shape), (3, 4, 5))
        self.assertFalse(template.built)  # a template only: never built or called
        self.assertEqual([e.name for e in layer.experts], ["expert_0", "expert_1", "expert_2"])
        self.assertEqual(len({id(e) for e in layer.experts}), 3)
        for e in layer.experts:
            self.assertIsInstance(e, keras.layers.Dense)
            self.assertEqual(e.units, 5)
            self.assertEqual(e.activation, keras.activations.tanh)
        # Unseeded initializers draw a seed per copy: the experts differ.
        kernels = [ops.convert_to_numpy(e.kernel) for e in layer.experts]
        self.assertFalse(np.allclose(kernels[0], kernels[1]))
        # Each expert is the template's layer on its own tokens.
        randomize(layer, seed=2)
        logits = X.reshape(-1, 6) @ ops.convert_to_numpy(layer.router_kernel)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        choice = probs.argmax(-1)
        out = ops.convert_to_numpy(layer(X)).reshape(-1, 5)
        for t, e in enumerate(choice):  # eval capacity 2.0: nothing dropped here
            w, b = (ops.convert_to_numpy(v) for v in (layer.experts[e].kernel, layer.experts[e].bias))
            expected = probs[t, e] * np.tanh(X.reshape(-1, 6)[t] @ w + b)
            self.assertAllClose(out[t], expected, atol=1e-5, rtol=1e-5)

    def test_config_stores_the_serialized_template(self):
        layer = GatedExperts(2, expert=keras.layers.Dense(4, name="inner"), router="hard")
        config = layer.get_config()
        expected = keras.saving.serialize_keras_object(keras.layers.Dense(4, name="inner"))
        self.assertEqual(config["expert"], expected)
        revived = GatedExperts.from_config(config)
        self.assertEqual(revived.get_config(), config)
        self.assertIsInstance(revived.experts[0], keras.layers.Dense)
        # The serialized dict is accepted by the constructor too.
        direct = GatedExperts(2, expert=config["expert"], router="hard")
        self.assertEqual(direct.get_config()["expert"], config["expert"])
        self.assertEqual(tuple(direct(X).shape), (3, 4, 4))

    def test_built_template_is_copied_unbuilt(self):
        template = keras.layers.Dense(3)
        template.build((None, 2))  # a different input width than the mixture's
        layer = GatedExperts(2, expert=template, router="switch")
        self.assertNotIn("build_config", layer.get_config()["expert"])
        self.assertEqual(tuple(layer(X).shape), (3, 4, 3))
        self.assertEqual(tuple(layer.experts[0].kernel.shape), (6, 3))

    def test_deepkit_layer_as_expert_saves_and_loads(self):
        from deepkit.layers import Maxout

        model = keras.Sequential(
            [keras.Input((4, 6)), GatedExperts(3, expert=Maxout(4, pieces=2), top_k=2)]
        )
        path = os.path.join(self.get_temp_dir(), "maxout_experts.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        self.assertIsInstance(loaded.layers[0].experts[0], Maxout)
        self.assertAllClose(loaded.predict(X, verbose=0), model.predict(X, verbose=0))

    def test_recipe_form_is_built_by_the_recipe_engine(self):
        spec = ObjectSpec(
            "GatedExperts",
            {"num_experts": 4, "expert": {"Dense": {"units": 8}}},
            "model.sequential[0].GatedExperts",
        )
        layer = names.build("layer", spec)
        self.assertIsInstance(layer, GatedExperts)
        self.assertEqual(len(layer.experts), 4)
        self.assertTrue(all(isinstance(e, keras.layers.Dense) for e in layer.experts))
        model = keras.Sequential([keras.Input((4, 6)), layer])
        model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=False)
        before = [ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
        history = model.fit(X, np.zeros((3, 4, 8), "float32"), batch_size=3, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        self.assertEqual(tuple(model.predict(X, verbose=0).shape), (3, 4, 8))
        after = [ops.convert_to_numpy(w) for w in model.trainable_weights]
        self.assertTrue(any(not np.array_equal(b, a) for b, a in zip(before, after)))
        self.assertEqual(layer.get_config()["expert"]["class_name"], "Dense")

    def test_expert_that_is_not_a_layer(self):
        for bad in (
            "Dense",
            {"Dense": {"units": 8}},  # the recipe form: the recipe engine builds it
            {"class_name": "GlorotUniform", "config": {}, "module": "keras.initializers"},
            {"class_name": "NoSuchLayer", "config": {}},
            keras.initializers.GlorotUniform(),
        ):
            with self.subTest(expert=repr(bad)):
                with self.assertRaisesRegex(ValueError, "expert"):
                    GatedExperts(2, expert=bad)
        with self.assertRaisesRegex(ValueError, "recipe engine"):
            GatedExperts(2, expert={"Dense": {"units": 8}})

    def test_output_units_must_match_the_expert(self):
        with self.assertRaisesRegex(ValueError, "output_units"):
            GatedExperts(2, expert=keras.layers.Dense(4), output_units=3).build((None, 6))


class DefaultExpertTest(TestCase):
    def test_default_expert_is_an_expert_mlp(self):
        layer = GatedExperts(4, 8, output_units=3, activation="tanh", seed=1)
        layer.build((None, 6))
        self.assertIsInstance(layer.expert_mlp, ExpertMLP)
        self.assertEqual(layer.expert_mlp.units, 8)
        self.assertEqual(layer.expert_mlp.output_dim, 3)
        self.assertIs(layer.expert_kernel_1, layer.expert_mlp.expert_kernel_1)
        self.assertEqual(tuple(layer.expert_kernel_2.shape), (4, 8, 3))
        self.assertEqual(
            layer.expert_kernel_1.path, f"{layer.name}/expert_mlp/expert_kernel_1"
        )
        # The router first, then the experts' four weights (optimizer order).
        names_ = [v.path.split("/")[-1] for v in layer.trainable_variables]
        self.assertEqual(
            names_,
            ["router_kernel", "expert_kernel_1", "expert_bias_1", "expert_kernel_2",
             "expert_bias_2"],
        )
        # The mixture's buffers go through the ExpertMLP call.
        buffers = np.random.default_rng(0).normal(size=(4, 5, 6)).astype("float32")
        self.assertAllClose(layer._run_experts(buffers), layer.expert_mlp(buffers))
        self.assertNotIn("expert_mlp", layer.get_config())

    def test_default_expert_follows_the_dtype_policy(self):
        layer = GatedExperts(4, 8, dtype="mixed_bfloat16")
        layer(X)
        self.assertEqual(layer.expert_mlp.compute_dtype, "bfloat16")
        self.assertEqual(layer.expert_kernel_1.dtype, "float32")


class NumericsTest(TestCase):
    def test_outputs_equal_a_per_token_loop(self):
        cases = [
            dict(router="top_k", top_k=2),
            dict(router="top_k", top_k=3),
            dict(router="switch"),
            dict(router="hard"),
            dict(router="softmax"),
            dict(router="top_k", top_k=2, output_units=5),
            dict(router="switch", residual=True),
            dict(router="top_k", top_k=2, dropped_tokens="zero"),
        ]
        for case in cases:
            for factor in (2.0, 0.5):  # 0.5 forces drops
                layer = GatedExperts(4, 7, eval_capacity_factor=factor, **case)
                layer.build(X.shape)
                randomize(layer)
                expected, _ = reference(layer, X)
                self.assertAllClose(layer(X), expected, atol=1e-4, rtol=1e-4, msg=str(case))
                if factor == 0.5:
                    unlimited, _ = reference(layer, X, factor=100.0)
                    self.assertFalse(
                        np.allclose(expected, unlimited), "the case meant to drop tokens dropped none"
                    )

    def test_training_capacity_factor_in_training(self):
        layer = GatedExperts(4, 7, router="switch", train_capacity_factor=0.5, balance_loss=None)
        layer.build(X.shape)
        randomize(layer, seed=3)
        expected, _ = reference(layer, X, training=True)
        self.assertAllClose(layer(X, training=True), expected, atol=1e-4, rtol=1e-4)

    def test_capacity_and_dropping_by_hand(self):
        # Every token prefers expert 0 (feature 0 > 0); capacity is
        # ceil(4 tokens * 1 / 2 experts * 1.0) = 2: tokens 0 and 1 are served
        # by expert 0, tokens 2 and 3 pass through unchanged.
        layer = GatedExperts(
            2, 3, router="hard", eval_capacity_factor=1.0, bias_initializer="ones"
        )
        layer.build((None, 2))
        layer.router_kernel.assign(np.array([[5.0, -5.0], [0.0, 0.0]], "float32"))
        x = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 0.0], [1.0, 1.0]], "float32")
        y = ops.convert_to_numpy(layer(x))
        self.assertAllClose(y[2:], x[2:])
        w = numpy_weights(layer)
        hidden = np.maximum(x[:2] @ w["expert_kernel_1"][0] + 1.0, 0)
        self.assertAllClose(y[:2], hidden @ w["expert_kernel_2"][0] + 1.0, atol=1e-5)
        # The same tokens with dropped_tokens="zero" give zeros.
        zero = GatedExperts(2, 3, router="hard", eval_capacity_factor=1.0, dropped_tokens="zero")
        zero.build((None, 2))
        zero.set_weights(layer.get_weights())
        self.assertAllClose(ops.convert_to_numpy(zero(x))[2:], np.zeros((2, 2)))

    def test_experts_without_tokens_get_zero_gradient(self):
        # Router sends every token to expert 0 or 1 (the sign of feature 0
        # decides); the constant feature 2 keeps experts 2 and 3 out.
        layer = GatedExperts(4, 5, router="switch", balance_loss=None, train_capacity_factor=4.0)
        layer.build((None, 3))
        randomize(layer, seed=4)
        layer.router_kernel.assign(
            np.array([[4.0, -4.0, 0, 0], [0, 0, 0, 0], [0, 0, -20.0, -20.0]], "float32")
        )
        x = np.array([[1.0, 0.5, 1], [-1.0, 2, 1], [2.0, 1, 1], [-0.5, 0, 1]], "float32")
        grads = weight_gradients(layer, x, lambda y: ops.sum(ops.square(y)), training=True)
        names = [v.path.split("/")[-1] for v in layer.trainable_variables]
        for name, grad in zip(names, grads):
            if name.startswith("expert_"):
                self.assertTrue(np.all(grad[2:] == 0), f"{name}: unused experts got gradient")
                self.assertGreater(np.abs(grad[:2]).sum(), 0, f"{name}: used experts got none")
        router_grad = grads[names.index("router_kernel")]
        self.assertGreater(np.abs(router_grad).sum(), 0)

    def test_masked_tokens_are_not_routed(self):
        mask = np.array([[1, 1, 0, 1], [0, 1, 1, 1], [1, 0, 0, 1]], bool)
        layer = GatedExperts(3, 4, top_k=2, eval_capacity_factor=0.75)
        layer.build(X.shape)
        randomize(layer, seed=5)
        expected, served = reference(layer, X, mask=mask)
        self.assertAllClose(layer(X, mask=mask), expected, atol=1e-4, rtol=1e-4)
        unmasked, _ = reference(layer, X)
        self.assertFalse(np.allclose(expected, unmasked), "the mask changed nothing")
        self.assertAllClose(expected[~mask], X[~mask])

    def test_mask_from_embedding_in_a_model(self):
        ids = np.array([[3, 5, 0, 0], [1, 2, 3, 0]], "int32")
        inputs = keras.Input((4,), dtype="int32")
        embedded = keras.layers.Embedding(8, 6, mask_zero=True)(inputs)
        layer = GatedExperts(3, 4, top_k=1, eval_capacity_factor=0.5)
        outputs = layer(embedded)
        model = keras.Model(inputs, [embedded, outputs])
        emb, out = (ops.convert_to_numpy(t) for t in model(ids))
        expected, _ = reference(layer, emb, mask=ids > 0)
        self.assertAllClose(out, expected, atol=1e-4, rtol=1e-4)

    def test_losses_equal_the_routing_functions(self):
        layer = GatedExperts(4, 5, top_k=2, balance_loss="switch", balance_loss_weight=0.5, z_loss_weight=0.25)
        layer.build(X.shape)
        randomize(layer, seed=6)
        layer(X, training=True)
        balance, z = (float(ops.convert_to_numpy(loss)) for loss in layer.losses)
        logits = X.reshape(-1, 6) @ numpy_weights(layer)["router_kernel"]
        expert_index, _, probs = routing.top_k_route(logits, 2)
        self.assertAllClose(balance, 0.5 * ops.convert_to_numpy(routing.switch_balance_loss(probs, expert_index)), rtol=1e-5)
        lse = np.log(np.exp(logits.astype("float64")).sum(-1))
        self.assertAllClose(z, 0.25 * np.mean(lse**2), rtol=1e-5)
        # No losses at inference.
        layer(X)
        self.assertEqual(len(layer.losses), 0)

    def test_statistics_accumulate_in_training_only(self):
        layer = GatedExperts(4, 5, router="switch", train_capacity_factor=0.5)
        layer.build(X.shape)
        randomize(layer, seed=7)
        _, served = reference(layer, X, training=True)
        layer(X, training=True)
        layer(X, training=True)
        layer(X)  # inference: not counted
        stats = layer.routing_statistics()
        self.assertEqual(stats["steps"], 2.0)
        logits = X.reshape(-1, 6) @ numpy_weights(layer)["router_kernel"]
        choice = logits.argmax(-1)
        fractions = np.bincount(choice, minlength=4) / len(choice)
        self.assertAllClose(stats["load"] / 2, fractions, atol=1e-6)
        self.assertAllClose(stats["dropped"] / 2, 1 - served.mean(), atol=1e-6)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        entropy = -(probs * np.log(probs)).sum(-1).mean()
        self.assertAllClose(stats["entropy"] / 2, entropy, atol=1e-5)

    def test_noise_only_in_training_and_reproducible(self):
        layer = GatedExperts(4, 5, noise="gaussian", noise_stddev=3.0, seed=11, balance_loss=None)
        layer.build(X.shape)
        randomize(layer, seed=8)
        self.assertAllClose(layer(X), layer(X))
        expected, _ = reference(layer, X)
        self.assertAllClose(layer(X), expected, atol=1e-4, rtol=1e-4)
        noisy = ops.convert_to_numpy(layer(X, training=True))
        self.assertFalse(np.allclose(noisy, expected, atol=1e-3))

    def test_mixed_precision_router_in_float32(self):
        layer = GatedExperts(4, 8, dtype="mixed_bfloat16")
        y = layer(X, training=True)
        self.assertEqual(layer.router_kernel.dtype, "float32")
        self.assertEqual(ops.convert_to_numpy(layer.router_kernel).dtype, np.float32)
        self.assertEqual(keras.backend.standardize_dtype(y.dtype), "bfloat16")
        for loss in layer.losses:
            self.assertEqual(keras.backend.standardize_dtype(loss.dtype), "float32")


def _softmax_warnings(caught):
    return [str(w.message) for w in caught if "softmax" in str(w.message)]


class SingleExpertTest(TestCase):
    """num_experts=1 (the dense baselines of the mixture recipes): gate 1 for
    every token and every router, no softmax over one logit (and so no Keras
    warning about it)."""

    def test_outputs_are_the_experts_and_nothing_warns(self):
        for router in ROUTERS:
            for training in (False, True):
                with self.subTest(router=router, training=training):
                    layer = GatedExperts(1, 5, router=router, top_k=1, z_loss_weight=1e-2)
                    layer.build(X.shape)
                    randomize(layer, seed=5)
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        out = layer(X, training=training)
                    self.assertEqual(_softmax_warnings(caught), [])
                    w = numpy_weights(layer)
                    hidden = np.maximum(X @ w["expert_kernel_1"][0] + w["expert_bias_1"][0], 0)
                    expected = hidden @ w["expert_kernel_2"][0] + w["expert_bias_2"][0]
                    self.assertAllClose(out, expected, atol=1e-5, rtol=1e-5)
                    self.assertAllClose(out, reference(layer, X, training=training)[0],
                                        atol=1e-5, rtol=1e-5)
                    if training:
                        stats = layer.routing_statistics()
                        self.assertAllClose(stats["load"], [1.0])
                        self.assertEqual(stats["dropped"], 0.0)
                        self.assertAllClose(stats["entropy"], 0.0, atol=1e-6)
                        # balance loss N * f * P = 1 * 1 * 1, z-loss from the logits
                        logits = X.reshape(-1, 6) @ w["router_kernel"]
                        self.assertAllClose(
                            [ops.convert_to_numpy(v) for v in layer.losses],
                            [0.01 * 1.0, 1e-2 * np.mean(logits[:, 0] ** 2)],
                            atol=1e-6, rtol=1e-5)

    def test_router_gets_a_zero_task_gradient(self):
        # As through a softmax over one logit: the gate does not depend on
        # the router, which learns only from the z-loss, if any.
        for router in ("switch", "hard"):
            layer = GatedExperts(1, 5, router=router, balance_loss=None)
            layer.build((None, 6))
            randomize(layer, seed=6)
            x = X.reshape(-1, 6)
            grads = weight_gradients(layer, x, lambda y: ops.sum(ops.square(y)), training=True)
            names = [v.path.split("/")[-1] for v in layer.trainable_variables]
            router_grad = grads[names.index("router_kernel")]
            self.assertIsNotNone(router_grad)
            self.assertAllClose(router_grad, np.zeros((6, 1)), atol=0)
            self.assertGreater(np.abs(grads[names.index("expert_kernel_1")]).sum(), 0)

    def test_fit_of_the_recipes_dense_baselines_warns_nothing(self):
        y = np.zeros((3, 4, 2), "float32")
        for kwargs in (
            {"router": "switch", "balance_loss": None, "residual": True},
            {"router": "hard", "balance_loss": None, "output_units": 2},
        ):
            with self.subTest(**kwargs):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    layers = [keras.Input((4, 6)), GatedExperts(1, 8, seed=1, **kwargs)]
                    if kwargs.get("residual"):
                        layers.append(keras.layers.Dense(2))
                    model = keras.Sequential(layers)
                    model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=False)
                    model.fit(X, y, batch_size=2, epochs=1, verbose=0)
                    model.predict(X, verbose=0)
                messages = [str(w.message) for w in caught]
                self.assertEqual(_softmax_warnings(caught), [])
                self.assertEqual([m for m in messages if "Gradients do not exist" in m], [])


class TrainingTest(TestCase):
    def _model(self, **kwargs):
        return keras.Sequential(
            [
                keras.Input((4, 6)),
                GatedExperts(4, 8, seed=3, **kwargs),
                keras.layers.Dense(2),
            ]
        )

    def test_jit_compiled_fit(self):
        y = np.random.default_rng(2).normal(size=(3, 4, 2)).astype("float32")
        for kwargs in (
            {"noise": "noisy_top_k", "balance_loss": "shazeer", "z_loss_weight": 1e-3},
            {"router": "switch"},
        ):
            model = self._model(**kwargs)
            model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=True)
            before = [ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
            history = model.fit(X, y, batch_size=2, epochs=2, verbose=0)
            self.assertTrue(np.all(np.isfinite(history.history["loss"])))
            after = [ops.convert_to_numpy(w) for w in model.trainable_weights]
            self.assertTrue(all(not np.array_equal(b, a) for b, a in zip(before, after)))
            stats = model.layers[0].routing_statistics()
            self.assertEqual(stats["steps"], 4.0)  # two batches (2 + 1) per epoch
            self.assertAllClose(stats["load"].sum(), 4.0, atol=1e-5)

    def test_fit_with_dynamic_batch_shapes(self):
        # Without XLA, TF retraces with an unknown batch size for the last,
        # smaller batch: capacity is then computed as a tensor.
        x = np.random.default_rng(3).normal(size=(7, 4, 6)).astype("float32")
        y = np.zeros((7, 4, 2), "float32")
        model = self._model()
        model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=False)
        history = model.fit(x, y, batch_size=3, epochs=3, verbose=0)
        self.assertTrue(np.all(np.isfinite(history.history["loss"])))
        self.assertEqual(model.layers[0].routing_statistics()["steps"], 9.0)
        layer = model.layers[0]
        expected, _ = reference(layer, x)
        predicted = model.layers[0](x)
        self.assertAllClose(predicted, expected, atol=1e-4, rtol=1e-4)

    def test_save_and_load_keep_outputs_and_statistics(self):
        model = self._model(router="top_k", top_k=1)
        model.compile("sgd", "mse")
        model.fit(X, np.zeros((3, 4, 2), "float32"), epochs=1, verbose=0)
        path = os.path.join(self.get_temp_dir(), "moe.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        self.assertAllClose(loaded.predict(X, verbose=0), model.predict(X, verbose=0))
        self.assertAllClose(
            loaded.layers[0].routing_statistics()["load"],
            model.layers[0].routing_statistics()["load"],
        )


EXPERT_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import keras
    from deepkit.layers import GatedExperts

    devices = keras.distribution.list_devices()
    assert len(devices) == 2, devices
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")

    def model():
        return keras.Sequential(
            [keras.Input((6,)), GatedExperts(4, 8, top_k=2, name="moe")]
        )

    plain = model()
    weights = plain.get_weights()
    expected = plain.predict(x, verbose=0)

    mesh = keras.distribution.DeviceMesh((2,), ["experts"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*moe/expert_mlp/expert_kernel_.*"] = ("experts", None, None)
    layout_map[".*moe/expert_mlp/expert_bias_.*"] = ("experts", None)
    distribution = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="experts"
    )
    with distribution.scope():
        sharded = model()
        sharded.set_weights(weights)
        kernel = sharded.layers[0].expert_kernel_1.value
        shards = {tuple(s.data.shape) for s in kernel.addressable_shards}
        assert shards == {(2, 6, 8)}, shards
        assert len(kernel.sharding.device_set) == 2
        got = sharded.predict(x, verbose=0)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
        sharded.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=True)
        plain.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=True)
        # shuffle=False: token order decides which tokens overflow an expert.
        loss = sharded.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        loss = loss.history["loss"][0]
    plain_loss = plain.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    plain_loss = plain_loss.history["loss"][0]
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-5)
    for a, b in zip(sharded.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    print("EXPERT_PARALLEL_OK")
    """
)


class ExpertParallelTest(TestCase):
    def test_experts_sharded_over_two_devices_match_unsharded(self):
        # Always run with JAX in a subprocess (TF's backend is installed too),
        # with two host devices.
        env = dict(os.environ)
        env["KERAS_BACKEND"] = "jax"
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        env["JAX_PLATFORMS"] = "cpu"
        result = subprocess.run(
            [sys.executable, "-c", EXPERT_PARALLEL_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        self.assertIn("EXPERT_PARALLEL_OK", result.stdout)

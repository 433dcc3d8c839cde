"""Tests for deepkit.layers.stochastic: StochasticBinaryGate, NoisyReLU, REINFORCE."""

import keras
import numpy as np
from keras import ops

from deepkit.layers import NoisyReLU, StochasticBinaryGate
from deepkit.layers import stochastic
from deepkit.testing import TestCase, input_gradient


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


A = np.linspace(-3, 3, 24, dtype="float32").reshape(4, 6)
UPSTREAM = np.arange(1, 25, dtype="float32").reshape(4, 6) / 10


class GateContractTest(TestCase):
    def test_contract_each_estimator(self):
        for estimator in stochastic.ESTIMATORS:
            self.run_layer_test(
                StochasticBinaryGate,
                {"estimator": estimator, "seed": 3},
                input_data=A,
                expected_output_shape=(4, 6),
                expected_num_trainable_weights=0,
                expected_num_losses=1,
                run_training_check=False,  # no weights of its own
            )

    def test_noisy_relu_contract(self):
        self.run_layer_test(
            NoisyReLU,
            {"stddev": 0.5, "l1": 1e-3, "seed": 2},
            input_data=A,
            expected_output_shape=(4, 6),
            expected_num_losses=1,
            run_training_check=False,
        )

    def test_argument_errors(self):
        with self.assertRaises(ValueError):
            StochasticBinaryGate("gumbel")
        with self.assertRaises(ValueError):
            StochasticBinaryGate(sparsity_target=1.0)
        with self.assertRaises(ValueError):
            StochasticBinaryGate(inference="median")
        with self.assertRaises(ValueError):
            NoisyReLU(stddev=-1.0)


class GateEstimatorsTest(TestCase):
    def _gradient(self, estimator, seed=5):
        gate = StochasticBinaryGate(estimator, sparsity_weight=0.0, seed=seed)

        def fn(a):
            out = gate(a, training=True)
            return ops.sum(ops.multiply(out, UPSTREAM)), out

        return input_gradient(fn, A, has_aux=True)

    def test_samples_are_binary_with_probability_sigmoid(self):
        gate = StochasticBinaryGate(seed=1)
        a = np.tile(np.array([[-2.0, -0.5, 0.0, 1.0, 3.0]], "float32"), (20000, 1))
        h = ops.convert_to_numpy(gate(a, training=True))
        self.assertTrue(np.all((h == 0) | (h == 1)))
        p = sigmoid(a[0])
        # Within 5 standard errors of a Bernoulli mean.
        self.assertTrue(
            np.all(np.abs(h.mean(axis=0) - p) < 5 * np.sqrt(p * (1 - p) / len(a))),
            (h.mean(axis=0), p),
        )

    def test_straight_through_passes_the_gradient_unchanged(self):
        grad, out = self._gradient("straight_through")
        self.assertTrue(np.all((out == 0) | (out == 1)))
        self.assertAllClose(grad, UPSTREAM)

    def test_straight_through_sigmoid_multiplies_by_the_sigmoid_derivative(self):
        grad, out = self._gradient("straight_through_sigmoid")
        self.assertTrue(np.all((out == 0) | (out == 1)))
        p = sigmoid(A)
        self.assertAllClose(grad, UPSTREAM * p * (1 - p), atol=1e-6)

    def test_stochastic_times_smooth(self):
        grad, out = self._gradient("stochastic_times_smooth")
        p = sigmoid(A)
        on = out > 0
        # h = sqrt(sigm(a)) * b, b in {0, 1}
        self.assertAllClose(out[on], np.sqrt(p)[on], atol=1e-6)
        self.assertTrue(0 < on.mean() < 1)
        # d sqrt(sigm(a)) / da = sqrt(sigm(a)) (1 - sigm(a)) / 2, times b.
        self.assertAllClose(grad, UPSTREAM * on * np.sqrt(p) * (1 - p) / 2, atol=1e-6)

    def test_reinforce_output_has_no_pathwise_gradient(self):
        grad, out = self._gradient("reinforce")
        self.assertTrue(np.all((out == 0) | (out == 1)))
        self.assertAllClose(grad, np.zeros_like(A))

    def test_reinforce_keeps_the_step_terms_in_training_only(self):
        gate = StochasticBinaryGate("reinforce", seed=2)
        out = gate(A, training=True)
        samples, logits = gate.pending_reinforce_terms()
        self.assertAllClose(samples, out)
        self.assertAllClose(logits, A)
        gate(A, training=False)
        self.assertIsNone(gate.pending_reinforce_terms())

    def test_reinforce_loss_finds_gates_nested_in_plain_layers(self):
        class Block(keras.layers.Layer):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.gate = StochasticBinaryGate("reinforce", seed=3, name="nested_gate")

            def call(self, x, training=None):
                return self.gate(x, training=training)

        inputs = keras.Input((6,))
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(
            Block()(inputs)))
        model.compile("sgd", "sparse_categorical_crossentropy")
        y = np.array([0, 1, 1, 0])
        self.assertIsNone(stochastic.reinforce_loss(model, y, model(A)))  # inference call
        y_pred = model(A, training=True)
        gate = model.layers[1].gate
        samples, logits = gate.pending_reinforce_terms()
        per_example = keras.losses.sparse_categorical_crossentropy(y, y_pred)
        self.assertAllClose(stochastic.reinforce_loss(model, y, y_pred),
                            stochastic.reinforce_surrogate(per_example, samples, logits),
                            atol=1e-6)

    def test_reinforce_surrogate_gradient_is_the_estimator(self):
        rng = np.random.default_rng(0)
        samples = (rng.random(A.shape) < sigmoid(A)).astype("float32")
        loss = rng.random(4).astype("float32") * 3

        def fn(a):
            return stochastic.reinforce_surrogate(loss, samples, a), a

        grad, _ = input_gradient(fn, A, has_aux=True)
        p = sigmoid(A.astype("float64"))
        w = (samples - p) ** 2
        baseline = np.zeros_like(p)
        for x in range(4):
            others = [j for j in range(4) if j != x]
            baseline[x] = (w[others] * loss[others, None]).sum(0) / (w[others].sum(0) + 1e-6)
        expected = (samples - p) * (loss[:, None] - baseline) / 4
        self.assertAllClose(grad, expected, atol=1e-5, rtol=1e-4)
        self.assertAllClose(
            stochastic.variance_minimizing_baseline(loss, samples, p.astype("float32")),
            baseline,
            atol=1e-5,
            rtol=1e-4,
        )

    def test_reinforce_surrogate_is_unbiased_on_a_toy_problem(self):
        # One unit, loss L = (h - 0.8)^2 so dE[L]/da = p(1-p) (L(1) - L(0)).
        a = np.full((4000, 1), 0.3, "float32")
        rng = np.random.default_rng(1)
        samples = (rng.random(a.shape) < sigmoid(a)).astype("float32")
        loss = ((samples - 0.8) ** 2)[:, 0]

        def fn(logits):
            return stochastic.reinforce_surrogate(loss, samples, logits), logits

        grad, _ = input_gradient(fn, a, has_aux=True)
        p = sigmoid(0.3)
        exact = p * (1 - p) * ((1 - 0.8) ** 2 - 0.8**2)
        self.assertAllClose(grad.sum(), exact, atol=0.02)


class SparsityTest(TestCase):
    def test_kl_penalty_value(self):
        gate = StochasticBinaryGate(sparsity_target=0.2, sparsity_weight=0.5, seed=1)
        gate(A, training=True)
        rho_hat = sigmoid(A).mean(axis=0)
        kl = 0.2 * np.log(0.2 / rho_hat) + 0.8 * np.log(0.8 / (1 - rho_hat))
        self.assertEqual(len(gate.losses), 1)
        self.assertAllClose(gate.losses[0], 0.5 * kl.sum(), rtol=1e-5)
        gate(A)
        self.assertEqual(len(gate.losses), 0)

    def test_kl_penalty_pushes_towards_the_target(self):
        def fn(a):
            return stochastic.sparsity_penalty(ops.sigmoid(a), 0.1), a

        grad, _ = input_gradient(fn, np.zeros((8, 3), "float32"), has_aux=True)
        self.assertTrue(np.all(grad > 0), "at p = 0.5 > 0.1 the penalty must lower a")
        self.assertAllClose(stochastic.bernoulli_kl(0.1, np.float32(0.1)), 0.0, atol=1e-7)

    def test_noisy_relu(self):
        layer = NoisyReLU(stddev=1.0, l1=0.01, seed=4)
        self.assertAllClose(layer(A), np.maximum(A, 0))
        zeros = np.zeros((20000, 2), "float32")
        out = ops.convert_to_numpy(layer(zeros, training=True))
        self.assertGreaterEqual(out.min(), 0.0)
        # E[max(0, e)] for e ~ N(0, 1) is 1/sqrt(2 pi); P(out > 0) = 1/2.
        self.assertAllClose(out.mean(), 1 / np.sqrt(2 * np.pi), atol=0.02)
        self.assertAllClose((out > 0).mean(), 0.5, atol=0.02)
        self.assertAllClose(layer.losses[0], 0.01 * out.sum(axis=1).mean(), rtol=1e-5)


class GateInferenceTest(TestCase):
    def test_threshold(self):
        gate = StochasticBinaryGate(inference="threshold", threshold=0.7)
        self.assertAllEqual(gate(A), (sigmoid(A) > 0.7).astype("float32"))
        self.assertAllEqual(gate(A), gate(A))

    def test_top_fraction_turns_on_the_target_fraction(self):
        a = np.random.default_rng(2).normal(size=(5, 20)).astype("float32")
        gate = StochasticBinaryGate(inference="top_fraction", sparsity_target=0.1)
        out = ops.convert_to_numpy(gate(a))
        self.assertAllEqual(out.sum(axis=1), np.full(5, 2.0))
        largest = np.argsort(-a, axis=1)[:, :2]
        self.assertTrue(np.all(np.take_along_axis(out, largest, axis=1) == 1))

    def test_expectation_and_stochastic_times_smooth(self):
        self.assertAllClose(StochasticBinaryGate(inference="expectation")(A), sigmoid(A), atol=1e-6)
        sts = StochasticBinaryGate("stochastic_times_smooth", inference="threshold")
        p = sigmoid(A)
        self.assertAllClose(sts(A), np.sqrt(p) * (p > 0.5), atol=1e-6)

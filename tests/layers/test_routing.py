"""Tests for deepkit.layers.routing: routers, balance losses, capacity, dispatch."""

import math

import keras
import numpy as np
from keras import ops

from deepkit.layers import routing
from deepkit.testing import TestCase
from deepkit.testing import input_gradient as gradient


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


PROBS = np.array(
    [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], "float32"
)
LOGITS = np.log(PROBS)


class RoutersTest(TestCase):
    def test_top_k_route_renormalizes_the_kept_probabilities(self):
        expert_index, gates, probs = routing.top_k_route(LOGITS, 2)
        self.assertAllEqual(expert_index, [[0, 1], [1, 2], [0, 1], [2, 0]])
        self.assertAllClose(
            gates,
            [[7 / 9, 2 / 9], [6 / 9, 3 / 9], [6 / 9, 3 / 9], [0.6 / 0.8, 0.2 / 0.8]],
            atol=1e-6,
        )
        self.assertAllClose(probs, PROBS, atol=1e-6)
        self.assertEqual(ops.convert_to_numpy(expert_index).dtype, np.int32)

    def test_top_k_route_without_normalization_keeps_probabilities(self):
        _, gates, _ = routing.top_k_route(LOGITS, 2, normalize=False)
        self.assertAllClose(gates, [[0.7, 0.2], [0.6, 0.3], [0.6, 0.3], [0.6, 0.2]], atol=1e-6)

    def test_switch_route_is_top1_with_the_router_probability(self):
        expert_index, gates, _ = routing.switch_route(LOGITS)
        self.assertAllEqual(expert_index, [[0], [1], [0], [2]])
        self.assertAllClose(gates, [[0.7], [0.6], [0.6], [0.6]], atol=1e-6)

    def test_softmax_route_uses_every_expert(self):
        expert_index, gates, probs = routing.softmax_route(LOGITS)
        self.assertAllEqual(expert_index, np.tile(np.arange(3), (4, 1)))
        self.assertAllClose(gates, PROBS, atol=1e-6)
        self.assertAllClose(probs, PROBS, atol=1e-6)

    def test_hard_route_has_weight_one_and_a_straight_through_gradient(self):
        expert_index, gates, _ = routing.hard_route(LOGITS)
        self.assertAllEqual(expert_index, [[0], [1], [0], [2]])
        self.assertAllEqual(gates, np.ones((4, 1)))
        weights = np.array([1.0, 2.0, 3.0, 4.0], "float32")

        def hard(logits):
            return ops.sum(ops.multiply(routing.hard_route(logits)[1][:, 0], weights))

        def chosen_probability(logits):
            probs = ops.softmax(logits, axis=-1)
            return ops.sum(ops.multiply(ops.max(probs, axis=-1), weights))

        self.assertAllClose(
            gradient(hard, LOGITS), gradient(chosen_probability, LOGITS), atol=1e-6
        )
        self.assertGreater(np.abs(gradient(hard, LOGITS)).sum(), 0.1)

    def test_noisy_logits(self):
        clean = np.array([[1.0, -1.0]], "float32")
        noise = np.array([[0.5, 2.0]], "float32")
        scale = np.array([[2.0, 0.1]], "float32")
        self.assertAllClose(routing.noisy_logits(clean, noise, scale), [[2.0, -0.8]], atol=1e-6)


class BalanceLossesTest(TestCase):
    def test_switch_balance_loss_by_hand(self):
        # Top-1 choices 0, 1, 0, 2: f = (1/2, 1/4, 1/4); P = column means.
        expert_index, _, probs = routing.switch_route(LOGITS)
        loss = routing.switch_balance_loss(probs, expert_index)
        expected = 3 * (0.5 * 0.4 + 0.25 * 0.325 + 0.25 * 0.275)
        self.assertAllClose(loss, expected, atol=1e-6)

    def test_switch_balance_loss_is_one_when_uniform(self):
        probs = np.full((6, 3), 1 / 3, "float32")
        expert_index = np.array([[0], [1], [2], [0], [1], [2]], "int32")
        self.assertAllClose(routing.switch_balance_loss(probs, expert_index), 1.0, atol=1e-6)

    def test_switch_balance_loss_ignores_masked_tokens(self):
        expert_index, _, probs = routing.switch_route(LOGITS)
        valid = np.array([True, True, False, True])
        masked = routing.switch_balance_loss(probs, expert_index, valid)
        subset = routing.switch_balance_loss(probs[valid], ops.convert_to_numpy(expert_index)[valid])
        self.assertAllClose(masked, subset, atol=1e-6)

    def test_switch_balance_loss_gradient_flows_through_probabilities_only(self):
        expert_index = np.array([[0], [1], [0], [2]], "int32")

        def loss(logits):
            return routing.switch_balance_loss(ops.softmax(logits, axis=-1), expert_index)

        # d/dP_i of N Σ f_i P_i is N f_i; P_i = mean_x p_i(x).
        f = np.array([0.5, 0.25, 0.25])
        p = PROBS.astype("float64")
        upstream = 3 * f / 4  # d loss / d p(x)_i, the same for every token
        expected = p * (upstream - (p * upstream).sum(axis=1, keepdims=True))
        self.assertAllClose(gradient(loss, LOGITS), expected, atol=1e-6)

    def test_expert_fractions_count_every_choice(self):
        expert_index = np.array([[0, 1], [0, 2], [1, 0]], "int32")
        self.assertAllClose(routing.expert_fractions(expert_index, 4), [0.5, 2 / 6, 1 / 6, 0.0])

    def test_cv_squared(self):
        self.assertAllClose(routing.cv_squared(np.array([1.0, 2.0, 3.0])), (2 / 3) / 4, atol=1e-7)
        self.assertAllClose(routing.cv_squared(np.array([5.0, 5.0])), 0.0)

    def test_importance_and_importance_loss(self):
        expert_index = np.array([[0, 1], [1, 2], [0, 2]], "int32")
        gates = np.array([[0.6, 0.4], [0.9, 0.1], [0.5, 0.5]], "float32")
        imp = routing.importance(expert_index, gates, 4)
        self.assertAllClose(imp, [1.1, 1.3, 0.6, 0.0], atol=1e-6)
        values = np.array([1.1, 1.3, 0.6, 0.0])
        expected = values.var() / values.mean() ** 2
        self.assertAllClose(
            routing.importance_loss(expert_index, gates, 4), expected, rtol=1e-5
        )
        valid = np.array([True, False, True])
        self.assertAllClose(
            routing.importance(expert_index, gates, 4, valid), [1.1, 0.4, 0.5, 0.0], atol=1e-6
        )

    def test_load_probabilities_by_hand(self):
        phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
        clean = np.array([[1.0, 0.0, -1.0]], "float32")
        noisy = np.array([[1.5, 0.2, -0.5]], "float32")
        # k=1: expert 0 is in the top 1, so its threshold is the 2nd largest
        # H (0.2); the others' threshold is the largest H (1.5).
        p1 = routing.load_probabilities(clean, noisy, 1.0, 1)
        self.assertAllClose(p1, [[phi(0.8), phi(-1.5), phi(-2.5)]], atol=1e-6)
        # k=2 with per-entry noise scales: experts 0 and 1 are in; threshold
        # for them is the 3rd largest (-0.5), for expert 2 the 2nd (0.2).
        scale = np.array([[2.0, 1.0, 0.5]], "float32")
        p2 = routing.load_probabilities(clean, noisy, scale, 2)
        self.assertAllClose(p2, [[phi(0.75), phi(0.5), phi(-2.4)]], atol=1e-6)
        values = np.array([phi(0.75), phi(0.5), phi(-2.4)])
        self.assertAllClose(
            routing.load_loss(clean, noisy, scale, 2),
            values.var() / values.mean() ** 2,
            rtol=1e-5,
        )

    def test_load_loss_needs_fewer_choices_than_experts(self):
        with self.assertRaises(ValueError):
            routing.load_probabilities(np.zeros((2, 3), "float32"), np.zeros((2, 3), "float32"), 1.0, 3)

    def test_router_z_loss_by_hand(self):
        logits = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]], "float32")
        lse = np.log(np.exp(logits).sum(axis=1))
        self.assertAllClose(routing.router_z_loss(logits), np.mean(lse**2), rtol=1e-6)
        valid = np.array([True, False, True])
        self.assertAllClose(
            routing.router_z_loss(logits, valid), np.mean(lse[[0, 2]] ** 2), rtol=1e-6
        )

    def test_router_entropy(self):
        probs = np.array([[0.5, 0.5], [1.0, 0.0]], "float32")
        self.assertAllClose(routing.router_entropy(probs), math.log(2) / 2, atol=1e-6)


class CapacityTest(TestCase):
    def test_static_capacity(self):
        self.assertEqual(routing.expert_capacity(4096, 64, 1.25, 2), 160)
        self.assertEqual(routing.expert_capacity(10, 1, 1.1), 10)  # clipped to T
        self.assertEqual(routing.expert_capacity(100, 10, 1.1), 11)  # exactly 11, not 12
        self.assertEqual(routing.expert_capacity(10, 4, 1.0, 1), 3)
        self.assertEqual(routing.expert_capacity(3, 100, 1.0), 1)
        self.assertIsInstance(routing.expert_capacity(7, 3, 1.3, 2), int)

    def test_dynamic_capacity_matches_static(self):
        for tokens in (1, 5, 10, 37, 100, 4096):
            for experts, factor, k in ((4, 1.25, 2), (10, 1.1, 1), (3, 2.0, 1), (8, 0.5, 2)):
                static = routing.expert_capacity(tokens, experts, factor, k)
                dynamic = routing.expert_capacity(
                    ops.convert_to_tensor(tokens, "int32"), experts, factor, k
                )
                self.assertEqual(int(ops.convert_to_numpy(dynamic)), static, (tokens, experts, factor, k))


def reference_positions(expert_index, num_experts, valid=None):
    tokens, k = expert_index.shape
    counts = np.zeros(num_experts + 1, int)
    position = np.zeros_like(expert_index)
    for choice in range(k):
        for t in range(tokens):
            if valid is not None and not valid[t]:
                position[t, choice] = tokens * k
                continue
            e = expert_index[t, choice]
            position[t, choice] = counts[e]
            counts[e] += 1
    return position


class DispatchTest(TestCase):
    EXPERT_INDEX = np.array([[0, 1], [0, 2], [1, 0], [0, 1], [2, 0]], "int32")

    def test_positions_first_choices_before_second_choices(self):
        position = routing.positions_in_expert(self.EXPERT_INDEX, 3)
        self.assertAllEqual(position, [[0, 1], [1, 1], [0, 3], [2, 2], [0, 4]])

    def test_masked_tokens_take_no_place(self):
        valid = np.array([True, False, True, True, True])
        position = routing.positions_in_expert(self.EXPERT_INDEX, 3, valid)
        self.assertAllEqual(position, [[0, 1], [10, 10], [0, 2], [1, 2], [0, 3]])

    def test_positions_match_a_loop_on_random_routes(self):
        rng = np.random.default_rng(3)
        for tokens, experts, k in ((17, 5, 2), (40, 3, 1), (9, 8, 3)):
            expert_index = np.stack(
                [rng.permutation(experts)[:k] for _ in range(tokens)]
            ).astype("int32")
            valid = rng.random(tokens) > 0.3
            self.assertAllEqual(
                routing.positions_in_expert(expert_index, experts),
                reference_positions(expert_index, experts),
            )
            self.assertAllEqual(
                routing.positions_in_expert(expert_index, experts, valid),
                reference_positions(expert_index, experts, valid),
            )

    def test_slots_and_drops(self):
        position = routing.positions_in_expert(self.EXPERT_INDEX, 3)
        slot, keep = routing.dispatch_slots(self.EXPERT_INDEX, position, 2)
        self.assertAllEqual(
            keep, [[True, True], [True, True], [True, False], [False, False], [True, False]]
        )
        self.assertAllEqual(slot, [[0, 3], [1, 5], [2, 0], [0, 0], [4, 0]])

    def test_dispatch_and_combine_by_hand(self):
        position = routing.positions_in_expert(self.EXPERT_INDEX, 3)
        slot, keep = routing.dispatch_slots(self.EXPERT_INDEX, position, 2)
        tokens = np.arange(10, dtype="float32").reshape(5, 2)
        buffer = routing.dispatch(tokens, slot, keep, 6)
        # Expert 0: tokens 0, 1; expert 1: token 2, then token 0's 2nd choice;
        # expert 2: token 4, then token 1's 2nd choice.
        self.assertAllEqual(buffer, tokens[[0, 1, 2, 0, 4, 1]])
        # An empty slot is zero.
        slot_small, keep_small = routing.dispatch_slots(self.EXPERT_INDEX[:1], position[:1], 2)
        self.assertAllEqual(
            routing.dispatch(tokens[:1], slot_small, keep_small, 6),
            [[0, 1], [0, 0], [0, 0], [0, 1], [0, 0], [0, 0]],
        )
        outputs = np.arange(12, dtype="float32").reshape(6, 2) * 10
        gates = np.array([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.5, 0.5], [0.9, 0.1]], "float32")
        combined = routing.combine(outputs, slot, keep, gates)
        expected = np.stack(
            [
                0.6 * outputs[0] + 0.4 * outputs[3],
                0.7 * outputs[1] + 0.3 * outputs[5],
                0.8 * outputs[2],
                np.zeros(2),
                0.9 * outputs[4],
            ]
        )
        self.assertAllClose(combined, expected, atol=1e-5)

    def test_run_in_expert_buffers_matches_a_per_token_loop(self):
        # Expert e maps a token x to x * (e + 1) + e. Capacity 2 drops four
        # assignments: both of token 3's (its expert 0 is full by then, and
        # second choices come after first choices), and the second choices
        # of tokens 2 and 4.
        tokens = np.arange(10, dtype="float32").reshape(5, 2) + 1.0
        gates = np.array([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.5, 0.5], [0.9, 0.1]], "float32")
        scale = np.arange(1, 4, dtype="float32")

        def run_experts(buffer):
            self.assertEqual(tuple(buffer.shape), (3, 2, 2))
            return buffer * scale[:, None, None] + (scale - 1.0)[:, None, None]

        outputs, keep = routing.run_in_expert_buffers(
            tokens, self.EXPERT_INDEX, gates, 3, 2, run_experts
        )
        position = np.asarray(routing.positions_in_expert(self.EXPERT_INDEX, 3))
        expected = np.zeros((5, 2), "float32")
        for t in range(5):
            for j in range(2):
                e = int(self.EXPERT_INDEX[t, j])
                if position[t, j] < 2:
                    expected[t] += gates[t, j] * (tokens[t] * (e + 1) + e)
        self.assertAllEqual(keep, position < 2)
        self.assertEqual(int(np.sum(~np.asarray(keep))), 4)
        self.assertAllEqual(outputs[3], [0.0, 0.0])
        self.assertAllClose(outputs, expected, atol=1e-5)

    def test_dispatch_gradient_is_the_scatter_add(self):
        position = routing.positions_in_expert(self.EXPERT_INDEX, 3)
        slot, keep = routing.dispatch_slots(self.EXPERT_INDEX, position, 2)
        tokens = np.arange(10, dtype="float32").reshape(5, 2)
        weights = np.arange(1, 13, dtype="float32").reshape(6, 2)

        def fn(x):
            return ops.sum(ops.multiply(routing.dispatch(x, slot, keep, 6), weights))

        # Token t's gradient is the sum of the weights of the slots it fills.
        expected = np.stack(
            [weights[0] + weights[3], weights[1] + weights[5], weights[2], np.zeros(2), weights[4]]
        )
        self.assertAllClose(gradient(fn, tokens), expected)

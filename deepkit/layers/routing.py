"""Routers, load-balancing losses and token dispatch for mixtures of experts.

Small pure functions of tensors (`keras.ops` only), each tested on its own and
used by `deepkit.layers.GatedExperts`. Shapes use these letters:

- ``T``: number of tokens (all leading dimensions of the input flattened);
- ``E``: number of experts;
- ``k``: experts chosen per token;
- ``C``: capacity, the number of tokens one expert can take in one call.

A route is a pair ``(expert_index, gates)`` of shape ``[T, k]``: the experts
chosen for each token, best first, and the weight of each choice in the
token's output. ``probs`` is the router's full softmax, ``[T, E]``.

Dispatch never builds a ``[T, E, C]`` one-hot tensor: each (token, choice)
gets a *slot* ``expert * C + position`` in a ``[E * C]`` buffer, the position
being the count of earlier assignments to the same expert (computed with one
sort); tokens are gathered into the buffer with `keras.ops.take`, and expert
outputs gathered back the same way. The cost grows with ``T * k``, not with
``E``.

References:
    Shazeer et al. 2017, "Outrageously Large Neural Networks: The
    Sparsely-Gated Mixture-of-Experts Layer", arXiv:1701.06538.
    Lepikhin et al. 2020, "GShard", arXiv:2006.16668 (positions: top-1
    choices before top-2 choices).
    Fedus, Zoph, Shazeer 2021, "Switch Transformers", arXiv:2101.03961.
    Zoph et al. 2022, "ST-MoE", arXiv:2202.08906 (router z-loss).
"""

import math
from fractions import Fraction

from keras import ops

_EPSILON = 1e-10


# ---------------------------------------------------------------- routers


def top_k_route(logits, k, normalize=True):
    """Top-k routing: the ``k`` largest router probabilities of each token.

    Args:
        logits: router logits, ``[T, E]``.
        k: experts per token, ``1 <= k <= E``.
        normalize: if True the kept probabilities are renormalized to sum to
            one, which is Shazeer et al.'s ``softmax(KeepTopK(H, k))``
            (Eq. 3-4); if False they are the raw softmax probabilities (GShard
            and Switch keep them so).

    Returns:
        ``(expert_index, gates, probs)``: int32 ``[T, k]``, ``[T, k]`` and
        ``[T, E]`` (the full softmax, for balance losses).

    Example:

    >>> expert_index, gates, probs = top_k_route(ops.ones((3, 4)), k=2)
    """
    probs = ops.softmax(ops.cast(logits, "float32"), axis=-1)
    values, expert_index = ops.top_k(probs, k)
    if normalize:
        values = values / ops.sum(values, axis=-1, keepdims=True)
    return ops.cast(expert_index, "int32"), values, probs


def switch_route(logits):
    """Switch routing (Fedus et al. 2021, Eq. 1-2): top-1, gate = p_i(x).

    The gate is the router probability of the chosen expert, not
    renormalized, so the router gets a gradient through the output.

    Args:
        logits: router logits, ``[T, E]``.

    Returns:
        ``(expert_index, gates, probs)`` with ``k = 1``.
    """
    return top_k_route(logits, 1, normalize=False)


def softmax_route(logits):
    """Dense softmax gating (Jacobs et al. 1991): every expert, weight p_i(x).

    Args:
        logits: router logits, ``[T, E]``.

    Returns:
        ``(expert_index, gates, probs)`` with ``k = E``: expert ``j`` in
        column ``j`` and ``gates == probs``.
    """
    probs = ops.softmax(ops.cast(logits, "float32"), axis=-1)
    num_experts = ops.shape(logits)[-1]
    expert_index = ops.zeros_like(probs, dtype="int32") + ops.arange(
        num_experts, dtype="int32"
    )
    return expert_index, probs, probs


def hard_route(logits):
    """Hard assignment (Collobert, Bengio, Bengio 2002): argmax, weight 1.

    The forward gate is exactly 1. Its gradient is the straight-through
    gradient of the chosen probability (``1 + p - stop_gradient(p)``), so the
    router still learns from the task loss; with a stopped gradient instead,
    it would learn only from the balance losses.

    Args:
        logits: router logits, ``[T, E]``.

    Returns:
        ``(expert_index, gates, probs)`` with ``k = 1``.
    """
    expert_index, chosen, probs = top_k_route(logits, 1, normalize=False)
    gates = 1.0 + (chosen - ops.stop_gradient(chosen))  # exactly 1 in value
    return expert_index, gates, probs


def noisy_logits(clean_logits, noise, noise_stddev):
    """Shazeer et al.'s noisy gating, Eq. 4: ``H = x W_g + ε · stddev``.

    Args:
        clean_logits: ``x W_g``, ``[T, E]``.
        noise: standard normal samples ``ε``, shaped like ``clean_logits``.
        noise_stddev: the noise scale, a scalar or ``[T, E]``; for the paper's
            trainable noise, ``softplus(x W_noise)``.

    Returns:
        The noisy logits ``H``, ``[T, E]``.
    """
    clean_logits, noise = ops.convert_to_tensor(clean_logits), ops.convert_to_tensor(noise)
    return clean_logits + ops.multiply(noise, noise_stddev)


# ------------------------------------------------------- balance losses


def _valid_weights(num_tokens_like, valid):
    """Float ``[T]`` weights: 1 for tokens that are routed, 0 for masked."""
    if valid is None:
        return ops.ones_like(num_tokens_like[:, 0], dtype="float32")
    return ops.cast(valid, "float32")


def _masked_mean(values, weights):
    """Mean of ``values`` ``[T, ...]`` over tokens with weight 1."""
    values = ops.convert_to_tensor(values)
    weights = ops.reshape(weights, (-1,) + (1,) * (len(values.shape) - 1))
    total = ops.sum(values * weights, axis=0)
    return total / ops.maximum(ops.sum(weights), 1.0)


def expert_fractions(expert_index, num_experts, valid=None):
    """f_i: the fraction of (token, choice) assignments that go to expert i.

    Args:
        expert_index: int ``[T, k]``.
        num_experts: ``E``.
        valid: optional bool ``[T]``; masked tokens are not counted.

    Returns:
        ``[E]`` fractions summing to one (zeros if no token is valid).
    """
    weights = _valid_weights(expert_index, valid)
    k = expert_index.shape[1]
    counts = ops.segment_sum(
        ops.reshape(ops.repeat(weights[:, None], k, axis=1), (-1,)),
        ops.reshape(expert_index, (-1,)),
        num_segments=num_experts,
    )
    return counts / ops.maximum(ops.sum(counts), 1.0)


def switch_balance_loss(probs, expert_index, valid=None):
    """Switch load-balancing loss without its weight: ``N · Σ_i f_i · P_i``.

    Fedus et al. 2021, Eq. 4-6: ``f_i`` is the fraction of tokens routed to
    expert ``i`` (here: of all ``k`` choices of each token, so ``Σ f_i = 1``
    also for top-k), ``P_i`` the mean router probability of expert ``i``. It is
    1 for perfectly uniform routing; multiply by ``α`` (0.01 in the paper).

    Args:
        probs: router softmax, ``[T, E]``.
        expert_index: int ``[T, k]``.
        valid: optional bool ``[T]``.

    Returns:
        A scalar.
    """
    num_experts = probs.shape[-1]
    fractions = expert_fractions(expert_index, num_experts, valid)
    mean_probs = _masked_mean(probs, _valid_weights(probs, valid))
    return num_experts * ops.sum(ops.stop_gradient(fractions) * mean_probs)


def cv_squared(x):
    """Squared coefficient of variation, ``Var(x) / Mean(x)²`` (population).

    Args:
        x: a 1-D tensor.

    Returns:
        A scalar; 0 for a constant ``x`` (and for all-zero ``x``).
    """
    x = ops.cast(x, "float32")
    mean = ops.mean(x)
    variance = ops.mean(ops.square(x - mean))
    return variance / (ops.square(mean) + _EPSILON)


def importance(expert_index, gates, num_experts, valid=None):
    """Shazeer et al.'s Importance(X) = Σ_x G(x), Eq. 6, from a sparse route.

    Args:
        expert_index: int ``[T, k]``.
        gates: ``[T, k]``.
        num_experts: ``E``.
        valid: optional bool ``[T]``.

    Returns:
        ``[E]``.
    """
    weights = _valid_weights(expert_index, valid)
    gates = ops.convert_to_tensor(gates)
    return ops.segment_sum(
        ops.reshape(gates * weights[:, None], (-1,)),
        ops.reshape(expert_index, (-1,)),
        num_segments=num_experts,
    )


def importance_loss(expert_index, gates, num_experts, valid=None):
    """``CV(Importance(X))²``, Shazeer et al. 2017, Eq. 7, without its weight."""
    return cv_squared(importance(expert_index, gates, num_experts, valid))


def normal_cdf(x):
    """Φ(x), the standard normal cumulative distribution function."""
    return 0.5 * (1.0 + ops.erf(x / math.sqrt(2.0)))


def load_probabilities(clean_logits, noisy_logits_, noise_stddev, k):
    """P(x, i) of Shazeer et al. 2017, Eq. 8-9.

    The probability that expert ``i`` is still among the top ``k`` when only
    its own noise is drawn again: ``Φ((clean_i − kth_excluding(H, k, i)) /
    stddev_i)``, where ``kth_excluding(H, k, i)`` is the k-th largest entry of
    ``H`` with entry ``i`` left out.

    Args:
        clean_logits: ``x W_g``, ``[T, E]``.
        noisy_logits_: ``H``, ``[T, E]``.
        noise_stddev: a positive scalar or ``[T, E]``.
        k: experts per token; needs ``k < E``.

    Returns:
        ``[T, E]`` probabilities.
    """
    num_experts = clean_logits.shape[-1]
    if num_experts is not None and k >= num_experts:
        raise ValueError(f"the load loss needs k < num_experts, got k={k}, E={num_experts}")
    clean_logits = ops.convert_to_tensor(clean_logits)
    noisy_logits_ = ops.convert_to_tensor(noisy_logits_)
    top, _ = ops.top_k(noisy_logits_, k + 1)
    # If i is in the top k, the k-th largest of the others is the (k+1)-th
    # largest overall; otherwise it is the k-th largest overall.
    threshold_if_in = top[:, k : k + 1]
    threshold_if_out = top[:, k - 1 : k]
    is_in = ops.greater(noisy_logits_, threshold_if_in)
    threshold = ops.where(is_in, threshold_if_in, threshold_if_out)
    return normal_cdf(ops.divide(clean_logits - threshold, noise_stddev))


def load_loss(clean_logits, noisy_logits_, noise_stddev, k, valid=None):
    """``CV(Load(X))²`` with ``Load_i = Σ_x P(x, i)``, Shazeer et al. Eq. 10-11."""
    probabilities = load_probabilities(clean_logits, noisy_logits_, noise_stddev, k)
    weights = _valid_weights(probabilities, valid)
    return cv_squared(ops.sum(probabilities * weights[:, None], axis=0))


def router_z_loss(logits, valid=None):
    """Router z-loss (Zoph et al. 2022, Eq. 5): mean over tokens of logsumexp².

    Args:
        logits: router logits, ``[T, E]``.
        valid: optional bool ``[T]``.

    Returns:
        A scalar (without its weight).
    """
    z = ops.logsumexp(ops.cast(logits, "float32"), axis=-1)
    return _masked_mean(ops.square(z), _valid_weights(logits, valid))


def router_entropy(probs, valid=None):
    """Mean over tokens of the entropy of the router distribution, in nats."""
    probs = ops.convert_to_tensor(probs)
    entropy = -ops.sum(probs * ops.log(probs + _EPSILON), axis=-1)
    return _masked_mean(entropy, _valid_weights(probs, valid))


# ------------------------------------------------------ capacity, dispatch


def expert_capacity(num_tokens, num_experts, capacity_factor, k=1):
    """Tokens one expert takes: ``ceil(T · k / E · capacity_factor)``.

    Clipped to ``[1, T]``: an expert never gets a token twice, so a larger
    buffer could only hold padding.

    Args:
        num_tokens: ``T``, a Python int (static shapes: the capacity is a
            Python int) or a scalar tensor (dynamic shapes: a tensor).
        num_experts: ``E``.
        capacity_factor: ``>= 0``; 1.0 is exactly even.
        k: experts per token.

    Returns:
        An int, or an int32 scalar tensor when ``num_tokens`` is a tensor.
    """
    if isinstance(num_tokens, int):
        # Exact rational arithmetic: 10 * 1.1 must give 11, not 12.
        exact = Fraction(num_tokens * k, num_experts) * Fraction(str(capacity_factor))
        return max(1, min(num_tokens, math.ceil(exact)))
    tokens = ops.cast(num_tokens, "float32")
    exact = tokens * (k * capacity_factor / num_experts)
    capacity = ops.cast(ops.ceil(exact * (1.0 - 1e-6)), "int32")
    return ops.clip(capacity, 1, ops.maximum(ops.cast(num_tokens, "int32"), 1))


def positions_in_expert(expert_index, num_experts, valid=None):
    """Each assignment's place in its expert's queue, counted in token order.

    Assignments are ordered as in Switch/GShard: all first choices in token
    order, then all second choices, and so on; the position of an assignment is
    the number of earlier assignments to the same expert. Computed with one
    sort of ``T * k`` keys (``expert * T * k + order``), not with a one-hot
    tensor, so the cost does not grow with ``E``.

    Args:
        expert_index: int ``[T, k]``.
        num_experts: ``E``.
        valid: optional bool ``[T]``. Masked tokens take no place in any queue;
            their position is ``T * k``, beyond any capacity.

    Returns:
        int32 ``[T, k]``.
    """
    expert_index = ops.cast(expert_index, "int32")
    k = expert_index.shape[1]
    # Choice-major order: [k, T] flattened.
    flat = ops.reshape(ops.transpose(expert_index), (-1,))
    if valid is not None:
        valid_flat = ops.reshape(
            ops.transpose(ops.repeat(ops.reshape(valid, (-1, 1)), k, axis=1)), (-1,)
        )
        flat = ops.where(valid_flat, flat, num_experts)
    order = ops.cumsum(ops.ones_like(flat), axis=0) - 1  # arange, shape-agnostic
    n = ops.shape(flat)[0]
    if isinstance(n, int) and (num_experts + 1) * n >= 2**31:
        raise ValueError(
            f"{n} assignments x {num_experts + 1} experts overflow the int32 sort key"
        )
    sorted_order = ops.argsort(flat * n + order)
    sorted_expert = ops.take(flat, sorted_order, axis=0)
    counts = ops.segment_sum(ops.ones_like(flat), flat, num_segments=num_experts + 1)
    starts = ops.cumsum(counts, axis=0) - counts
    position_sorted = order - ops.take(starts, sorted_expert, axis=0)
    position_flat = ops.scatter(
        ops.expand_dims(sorted_order, -1), position_sorted, ops.shape(flat)
    )
    if valid is not None:
        position_flat = ops.where(valid_flat, position_flat, n)
    return ops.transpose(ops.reshape(position_flat, (k, -1)))


def dispatch_slots(expert_index, position, capacity):
    """Slots in a ``[E * C]`` buffer, and which assignments fit.

    Args:
        expert_index: int ``[T, k]``.
        position: int ``[T, k]``, from `positions_in_expert`.
        capacity: ``C``.

    Returns:
        ``(slot, keep)``: int32 ``[T, k]`` (0 for dropped assignments) and
        bool ``[T, k]`` (position < capacity).
    """
    expert_index, position = ops.convert_to_tensor(expert_index), ops.convert_to_tensor(position)
    keep = ops.less(position, capacity)
    slot = ops.where(keep, expert_index * capacity + position, 0)
    return ops.cast(slot, "int32"), keep


def dispatch(tokens, slot, keep, num_slots):
    """Gather tokens into the expert buffer: ``[T, d] -> [E * C, d]``.

    Each kept assignment's token lands in its slot; empty slots are zero.
    Made by a gather (`keras.ops.take`) whose index, the token of each slot,
    comes from a scatter of token ids; the gradient with respect to
    ``tokens`` is the matching scatter-add.

    Args:
        tokens: ``[T, d]``.
        slot: int ``[T, k]``, from `dispatch_slots`.
        keep: bool ``[T, k]``.
        num_slots: ``E * C``.

    Returns:
        ``[E * C, d]``.
    """
    k = slot.shape[1]
    token_id = ops.cumsum(ops.ones_like(slot[:, 0]), axis=0)  # 1..T
    token_id = ops.repeat(ops.expand_dims(token_id, 1), k, axis=1)
    # Dropped assignments add 0 to slot 0: harmless, slots are unique.
    filler = ops.where(keep, token_id, 0)
    slot_token = ops.scatter(
        ops.reshape(slot, (-1, 1)), ops.reshape(filler, (-1,)), (num_slots,)
    )
    occupied = ops.cast(ops.greater(slot_token, 0), tokens.dtype)
    gathered = ops.take(tokens, ops.maximum(slot_token - 1, 0), axis=0)
    return gathered * ops.expand_dims(occupied, -1)


def combine(expert_outputs, slot, keep, gates):
    """Gather expert outputs back to tokens: ``Σ_j gate_j · out[slot_j]``.

    Args:
        expert_outputs: ``[E * C, h]``.
        slot: int ``[T, k]``.
        keep: bool ``[T, k]``; dropped assignments contribute nothing.
        gates: ``[T, k]``.

    Returns:
        ``[T, h]``.
    """
    gates = ops.convert_to_tensor(gates)
    weights = gates * ops.cast(keep, gates.dtype)
    gathered = ops.take(expert_outputs, slot, axis=0)  # [T, k, h]
    weights = ops.cast(weights, gathered.dtype)
    return ops.sum(gathered * ops.expand_dims(weights, -1), axis=1)


def run_in_expert_buffers(tokens, expert_index, gates, num_experts, capacity, run_experts,
                          valid=None):
    """Route tokens through fixed-capacity expert buffers and back.

    The dispatch sequence `GatedExperts` and `deepkit.models.HardParallelMixture`
    share: each assignment gets its place in its expert
    (`positions_in_expert`), assignments past ``capacity`` are dropped
    (`dispatch_slots`), tokens are gathered into a ``[E, C, d]`` buffer
    (`dispatch`), ``run_experts`` maps it to ``[E, C, h]`` (expert ``e`` on
    row ``e`` only), and each token's outputs are summed with its gates
    (`combine`). The cost is that of ``E * C`` buffer rows, not of every
    expert on every token.

    Args:
        tokens: ``[T, d]``.
        expert_index: int ``[T, k]``, each token's chosen experts.
        gates: ``[T, k]``, the weights of the chosen experts' outputs.
        num_experts: ``E``.
        capacity: ``C``, rows per expert (`expert_capacity`).
        run_experts: a function ``[E, C, d] -> [E, C, h]``.
        valid: optional bool ``[T]``; masked tokens take no place.

    Returns:
        ``(outputs, keep)``: ``[T, h]`` (zero for a token whose every
        assignment was dropped) and bool ``[T, k]``, which assignments fit.
    """
    position = positions_in_expert(expert_index, num_experts, valid)
    slot, keep = dispatch_slots(expert_index, position, capacity)
    buffer = dispatch(tokens, slot, keep, num_experts * capacity)
    buffer = ops.reshape(buffer, (num_experts, capacity, _last_dim(tokens)))
    outputs = run_experts(buffer)
    outputs = ops.reshape(outputs, (num_experts * capacity, _last_dim(outputs)))
    return combine(outputs, slot, keep, gates), keep


def _last_dim(x):
    size = x.shape[-1]
    return ops.shape(x)[-1] if size is None else size

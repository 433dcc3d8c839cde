"""The conservative sampling-based log-likelihood (CSL) estimator of a chain.

Bengio, Yao & Cho (2013) score a model whose chain alternates hidden states
``h`` and visible means ``p(x | h)`` (a GSN, a denoising auto-encoder) by
the mixture of the visible distributions the chain visits: with the hidden
states ``h_1 ... h_N`` of one (or several) chains,

    log p̂(x) = log (1/N) Σ_j p(x | h_j),

which is, in expectation over the chain, a lower bound of the log-likelihood
that the model's own stationary distribution gives ``x`` (Jensen's
inequality; their Section 3). Unlike a Parzen window, no bandwidth is chosen
and the visible distribution's own shape is used. For factorized Bernoulli
visibles with logits ``a_j`` (``p(x | h_j) = sigmoid(a_j)``),

    log p(x | h_j) = Σ_i x_i log p_ji + (1 − x_i) log(1 − p_ji)
                   = x · a_j − Σ_i softplus(a_ji),

so every pair ``(x, h_j)`` costs one dot product: the estimator runs as the
Parzen estimator does (`deepkit.metrics.parzen`), one matrix product per block
of data rows and hidden states, folded into a running log-sum-exp, with
memory bounded by one block.
"""

import math

import numpy as np
from keras import ops

from deepkit.metrics.parzen import (
    DEFAULT_CHUNK_SIZE,
    ParzenEstimate,
    _check_chunk,
    _check_pair,
    _logsumexp_step,
    _row_blocks,
    _stack_chunks,
    _stack_transposed,
)


def csl_log_likelihood(logits, data, chunk_size=DEFAULT_CHUNK_SIZE, sample_chunk_size=None,
                       return_per_example=False, dtype="float32"):
    """Mean CSL log-likelihood of `data` under the visible distributions of a chain.

    Each row ``x`` of `data` gets ``log (1/N) Σ_j p(x | h_j)`` with
    ``p(x | h_j)`` the factorized Bernoulli distribution of logits
    ``logits[j]`` (Bengio, Yao & Cho 2013, Eq. 4 with ``f(x | h) = p(x |
    h)``); the result is the mean over the rows and its standard error.
    ``log p(x | h_j) = x · a_j − Σ_i softplus(a_ji)`` is one matrix product
    per block of `chunk_size` data rows by `sample_chunk_size` hidden states,
    folded into a running log-sum-exp, so memory stays at one block and any
    chunk sizes give the same result up to float rounding.

    Args:
        logits: `[N, d]`, the visible pre-sigmoid ``a_j`` of each of the
            chain's hidden states (`GSN.visible_logits` of `run_chain`'s
            ``"hiddens"``); logits, not probabilities, so that saturated
            units keep their exact log-probabilities.
        data: `[m, d]` held-out rows in [0, 1] (binary for a likelihood;
            real values in [0, 1] give the cross-entropy form the GSN is
            trained with).
        chunk_size: data rows per block.
        sample_chunk_size: hidden states per block (default: `chunk_size`).
        return_per_example: also return the `[m]` per-row estimates.
        dtype: the float type of the matrix products ("float32").

    Returns:
        A `ParzenEstimate(mean, standard_error)` of Python floats (the same
        pair type as the Parzen estimator's), with `standard_error =
        std(log p̂) / sqrt(m)`; with `return_per_example=True`, the pair
        `(estimate, per_example)`, `per_example` a float64 numpy array `[m]`.

    Example:

    ```python
    chain = gsn.run_chain(x_test[:1], steps=10000, seed=1)
    hiddens = [h[0] for h in chain["hiddens"]]          # [steps, units] per layer
    logits = gsn.visible_logits(hiddens)
    print(csl_log_likelihood(logits, x_test_binary))    # e.g. "-120.34 ± 0.51"
    ```

    Reference:
        Bengio, Yao, Cho, "Bounding the Test Log-Likelihood of Generative
        Models", arXiv:1311.6184, 2013, Section 3 (the CSL estimator).
    """
    logits, data = _check_pair(logits, data, "logits", "data", dtype)
    if np.any(data < 0) or np.any(data > 1):
        raise ValueError("data must lie in [0, 1] (Bernoulli visible units), got values in "
                         f"[{float(data.min()):g}, {float(data.max()):g}]")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits must be finite")
    chunk_size = _check_chunk(chunk_size, "chunk_size")
    sample_chunk_size = chunk_size if sample_chunk_size is None else sample_chunk_size
    sample_chunk_size = _check_chunk(sample_chunk_size, "sample_chunk_size")
    n = logits.shape[0]
    m = data.shape[0]
    chunk_size = min(chunk_size, m)
    sample_chunk_size = min(sample_chunk_size, n)

    # x · a_j + bias_j with bias_j = −Σ_i softplus(a_ji), in float64 on the host (O(N d)).
    bias = -np.sum(np.logaddexp(0.0, logits.astype("float64")), axis=1)
    stacked = ops.convert_to_tensor(_stack_transposed(logits, sample_chunk_size))
    bias = ops.convert_to_tensor(_stack_chunks(bias.astype(dtype), sample_chunk_size, -np.inf))
    start = np.full((chunk_size,), -np.inf, dtype=dtype)

    log_sums = []
    for rows in _row_blocks(data, chunk_size):
        (_, log_sum), _ = ops.scan(_logsumexp_step, (ops.convert_to_tensor(rows), start),
                                   (stacked, bias))
        log_sums.append(ops.convert_to_numpy(log_sum))
    per_example = np.concatenate(log_sums)[:m].astype("float64") - math.log(n)
    estimate = ParzenEstimate(float(np.mean(per_example)),
                              float(np.std(per_example) / math.sqrt(m)))
    return (estimate, per_example) if return_per_example else estimate

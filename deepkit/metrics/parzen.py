"""Parzen-window log-likelihood of samples, and each sample's nearest training image.

A generative model that gives no tractable likelihood (a GSN's chain, a GAN)
is scored by fitting a Gaussian kernel density to its samples and evaluating
that density on held-out data (Breuleux, Bengio & Vincent 2011; Bengio et al.
2014, section 4.1). With `n` samples `s_i` of `d` features and bandwidth
sigma, the log-density of a data row `x` is

    log p(x) = logsumexp_i(-||x - s_i||^2 / (2 sigma^2)) - log n
               - d/2 log(2 pi sigma^2),

and the figure reported is its mean over the `m` data rows with the standard
error std / sqrt(m) (the GSN paper's 214 +- 1.1 on the 10,000 MNIST test
images, following `yaoli/GSN`'s ``likelihood_estimation_parzen.py``).

The squared distances are computed as ``||x||^2 - 2 x s^T + ||s||^2``: one
matrix product per block of data rows and samples, so the estimator runs
close to the machine's matmul rate. Data rows are taken `chunk_size` at a
time; for each block the samples are taken `sample_chunk_size` at a time in a
`keras.ops.scan` (one compiled loop on JAX) that keeps a running
log-sum-exp, so besides copies of the inputs peak memory is one
`chunk_size x sample_chunk_size` block, not `n x m`. The O((n + m) d)
preparation (scaling, padding, norms) is numpy, done once; the O(n m d) work
runs in `keras.ops` on the active backend.

A Parzen number alone rewards a model that memorizes its training set
(Theis, van den Oord & Bethge 2016); `nearest_neighbours` gives the distance
from each sample to its closest training image for the report.
"""

import math
from typing import NamedTuple

import numpy as np
from keras import ops

# Rows of data (and of samples) taken at a time: a 1000 x 1000 block of
# float32 log-kernels is 4 MB.
DEFAULT_CHUNK_SIZE = 1000


class ParzenEstimate(NamedTuple):
    """The mean log-likelihood over the data rows and its standard error.

    `standard_error` is the population standard deviation of the per-row
    log-likelihoods divided by sqrt(m), as `yaoli/GSN` computes it
    (``numpy.std(lls) / 100`` for 10,000 test images). `str()` gives the
    paper's form, ``"214.03 ± 1.10"``.
    """

    mean: float
    standard_error: float

    def __str__(self):
        return f"{self.mean:.2f} ± {self.standard_error:.2f}"


class SigmaSelection(NamedTuple):
    """The chosen bandwidth and every candidate's score.

    `table` is a list of `(sigma, mean log-likelihood)` pairs in the order
    the candidates were given; `sigma` is the one with the largest mean.
    """

    sigma: float
    table: list


class Neighbours(NamedTuple):
    """For each sample, its nearest training row: `indices` (int64 `[n]`)
    and the Euclidean `distances` to it (float `[n]`), numpy arrays."""

    indices: np.ndarray
    distances: np.ndarray


def _as_matrix(x, name, dtype):
    """`x` (numpy, nested lists or a backend tensor) as a numpy matrix of `dtype`."""
    if not isinstance(x, (np.ndarray, list, tuple)):
        x = ops.convert_to_numpy(x)
    x = np.asarray(x, dtype=dtype)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a matrix [rows, features], got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    return x


def _check_pair(first, second, first_name, second_name, dtype):
    first = _as_matrix(first, first_name, dtype)
    second = _as_matrix(second, second_name, dtype)
    if first.shape[1] != second.shape[1]:
        raise ValueError(
            f"{second_name} has {second.shape[1]} features per row but {first_name} has "
            f"{first.shape[1]}: they must be the same size")
    return first, second


def _check_chunk(chunk_size, name):
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise ValueError(f"{name} must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def _check_sigma(sigma, name="sigma"):
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {sigma!r}") from None
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"{name} must be a positive finite number, got {sigma}")
    return sigma


def _stack_chunks(vector, chunk_size, fill):
    """numpy `vector` `[rows]` as `[chunks, chunk_size]`, the last chunk padded with `fill`."""
    chunks = -(-vector.shape[0] // chunk_size)
    padded = np.full((chunks * chunk_size,), fill, dtype=vector.dtype)
    padded[:vector.shape[0]] = vector
    return padded.reshape((chunks, chunk_size))


def _stack_transposed(x, chunk_size, scale=1.0):
    """numpy `x * scale` `[rows, d]` as `[chunks, d, chunk_size]`, zero-padded, built in
    one copy: the right-hand operands of the blocks' matrix products."""
    rows, features = x.shape
    chunks = -(-rows // chunk_size)
    stacked = np.zeros((chunks, features, chunk_size), dtype=x.dtype)
    for i in range(chunks):
        block = x[i * chunk_size:(i + 1) * chunk_size]
        np.multiply(block.T, np.asarray(scale, x.dtype), out=stacked[i, :, :block.shape[0]])
    return stacked


def _row_blocks(x, chunk_size):
    """Views of `chunk_size` rows of numpy `x`; the last one zero-padded to that size
    (one shape for every block: one compilation of the loop)."""
    for start in range(0, x.shape[0], chunk_size):
        block = x[start:start + chunk_size]
        if block.shape[0] < chunk_size:
            block = np.pad(block, [(0, chunk_size - block.shape[0]), (0, 0)])
        yield block


# The loop bodies are module-level functions so that JAX traces and compiles
# each `scan` once per shape, not once per call.


def _logsumexp_step(carry, sample_chunk):
    """One block of samples: fold logsumexp_j(x s_j / sigma^2 + bias_j) into the running value."""
    rows, running = carry
    scaled_samples, bias = sample_chunk  # [d, c] (already / sigma^2 and transposed), [c]
    log_kernels = ops.add(ops.matmul(rows, scaled_samples), bias)
    return (rows, ops.logaddexp(running, ops.logsumexp(log_kernels, axis=1))), None


def _nearest_step(carry, train_chunk):
    """One block of training rows: keep the smallest ||t||^2 - 2 s t and its index."""
    rows, best_score, best_index = carry
    train_t, train_sq_norms, offset = train_chunk  # [d, c], [c], scalar
    scores = ops.subtract(train_sq_norms, ops.multiply(2.0, ops.matmul(rows, train_t)))
    chunk_best = ops.min(scores, axis=1)
    chunk_index = ops.add(ops.cast(ops.argmin(scores, axis=1), "int32"), offset)
    better = ops.less(chunk_best, best_score)  # strict: the first index wins a tie
    return (rows, ops.where(better, chunk_best, best_score),
            ops.where(better, chunk_index, best_index)), None


def parzen_log_likelihood(samples, data, sigma, chunk_size=DEFAULT_CHUNK_SIZE,
                          sample_chunk_size=None, return_per_example=False,
                          dtype="float32"):
    """Mean log-likelihood of `data` under a Gaussian Parzen window on `samples`.

    Each row of `data` gets log p(x) = logsumexp_i(-||x - s_i||^2 /
    (2 sigma^2)) - log n - d/2 log(2 pi sigma^2) (a mixture of n isotropic
    Gaussians of standard deviation `sigma`, one at each sample); the result
    is the mean over the rows and its standard error. The squared distances
    come from one matrix product per block; blocks of `chunk_size` data rows
    by `sample_chunk_size` samples are folded into a running log-sum-exp, so
    memory stays at one block whatever `n` and `m` are, and any chunk sizes
    give the same result up to float rounding.

    Args:
        samples: `[n, d]` samples of the model (e.g. a chain's mean p(x)).
        data: `[m, d]` held-out rows to score (e.g. the 10,000 test images).
        sigma: the kernel's standard deviation, > 0 (GSN: 0.20 on MNIST;
            choose it on validation data with `select_sigma`).
        chunk_size: data rows per block.
        sample_chunk_size: samples per block (default: `chunk_size`).
        return_per_example: also return the `[m]` per-row log-likelihoods.
        dtype: the float type of the computation ("float32").

    Returns:
        A `ParzenEstimate(mean, standard_error)` of Python floats, with
        `standard_error = std(log p) / sqrt(m)`; with
        `return_per_example=True`, the pair `(estimate, per_example)` where
        `per_example` is a float64 numpy array `[m]`.

    Example:

    ```python
    estimate = parzen_log_likelihood(chain_samples, x_test, sigma=0.2)
    print(f"Parzen log-likelihood: {estimate}")  # e.g. "214.03 ± 1.10"
    ```

    Reference:
        Bengio, Thibodeau-Laufer, Alain, Yosinski, "Deep Generative Stochastic
        Networks Trainable by Backprop", ICML 2014, arXiv:1306.1091, section
        4.1; Breuleux, Bengio, Vincent, "Quickly generating representative
        samples from an RBM-derived process", Neural Computation 23(8), 2011.
    """
    samples, data = _check_pair(samples, data, "samples", "data", dtype)
    sigma = _check_sigma(sigma)
    chunk_size = _check_chunk(chunk_size, "chunk_size")
    sample_chunk_size = chunk_size if sample_chunk_size is None else sample_chunk_size
    sample_chunk_size = _check_chunk(sample_chunk_size, "sample_chunk_size")
    n, d = samples.shape
    m = data.shape[0]
    chunk_size = min(chunk_size, m)
    sample_chunk_size = min(sample_chunk_size, n)

    # -||x - s||^2 / (2 sigma^2) = x (s / sigma^2) - ||s||^2 / (2 sigma^2) - ||x||^2 / (2 sigma^2);
    # the last term is constant over the samples and is added after the log-sum-exp.
    # The O((n + m) d) preparation is numpy, done once; each block's O(c r d) work runs
    # on the active backend.
    variance = sigma * sigma
    scaled = ops.convert_to_tensor(
        _stack_transposed(samples, sample_chunk_size, 1.0 / variance))  # [chunks, d, c]
    bias = np.sum(np.square(samples, dtype="float64"), axis=1) / (-2.0 * variance)
    bias = ops.convert_to_tensor(_stack_chunks(bias.astype(dtype), sample_chunk_size, -np.inf))
    # Padded samples add exp(-inf) = 0; padded data rows are dropped below.
    start = np.full((chunk_size,), -np.inf, dtype=dtype)

    log_sums = []
    for rows in _row_blocks(data, chunk_size):
        (_, log_sum), _ = ops.scan(_logsumexp_step, (ops.convert_to_tensor(rows), start),
                                   (scaled, bias))
        log_sums.append(ops.convert_to_numpy(log_sum))
    log_sums = np.concatenate(log_sums)[:m].astype("float64")

    data_sq_norms = np.sum(np.square(data, dtype="float64"), axis=1)
    log_normalizer = math.log(n) + 0.5 * d * math.log(2.0 * math.pi * variance)
    per_example = log_sums - data_sq_norms / (2.0 * variance) - log_normalizer
    estimate = ParzenEstimate(float(np.mean(per_example)),
                              float(np.std(per_example) / math.sqrt(m)))
    return (estimate, per_example) if return_per_example else estimate


def select_sigma(samples, valid_data, sigmas, chunk_size=DEFAULT_CHUNK_SIZE,
                 sample_chunk_size=None, dtype="float32"):
    """The Parzen bandwidth with the largest mean log-likelihood on validation data.

    Each candidate is scored with `parzen_log_likelihood(samples, valid_data,
    sigma)`; the test figure is then computed with the winner. The first of
    equal scores wins.

    Args:
        samples: `[n, d]` samples of the model.
        valid_data: `[m, d]` validation rows (not the test rows).
        sigmas: the candidate bandwidths, each > 0 (e.g.
            `numpy.logspace(-1, 0, 10)` or 0.1-0.3 in steps of 0.01).
        chunk_size, sample_chunk_size, dtype: as for `parzen_log_likelihood`.

    Returns:
        A `SigmaSelection(sigma, table)`: the chosen sigma and the list of
        `(sigma, mean log-likelihood)` pairs, for a report to show.

    Example:

    ```python
    chosen = select_sigma(chain_samples, x_valid, [0.1, 0.15, 0.2, 0.25, 0.3])
    estimate = parzen_log_likelihood(chain_samples, x_test, chosen.sigma)
    ```

    Reference:
        Bengio et al., "Deep Generative Stochastic Networks Trainable by
        Backprop", ICML 2014, arXiv:1306.1091 (sigma by validation, as in
        Breuleux et al. 2011; `yaoli/GSN` fixes 0.20).
    """
    sigmas = [_check_sigma(s, "sigmas") for s in np.ravel(np.asarray(sigmas, dtype=object))]
    if not sigmas:
        raise ValueError("sigmas must hold at least one candidate bandwidth, got none")
    samples, valid_data = _check_pair(samples, valid_data, "samples", "valid_data", dtype)
    table = [(sigma, parzen_log_likelihood(samples, valid_data, sigma, chunk_size,
                                           sample_chunk_size, dtype=dtype).mean)
             for sigma in sigmas]
    best = max(range(len(table)), key=lambda i: (table[i][1], -i))
    return SigmaSelection(table[best][0], table)


def nearest_neighbours(samples, train, chunk_size=DEFAULT_CHUNK_SIZE, dtype="float32"):
    """Each sample's nearest training row and the Euclidean distance to it.

    A model that copies its training images scores a high Parzen
    log-likelihood; showing each sample beside its nearest training image,
    with the distance, tells copies from new digits. The search uses
    ``||s - t||^2 = ||s||^2 - 2 s t + ||t||^2`` in blocks of `chunk_size`
    samples by `chunk_size` training rows (memory of one block); the
    distance returned is recomputed directly from the chosen pair, so an
    exact copy gives 0.

    Args:
        samples: `[n, d]` samples of the model.
        train: `[m, d]` training rows.
        chunk_size: rows of samples and of training rows per block.
        dtype: the float type of the computation ("float32").

    Returns:
        `Neighbours(indices, distances)`: numpy arrays `[n]`, the index into
        `train` of each sample's nearest row (the first of equal ones) and
        the distance to it.

    Example:

    ```python
    nearest = nearest_neighbours(chain_samples[::1000], x_train)
    closest_images = x_train[nearest.indices]
    ```

    Reference:
        Theis, van den Oord, Bethge, "A note on the evaluation of generative
        models", ICLR 2016, arXiv:1511.01844, section 3.2.
    """
    samples, train = _check_pair(samples, train, "samples", "train", dtype)
    chunk_size = _check_chunk(chunk_size, "chunk_size")
    n = samples.shape[0]
    m = train.shape[0]
    rows_per_block = min(chunk_size, n)
    train_per_block = min(chunk_size, m)

    sq_norms = np.sum(np.square(train, dtype="float64"), axis=1).astype(dtype)
    sq_norms = ops.convert_to_tensor(_stack_chunks(sq_norms, train_per_block, np.inf))
    train_t = ops.convert_to_tensor(_stack_transposed(train, train_per_block))  # [chunks, d, c]
    offsets = np.arange(0, sq_norms.shape[0] * train_per_block, train_per_block, dtype="int32")
    start = (np.full((rows_per_block,), np.inf, dtype=dtype),
             np.zeros((rows_per_block,), dtype="int32"))

    indices = []
    for rows in _row_blocks(samples, rows_per_block):
        (_, _, index), _ = ops.scan(_nearest_step, (ops.convert_to_tensor(rows),) + start,
                                    (train_t, sq_norms, offsets))
        indices.append(ops.convert_to_numpy(index))
    indices = np.concatenate(indices)[:n].astype("int64")
    # The distance from the chosen pair itself (float64), so an exact copy gives 0.
    difference = samples.astype("float64") - train[indices].astype("float64")
    distances = np.sqrt(np.sum(np.square(difference), axis=1))
    return Neighbours(indices, distances)

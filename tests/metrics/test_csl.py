"""Tests for deepkit.metrics.csl: the conservative sampling-based log-likelihood
against a brute-force float64 numpy reference (binary and real-valued data,
chunk sizes that divide neither N nor m), the exact likelihood of a Bernoulli
mixture whose components the chain visits once each, saturated logits, and
the argument errors."""

import math

import numpy as np
import pytest

from deepkit.metrics import ParzenEstimate, csl_log_likelihood
from deepkit.testing import TestCase

RNG = np.random.default_rng(3)
LOGITS = RNG.normal(scale=3.0, size=(13, 6)).astype("float32")  # N = 13 hidden states
BINARY = (RNG.uniform(size=(7, 6)) > 0.5).astype("float32")  # m = 7
REAL = RNG.uniform(size=(7, 6)).astype("float32")


def reference(logits, data):
    """log mean_j prod_i p_ji^x_i (1 - p_ji)^(1 - x_i), every term in float64."""
    p = 1.0 / (1.0 + np.exp(-logits.astype("float64")))  # [N, d]
    x = data.astype("float64")[:, None, :]  # [m, 1, d]
    log_terms = (x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=-1)  # [m, N]
    top = log_terms.max(axis=1, keepdims=True)
    return np.log(np.exp(log_terms - top).mean(axis=1)) + top[:, 0]


class CSLTest(TestCase):
    def test_equals_the_brute_force_reference(self):
        for data in (BINARY, REAL):
            for chunks in ((1000, None), (3, 5), (1, 1), (7, 13)):
                estimate, per_example = csl_log_likelihood(
                    LOGITS, data, chunk_size=chunks[0], sample_chunk_size=chunks[1],
                    return_per_example=True)
                expected = reference(LOGITS, data)
                np.testing.assert_allclose(per_example, expected, rtol=1e-5, atol=1e-4)
                self.assertIsInstance(estimate, ParzenEstimate)
                self.assertAlmostEqual(estimate.mean, float(expected.mean()), places=4)
                self.assertAlmostEqual(estimate.standard_error,
                                       float(expected.std() / math.sqrt(len(data))), places=4)

    def test_is_the_exact_likelihood_of_the_mixture_the_chain_visits(self):
        # Two components visited once each: the estimate is log of the
        # mixture's probability, computed here over all 2^3 binary vectors.
        logits = np.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.5]], "float32")
        grid = np.array([[(k >> i) & 1 for i in range(3)] for k in range(8)], "float32")
        per_example = csl_log_likelihood(logits, grid, return_per_example=True)[1]
        p = 1 / (1 + np.exp(-logits.astype("float64")))
        mixture = [np.mean([np.prod(np.where(x == 1, pj, 1 - pj)) for pj in p]) for x in grid]
        np.testing.assert_allclose(np.exp(per_example), mixture, rtol=1e-5)
        self.assertAlmostEqual(float(np.exp(per_example).sum()), 1.0, places=5)

    def test_saturated_logits_keep_their_log_probabilities(self):
        # sigmoid(40) is 1.0 in float32; the estimator works from the logits.
        logits = np.array([[40.0, -40.0]], "float32")
        data = np.array([[0.0, 1.0], [1.0, 0.0]], "float32")
        per_example = csl_log_likelihood(logits, data, return_per_example=True)[1]
        np.testing.assert_allclose(per_example, [-80.0, 0.0], rtol=1e-5, atol=1e-6)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match=r"in \[0, 1\]"):
            csl_log_likelihood(LOGITS, BINARY * 255)
        with pytest.raises(ValueError, match="finite"):
            csl_log_likelihood(np.full((2, 6), np.nan, "float32"), BINARY)
        with pytest.raises(ValueError, match="features per row"):
            csl_log_likelihood(LOGITS, BINARY[:, :5])
        with pytest.raises(ValueError, match="chunk_size"):
            csl_log_likelihood(LOGITS, BINARY, chunk_size=0)

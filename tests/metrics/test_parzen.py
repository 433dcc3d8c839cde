"""Tests for deepkit.metrics.parzen: the Parzen-window log-likelihood against a
brute-force float64 numpy reference (several bandwidths, n != m, chunk sizes
that do not divide n or m, chunk size 1), a density worked by hand, the
standard error, the choice of sigma, the nearest training rows against numpy's
argmin, and the argument errors."""

import math

import keras
import numpy as np
import pytest

from deepkit.metrics import (
    Neighbours,
    ParzenEstimate,
    SigmaSelection,
    nearest_neighbours,
    parzen_log_likelihood,
    select_sigma,
)
from deepkit.testing import TestCase

RNG = np.random.default_rng(7)
SAMPLES = RNG.uniform(size=(11, 5)).astype("float32")  # n = 11 (prime)
DATA = RNG.uniform(size=(7, 5)).astype("float32")  # m = 7 (prime)


def reference_log_likelihoods(samples, data, sigma):
    """Brute force in float64: every ||x - s||^2 from the differences, then log-mean-exp."""
    samples = samples.astype("float64")
    data = data.astype("float64")
    n, d = samples.shape
    squared = ((data[:, None, :] - samples[None, :, :]) ** 2).sum(axis=-1)  # [m, n]
    exponents = -squared / (2 * sigma**2)
    top = exponents.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(exponents - top).sum(axis=1)) + top[:, 0]
    return log_sum - np.log(n) - 0.5 * d * np.log(2 * np.pi * sigma**2)


class ParzenLogLikelihoodTest(TestCase):
    def test_one_gaussian_worked_by_hand(self):
        # One sample at 0, sigma 1, x = 1 in one dimension: log N(1; 0, 1).
        estimate = parzen_log_likelihood([[0.0]], [[1.0]], sigma=1.0)
        self.assertAlmostEqual(estimate.mean, -0.5 - 0.5 * math.log(2 * math.pi), places=5)
        self.assertEqual(estimate.standard_error, 0.0)
        # Two samples at 0 and 2, sigma 0.5, x = 1 in 2-D (both at squared distance 1 + 0):
        # log p = -1 / (2 * 0.25) - log(2 pi 0.25) = -2 - log(pi / 2).
        estimate = parzen_log_likelihood([[0.0, 3.0], [2.0, 3.0]], [[1.0, 3.0]], sigma=0.5)
        self.assertAlmostEqual(estimate.mean, -2.0 - math.log(math.pi / 2), places=5)

    def test_matches_brute_force_for_several_sigmas(self):
        for sigma in (0.05, 0.2, 1.0, 3.0):
            expected = reference_log_likelihoods(SAMPLES, DATA, sigma)
            estimate, per_example = parzen_log_likelihood(SAMPLES, DATA, sigma,
                                                          return_per_example=True)
            self.assertEqual(per_example.shape, (7,))
            # float32 distances: about 1e-7 of |x s| / sigma^2 (2000 at sigma 0.05).
            self.assertAllClose(per_example, expected, rtol=1e-5, atol=2e-3)
            self.assertAlmostEqual(estimate.mean, expected.mean(), delta=2e-3)
            # The other way round (n < m) too.
            expected = reference_log_likelihoods(DATA, SAMPLES, sigma)
            _, per_example = parzen_log_likelihood(DATA, SAMPLES, sigma, return_per_example=True)
            self.assertAllClose(per_example, expected, rtol=1e-5, atol=2e-3)

    def test_chunked_equals_unchunked(self):
        sigma = 0.3
        expected = reference_log_likelihoods(SAMPLES, DATA, sigma)
        _, whole = parzen_log_likelihood(SAMPLES, DATA, sigma, chunk_size=1000,
                                         return_per_example=True)
        # (data rows, samples) per block: 1 x 1, sizes that divide neither 7 nor 11,
        # one of them 1, and exact sizes (1000 above is larger than both).
        for chunks in ((1, 1), (3, 4), (4, 1), (7, 11)):
            estimate, per_example = parzen_log_likelihood(
                SAMPLES, DATA, sigma, chunk_size=chunks[0], sample_chunk_size=chunks[1],
                return_per_example=True)
            self.assertAllClose(per_example, whole, rtol=1e-6, atol=1e-5, msg=str(chunks))
            self.assertAllClose(per_example, expected, rtol=1e-5, atol=1e-4, msg=str(chunks))
        # chunk_size alone sets both.
        _, per_example = parzen_log_likelihood(SAMPLES, DATA, sigma, chunk_size=3,
                                               return_per_example=True)
        self.assertAllClose(per_example, whole, rtol=1e-6, atol=1e-5)

    def test_mean_and_standard_error(self):
        sigma = 0.25
        expected = reference_log_likelihoods(SAMPLES, DATA, sigma)
        estimate = parzen_log_likelihood(SAMPLES, DATA, sigma, chunk_size=3)
        self.assertIsInstance(estimate, ParzenEstimate)
        mean, standard_error = estimate  # unpacks as a pair
        self.assertAlmostEqual(mean, expected.mean(), delta=1e-4)
        # The population std over sqrt(m), as yaoli/GSN (numpy.std(lls) / 100 for 10,000).
        self.assertAlmostEqual(standard_error, expected.std() / math.sqrt(7), delta=1e-5)
        self.assertGreater(standard_error, 0.0)
        self.assertIsInstance(mean, float)
        self.assertEqual(str(ParzenEstimate(214.034, 1.1)), "214.03 ± 1.10")

    def test_stable_far_from_every_sample(self):
        # exp(-5000) underflows in any float: the running log-sum-exp must not.
        samples = np.array([[0.0], [0.5]], "float32")
        data = np.array([[10.0], [-10.0]], "float32")
        estimate, per_example = parzen_log_likelihood(samples, data, sigma=0.1, chunk_size=1,
                                                      return_per_example=True)
        expected = reference_log_likelihoods(samples, data, 0.1)
        self.assertTrue(np.all(np.isfinite(per_example)))
        self.assertAllClose(per_example, expected, rtol=1e-5)
        by_hand = -5000 - math.log(2) - 0.5 * math.log(2 * math.pi * 0.01)  # x = -10 vs s = 0
        self.assertAlmostEqual(expected[1], by_hand, places=6)

    def test_duplicated_samples_give_the_same_density(self):
        once = parzen_log_likelihood(SAMPLES, DATA, 0.4)
        twice = parzen_log_likelihood(np.concatenate([SAMPLES, SAMPLES]), DATA, 0.4, chunk_size=7)
        self.assertAlmostEqual(once.mean, twice.mean, delta=1e-4)

    def test_accepts_tensors(self):
        expected = parzen_log_likelihood(SAMPLES, DATA, 0.3)
        estimate = parzen_log_likelihood(keras.ops.convert_to_tensor(SAMPLES),
                                         keras.ops.convert_to_tensor(DATA), 0.3)
        self.assertAlmostEqual(estimate.mean, expected.mean, places=5)

    def test_errors_name_the_argument(self):
        with pytest.raises(ValueError, match="data has 4 features.*samples has 5"):
            parzen_log_likelihood(SAMPLES, DATA[:, :4], 0.2)
        for sigma in (0.0, -0.2, float("nan"), float("inf"), "wide"):
            with pytest.raises(ValueError, match="sigma must be a positive"):
                parzen_log_likelihood(SAMPLES, DATA, sigma)
        with pytest.raises(ValueError, match="samples must not be empty"):
            parzen_log_likelihood(np.zeros((0, 5), "float32"), DATA, 0.2)
        with pytest.raises(ValueError, match="data must not be empty"):
            parzen_log_likelihood(SAMPLES, np.zeros((0, 5), "float32"), 0.2)
        with pytest.raises(ValueError, match="data must be a matrix"):
            parzen_log_likelihood(SAMPLES, DATA[0], 0.2)
        for chunk in (0, -3, 2.5, True):
            with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
                parzen_log_likelihood(SAMPLES, DATA, 0.2, chunk_size=chunk)
        with pytest.raises(ValueError, match="sample_chunk_size must be a positive integer"):
            parzen_log_likelihood(SAMPLES, DATA, 0.2, sample_chunk_size=0)


class SelectSigmaTest(TestCase):
    def test_picks_the_argmax_on_validation_data(self):
        sigmas = [0.02, 0.1, 0.3, 1.0, 5.0]
        selection = select_sigma(SAMPLES, DATA, sigmas, chunk_size=5)
        self.assertIsInstance(selection, SigmaSelection)
        expected = [reference_log_likelihoods(SAMPLES, DATA, s).mean() for s in sigmas]
        self.assertEqual([s for s, _ in selection.table], sigmas)
        self.assertAllClose([mean for _, mean in selection.table], expected, rtol=1e-5, atol=2e-3)
        best = sigmas[int(np.argmax(expected))]
        self.assertEqual(selection.sigma, best)
        self.assertNotIn(best, (sigmas[0], sigmas[-1]))  # an interior optimum
        # The same winner in any order; a numpy array of candidates works too.
        self.assertEqual(select_sigma(SAMPLES, DATA, np.array(sigmas[::-1])).sigma, best)

    def test_first_of_equal_scores_wins(self):
        selection = select_sigma(SAMPLES, DATA, [0.3, 0.3])
        self.assertEqual(selection.table[0][1], selection.table[1][1])
        self.assertEqual(selection.sigma, 0.3)

    def test_errors(self):
        with pytest.raises(ValueError, match="sigmas must hold at least one"):
            select_sigma(SAMPLES, DATA, [])
        with pytest.raises(ValueError, match="sigmas must be a positive"):
            select_sigma(SAMPLES, DATA, [0.2, -1.0])
        with pytest.raises(ValueError, match="valid_data has 4 features"):
            select_sigma(SAMPLES, DATA[:, :4], [0.2])


class NearestNeighboursTest(TestCase):
    def test_matches_numpy_argmin(self):
        squared = ((SAMPLES[:, None, :].astype("float64") - DATA[None].astype("float64")) ** 2
                   ).sum(axis=-1)
        for chunk in (1, 3, 1000):
            nearest = nearest_neighbours(SAMPLES, DATA, chunk_size=chunk)
            self.assertIsInstance(nearest, Neighbours)
            self.assertEqual(nearest.indices.shape, (11,))
            self.assertAllEqual(nearest.indices, squared.argmin(axis=1))
            self.assertAllClose(nearest.distances, np.sqrt(squared.min(axis=1)), rtol=1e-5,
                                atol=1e-6)

    def test_a_copied_training_row_is_found_at_distance_zero(self):
        samples = np.stack([DATA[5], DATA[2] + 0.01, DATA[6]])
        nearest = nearest_neighbours(samples, DATA, chunk_size=4)
        self.assertAllEqual(nearest.indices, [5, 2, 6])
        self.assertAllClose(nearest.distances, [0.0, 0.01 * math.sqrt(5), 0.0], atol=1e-6)

    def test_first_of_equal_rows_wins(self):
        train = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], "float32")
        nearest = nearest_neighbours([[0.0, 0.1]], train, chunk_size=1)
        self.assertAllEqual(nearest.indices, [1])
        nearest = nearest_neighbours([[0.0, 0.1]], train, chunk_size=3)
        self.assertAllEqual(nearest.indices, [1])

    def test_errors_name_the_argument(self):
        with pytest.raises(ValueError, match="train has 4 features"):
            nearest_neighbours(SAMPLES, DATA[:, :4])
        with pytest.raises(ValueError, match="train must not be empty"):
            nearest_neighbours(SAMPLES, np.zeros((0, 5), "float32"))
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            nearest_neighbours(SAMPLES, DATA, chunk_size=0)

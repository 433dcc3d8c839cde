"""Tests for deepkit.datasets.epoch_arrays.EpochShuffledArrays."""

import numpy as np
import pytest

from deepkit import datasets
from deepkit.datasets.epoch_arrays import EpochShuffledArrays

X = np.arange(10, dtype="float32")[:, None] * np.ones((1, 3), "float32")
Y = np.arange(10, dtype="int32")


def test_each_epoch_is_the_permutation_of_seed_and_epoch():
    data = EpochShuffledArrays((X, Y), batch_size=4, seed=7)
    assert len(data) == 3
    for epoch in (0, 3):
        data.set_epoch(epoch)
        order = np.random.default_rng([7, epoch]).permutation(10)
        seen = np.concatenate([data[i][1] for i in range(len(data))])
        np.testing.assert_array_equal(seen, order)
        np.testing.assert_array_equal(data[0][0][:, 0], order[:4].astype("float32"))
    # A fresh dataset (a resumed process) gives epoch 3 the same batches.
    again = EpochShuffledArrays((X, Y), batch_size=4, seed=7)
    again.set_epoch(3)
    np.testing.assert_array_equal(again[2][1], data[2][1])
    assert len(data[2][1]) == 2  # the last batch is smaller


def test_no_shuffle_keeps_the_stored_order():
    data = EpochShuffledArrays((X, Y, np.ones(10)), batch_size=4, seed=7, shuffle=False)
    data.set_epoch(5)
    np.testing.assert_array_equal(data[1][1], [4, 5, 6, 7])
    assert len(data[1]) == 3


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="the arrays differ in length: \\[10, 9\\]"):
        EpochShuffledArrays((X, Y[:9]), batch_size=4, seed=1)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        EpochShuffledArrays((X, Y), batch_size=0, seed=1)


def test_the_datasets_package_names_it():
    assert datasets.EpochShuffledArrays is EpochShuffledArrays
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        datasets.nothing

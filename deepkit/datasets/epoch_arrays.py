"""EpochShuffledArrays: numpy arrays as batches whose order depends only on (seed, epoch)."""

import math

import keras
import numpy as np


class EpochShuffledArrays(keras.utils.PyDataset):
    """Batches of numpy arrays in an order that depends only on `(seed, epoch)`.

    Keras' own shuffling of arrays draws from global random state, which a
    run resumed in a new process does not share. This dataset draws the
    permutation of epoch `e` from `numpy.random.default_rng([seed, e])`, so
    epoch `e` sees the same batches whether or not the run was interrupted
    before it. `ExactBackupAndRestore` calls `set_epoch(epoch)` at the start
    of every epoch; pass `shuffle=False` to `fit` (the dataset shuffles
    itself). Procedures that need the whole training set at once (the
    alternating hard-mixture algorithm) read `arrays`.

    Args:
        arrays: `(x, y)` or `(x, y, sample_weight)`, numpy arrays of equal
            length; an element may also be a dict of arrays (the targets
            of a model with named outputs, ``{"hints": ..., "label": ...}``).
        batch_size: examples per batch (the last batch may be smaller).
        seed: the shuffle seed.
        shuffle: shuffle each epoch; False keeps the stored order (needed for
            stateful RNNs trained by truncated BPTT).

    Example:

    ```python
    data = EpochShuffledArrays((x_train, y_train), batch_size=100, seed=1)
    backup = ExactBackupAndRestore("run/backup", seed=1, data=data)
    model.fit(data, epochs=10, shuffle=False, callbacks=[backup])
    ```

    Reference: the resume contract of `keras.callbacks.BackupAndRestore`,
    made exact for the data order.
    """

    def __init__(self, arrays, batch_size, seed, shuffle=True):
        super().__init__(workers=1, use_multiprocessing=False)
        self.arrays = tuple(arrays)
        if not self.arrays:
            raise ValueError("EpochShuffledArrays needs at least one array, got none")
        self.size = _length(self.arrays[0])
        lengths = [_length(a) for a in self.arrays]
        if any(n != self.size for n in lengths):
            raise ValueError(f"EpochShuffledArrays: the arrays differ in length: {lengths}")
        if int(batch_size) < 1:
            raise ValueError(f"EpochShuffledArrays: batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.set_epoch(0)

    def set_epoch(self, epoch):
        """Draw the order of `epoch` (called by `ExactBackupAndRestore`)."""
        self.epoch = int(epoch)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            self.order = rng.permutation(self.size)
        else:
            self.order = None

    def __len__(self):
        return math.ceil(self.size / self.batch_size)

    def __getitem__(self, index):
        start = index * self.batch_size
        stop = min(start + self.batch_size, self.size)
        rows = slice(start, stop) if self.order is None else self.order[start:stop]
        return tuple(_take(a, rows) for a in self.arrays)


def as_arrays(data):
    """`data` (`(x, y)` or `(x, y, sample_weight)`) as a tuple of numpy
    arrays, an element that is a dict (named outputs' targets) as a dict of
    them."""
    return tuple({k: np.asarray(v) for k, v in a.items()} if isinstance(a, dict)
                 else np.asarray(a) for a in data)


def _length(element):
    """Rows of an array, or of the arrays of a dict (which must agree)."""
    if isinstance(element, dict):
        lengths = {key: len(value) for key, value in element.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ValueError(f"EpochShuffledArrays: the arrays of a dict element differ in "
                             f"length (or there are none): {lengths}")
        return next(iter(lengths.values()))
    return len(element)


def _take(element, rows):
    if isinstance(element, dict):
        return {key: value[rows] for key, value in element.items()}
    return element[rows]

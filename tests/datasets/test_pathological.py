"""Tests for deepkit.datasets.pathological: the labelling functions on
hand-made sequences, generated sequences checked against each task's
definition (written out here independently of the generators), seeds and
splits, shapes and padding, the resumable stream, and refused options."""

import numpy as np
import pytest

from deepkit import datasets
from deepkit.datasets import pathological as P

NAMES = ("adding", "multiplication", "temporal_order", "temporal_order_3bit",
         "random_permutation", "noiseless_memorization")
A, B = 0, 1


def _one_hot(symbols, depth):
    return np.eye(depth, dtype="float32")[np.asarray(symbols)]


def _unpad(x):
    """The real steps of one padded sequence `[T, features]`."""
    real = np.any(x != 0, axis=-1)
    start = int(np.argmax(real))
    assert real[start:].all(), "padding only at the front"
    return x[start:]


# -- labelling functions on hand-made sequences ---------------------------------------


def test_adding_and_multiplication_label_the_marked_values():
    x = np.zeros((1, 6, 2), "float32")
    x[0, :, 1] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    x[0, [1, 3], 0] = 1.0  # marks 0.2 and 0.4
    np.testing.assert_allclose(P.adding_target(x), [[0.3]], rtol=1e-6)
    np.testing.assert_allclose(P.multiplication_target(x), [[0.08]], rtol=1e-6)
    assert P.adding_target(x).dtype == np.float32
    # Padding at the front changes nothing.
    padded = np.concatenate([np.zeros((1, 3, 2), "float32"), x], axis=1)
    np.testing.assert_allclose(P.target("adding", padded), [[0.3]], rtol=1e-6)
    x[0, 5, 0] = 1.0
    with pytest.raises(ValueError, match="sequence 0 has 3 marked steps, not 2"):
        P.adding_target(x)


def test_temporal_order_labels_the_order_of_the_relevant_symbols():
    # B then A among distractors: v0 = 1, v1 = 0 -> class 1 (BA).
    x = _one_hot([[2, B, 3, 4, A, 5], [A, 2, 2, 2, A, 3], [4, A, 5, B, 2, 2],
                  [B, 3, 3, 3, 3, B]], 6)
    np.testing.assert_array_equal(P.temporal_order_target(x), [1, 0, 2, 3])
    assert P.temporal_order_target(x).dtype == np.int32
    # An all-zero padding step is not an A (its argmax is 0).
    padded = np.concatenate([np.zeros((4, 2, 6), "float32"), x], axis=1)
    np.testing.assert_array_equal(P.temporal_order_target(padded), [1, 0, 2, 3])
    # Three bits: B, A, B -> 1 + 0 + 4 = 5; A, B, B -> 0 + 2 + 4 = 6.
    x3 = _one_hot([[B, 2, A, 3, B, 4], [A, 5, B, 5, B, 5]], 6)
    np.testing.assert_array_equal(P.temporal_order_3bit_target(x3), [5, 6])
    with pytest.raises(ValueError, match="shows 3 A/B symbols, not 2"):
        P.temporal_order_target(x3)


def test_permutation_labels_the_first_symbol():
    x = _one_hot([[1, 57, 3, 99], [0, 2, 2, 42]], 100)
    x[1, 0] = 0.0  # padding in front of the second: its first symbol is 2
    np.testing.assert_array_equal(P.permutation_target(x), [1, 2])


def test_memorization_labels_blank_then_the_values_from_the_trigger_on():
    # 3 values (blank = 3, trigger = 4), 2 positions, delay 2: [2, 0, _, _, T, _].
    x = _one_hot([[2, 0, 3, 3, 4, 3], [1, 1, 3, 3, 4, 3]], 5)
    np.testing.assert_array_equal(P.memorization_target(x), [[3, 3, 3, 3, 2, 0],
                                                             [3, 3, 3, 3, 1, 1]])
    padded = np.concatenate([np.zeros((2, 2, 5), "float32"), x], axis=1)
    np.testing.assert_array_equal(P.memorization_target(padded)[:, 2:],
                                  P.memorization_target(x))
    np.testing.assert_array_equal(P.memorization_target(padded)[:, :2], 3)
    with pytest.raises(ValueError, match="exactly one trigger"):
        P.memorization_target(x[:, :4])


# -- generated sequences meet the task definitions ------------------------------------


def _check_marked(x, y, length, combine):
    for seq, target in zip(x, y):
        seq = _unpad(seq)
        steps = len(seq)
        assert length <= steps < length + length // 10
        marks = np.flatnonzero(seq[:, 0])
        assert len(marks) == 2 and set(seq[:, 0]) <= {0.0, 1.0}
        tenth = steps // 10
        assert 0 <= marks[0] < tenth <= marks[1] < tenth + (4 * steps) // 10
        assert ((0 < seq[:, 1]) & (seq[:, 1] <= 1)).all()
        np.testing.assert_allclose(target, [combine(*seq[marks, 1])], rtol=1e-6)


def test_adding_sequences():
    x, y = datasets.load("adding", "train", length=30, size=200, seed=3)
    assert x.shape == (200, 32, 2) and y.shape == (200, 1)
    _check_marked(x, y, 30, lambda a, b: (a + b) / 2)


def test_multiplication_sequences():
    x, y = datasets.load("multiplication", "valid", length=40, size=200, seed=3)
    _check_marked(x, y, 40, lambda a, b: a * b)


CLASS_OF_ORDER = {"AA": 0, "BA": 1, "AB": 2, "BB": 3}


def _check_order(x, y, windows, code):
    for seq, target in zip(x, y):
        assert (seq.sum(-1) == 1).all()  # one-hot, no padding for a fixed length
        symbols = seq.argmax(-1)
        steps = len(symbols)
        relevant = np.flatnonzero(symbols < 2)
        assert len(relevant) == len(windows)
        for position, (low, high) in zip(relevant, windows):
            assert (low * steps) // 10 <= position < (low * steps) // 10 + steps // 10
            assert position < (high * steps) // 10
        assert set(symbols[symbols >= 2]) <= {2, 3, 4, 5}
        assert target == code("".join("AB"[s] for s in symbols[relevant]))


def test_temporal_order_sequences():
    x, y = datasets.load("temporal_order", "test", length=60, size=300, seed=5)
    assert x.shape == (300, 60, 6) and y.dtype == np.int32
    _check_order(x, y, [(1, 2), (5, 6)], CLASS_OF_ORDER.get)
    assert set(y) == {0, 1, 2, 3}


def test_temporal_order_3bit_sequences():
    x, y = datasets.load("temporal_order_3bit", "test", length=50, size=300, seed=5)
    bits = lambda order: sum(2 ** i for i, s in enumerate(order) if s == "B")
    _check_order(x, y, [(1, 2), (3, 4), (6, 7)], bits)
    assert set(y) == set(range(8))


def test_random_permutation_sequences():
    x, y = datasets.load("random_permutation", "train", length=20, size=100, seed=2)
    assert x.shape == (100, 20, 100)
    symbols = x.argmax(-1)
    assert (x.sum(-1) == 1).all()
    np.testing.assert_array_equal(y, symbols[:, 0])
    assert set(y) == {0, 1} and symbols[:, 1:].min() >= 2 and symbols[:, 1:].max() <= 99


def test_noiseless_memorization_sequences():
    x, y, w = datasets.load("noiseless_memorization", "train", length=7, size=50, seed=2,
                            n_values=4, n_positions=3)
    assert x.shape == (50, 7 + 6, 6) and y.shape == (50, 13) and w.shape == (50, 13)
    symbols = x.argmax(-1)
    blank, trigger = 4, 5
    assert symbols[:, :3].max() < 4
    np.testing.assert_array_equal(symbols[:, 3:10], blank)
    np.testing.assert_array_equal(symbols[:, 10], trigger)
    np.testing.assert_array_equal(symbols[:, 11:], blank)
    np.testing.assert_array_equal(y[:, :10], blank)
    np.testing.assert_array_equal(y[:, 10:], symbols[:, :3])
    np.testing.assert_array_equal(w, 1.0)


# -- variable lengths and padding -----------------------------------------------------


def test_variable_lengths_are_padded_at_the_front():
    x, y = datasets.load("temporal_order", "valid", length=20, max_length=40, size=400, seed=1)
    assert x.shape == (400, 40, 6)
    lengths = np.any(x != 0, axis=-1).sum(axis=1)
    assert lengths.min() == 20 and lengths.max() == 40
    assert len(set(lengths)) > 15
    for seq, target in zip(x, y):
        seq = _unpad(seq)
        _check_order(seq[None], target[None], [(1, 2), (5, 6)], CLASS_OF_ORDER.get)
    # The adding task adds its jitter to the largest nominal length too.
    assert P.max_steps("adding", 50, 200) == 219
    x, y = datasets.load("adding", "valid", length=50, max_length=200, size=300, seed=1)
    assert x.shape == (300, 219, 2)
    np.testing.assert_allclose(P.adding_target(x), y)


def test_memorization_padding_has_blank_targets_and_weight_zero():
    x, y, w = datasets.load("noiseless_memorization", "test", length=2, max_length=6, size=100,
                            seed=4, n_values=3, n_positions=2)
    assert x.shape == (100, 10, 5)
    real = np.any(x != 0, axis=-1)
    np.testing.assert_array_equal(w, real.astype("float32"))
    np.testing.assert_array_equal(y[~real], 3)
    np.testing.assert_array_equal(P.memorization_target(x), y)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_the_labelling_function(name):
    arrays = datasets.load(name, "valid", length=20, max_length=30, size=64, seed=9)
    x, y = arrays[:2]
    spec = P.TASKS[name]
    options = {"n_values": 5, "n_positions": 10} if spec.per_step else {}
    assert x.dtype == np.float32
    assert x.shape == (64, P.max_steps(name, 20, 30, **options), spec.features(**options))
    if spec.kind == "regression":
        assert y.dtype == np.float32 and y.shape == (64, 1)
    else:
        assert y.dtype == np.int32
        assert y.shape == ((64, x.shape[1]) if spec.per_step else (64,))
        assert 0 <= y.min() and y.max() < spec.classes(**options)
    assert len(arrays) == (3 if spec.per_step else 2)
    np.testing.assert_array_equal(P.target(name, x), y)


# -- seeds and splits ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_seed_fixes_the_data_and_splits_differ(name):
    load = lambda split, seed: datasets.load(name, split, length=20, size=32, seed=seed)
    first, again = load("valid", 1), load("valid", 1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    for other in (load("test", 1), load("train", 1), load("valid", 2)):
        assert not np.array_equal(first[0], other[0])


# -- the training stream ---------------------------------------------------------------


def _same(a, b):
    return a.shape == b.shape and np.array_equal(a, b)


def test_the_stream_resumes_from_seed_epoch_and_batch():
    options = dict(batch_size=8, steps_per_epoch=5, seed=3, length=20, max_length=60)
    stream = P.TaskStream("temporal_order", **options)
    assert len(stream) == 5
    stream.set_epoch(4)
    seen = [stream[i] for i in range(5)]
    resumed = P.TaskStream("temporal_order", **options)
    resumed.set_epoch(4)
    for i in (3, 0):
        np.testing.assert_array_equal(resumed[i][0], seen[i][0])
        np.testing.assert_array_equal(resumed[i][1], seen[i][1])
    # Batches of one epoch differ, and so do epochs and seeds.
    assert not _same(seen[0][0], seen[1][0])
    resumed.set_epoch(5)
    assert not _same(resumed[0][0], seen[0][0])
    other = P.TaskStream("temporal_order", **{**options, "seed": 4})
    other.set_epoch(4)
    assert not _same(other[0][0], seen[0][0])
    # Each batch has one length, unpadded; lengths vary between batches.
    shapes = {stream.batch(e, i)[0].shape for e in range(4) for i in range(5)}
    assert len(shapes) > 5
    assert all(20 <= s[1] <= 60 and s[0] == 8 for s in shapes)
    for x, y in seen:
        np.testing.assert_array_equal(P.temporal_order_target(x), y)
    with pytest.raises(IndexError):
        stream[5]


def test_the_stream_is_not_a_fixed_split_and_pads_on_request():
    stream = P.TaskStream("adding", 16, 2, seed=0, length=50, max_length=200, pad=True)
    x, y = stream[0]
    assert x.shape == (16, 219, 2) and y.shape == (16, 1)
    np.testing.assert_allclose(P.adding_target(x), y)
    memo = P.TaskStream("noiseless_memorization", 4, 1, seed=0, length=3, max_length=9,
                        pad=True, n_values=3, n_positions=2)
    x, y, w = memo[0]
    assert x.shape == (4, 13, 5) and w.shape == (4, 13)
    np.testing.assert_array_equal(P.memorization_target(x), y)
    fixed = P.TaskStream("temporal_order", 32, 1, seed=0, length=20)
    x_train, _ = datasets.load("temporal_order", "train", length=20, size=32, seed=0)
    assert not np.array_equal(fixed[0][0], x_train)


def test_the_epoch_moves_on_only_after_every_batch_was_drawn():
    stream = P.TaskStream("random_permutation", 2, 3, seed=1, length=5)
    stream[0]
    stream.on_epoch_end()  # fit draws one batch to build the model, then resets
    assert stream.epoch == 0
    for i in (2, 0, 1):
        stream[i]
    stream.on_epoch_end()
    stream.on_epoch_end()
    assert stream.epoch == 1
    stream.set_epoch(7)
    assert stream.epoch == 7


def _fit(stream, **kwargs):
    import keras

    seen = []

    class Recording(type(stream)):
        def __getitem__(self, index):
            seen.append((self.epoch, index))
            return super().__getitem__(index)

    stream.__class__ = Recording
    model = keras.Sequential([keras.Input((None, 6)), keras.layers.SimpleRNN(4),
                              keras.layers.Dense(4)])
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(stream, verbose=0, shuffle=False, **kwargs)
    # The batch drawn to build the model (if any) comes first.
    return seen[-3 * (kwargs["epochs"] - kwargs.get("initial_epoch", 0)):]


def test_fit_on_the_stream_sees_a_fresh_epoch_each_epoch():
    stream = P.TaskStream("temporal_order", 10, 3, seed=1, length=10, max_length=12)
    assert _fit(stream, epochs=2) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert stream.epoch == 2
    # Resumed at epoch 3 in a new object: the epoch callback sets it.
    resumed = P.TaskStream("temporal_order", 10, 3, seed=1, length=10, max_length=12)
    seen = _fit(resumed, epochs=4, initial_epoch=3, callbacks=[resumed.epoch_callback()])
    assert seen == [(3, 0), (3, 1), (3, 2)]


# -- registry and refusals --------------------------------------------------------------


def test_the_tasks_are_registered_without_files():
    assert set(NAMES) <= set(datasets.names())
    for name in NAMES:
        datasets.check_files(name)
        assert datasets.required_files(name) == []
        assert {"length", "max_length", "size", "train_size", "seed"} <= set(
            datasets.get(name).options)
        assert "Args:" in datasets.get(name).fn.__doc__
    assert set(datasets.get("noiseless_memorization").options) == {
        "length", "max_length", "size", "train_size", "seed", "n_values", "n_positions"}


@pytest.mark.parametrize("options, option", [
    ({"length": 5}, "length"),
    ({"length": 50.0}, "length"),
    ({"length": True}, "length"),
    ({"length": 50, "max_length": 40}, "max_length"),
    ({"size": 0}, "size"),
    ({"seed": -1}, "seed"),
])
def test_bad_options_are_refused_naming_the_option(options, option):
    with pytest.raises(ValueError, match=f"temporal_order: {option} must be"):
        datasets.load("temporal_order", "valid", **options)
    with pytest.raises(datasets.DataError, match=option):
        datasets.load("temporal_order", "valid", **options)


def test_bad_task_and_stream_options_are_refused():
    with pytest.raises(ValueError, match="n_positions must be >= 1, got 0"):
        datasets.load("noiseless_memorization", "train", n_positions=0)
    with pytest.raises(ValueError, match="random_permutation: length must be >= 2, got 1"):
        P.TaskStream("random_permutation", 4, 1, length=1)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        P.TaskStream("adding", 0, 1)
    with pytest.raises(ValueError, match="steps_per_epoch must be an integer"):
        P.TaskStream("adding", 4, None)
    with pytest.raises(ValueError, match="TaskStream has no option 'n_values'"):
        P.TaskStream("adding", 4, 1, n_values=3)
    with pytest.raises(ValueError, match="unknown pathological task 'adition'"):
        P.TaskStream("adition", 4, 1)
    with pytest.raises(datasets.DataError, match="has no option 'lenght'; did you mean length"):
        datasets.load("adding", "train", lenght=50)


def test_train_size_sets_the_training_split_only():
    x, y = datasets.load("temporal_order", "train", length=50, size=20, train_size=60, seed=3)
    xt, yt = datasets.load("temporal_order", "test", length=50, size=20, train_size=60, seed=3)
    assert (len(x), len(y), len(xt), len(yt)) == (60, 60, 20, 20)
    with pytest.raises(ValueError, match="train_size must be a positive integer or null, got 0"):
        datasets.load("temporal_order", "train", train_size=0)

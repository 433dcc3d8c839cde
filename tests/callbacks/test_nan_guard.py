"""StopOnNaN in a plain model.fit: stops at the first non-finite batch and
remembers where."""

import math

import keras
import numpy as np
import pytest

from deepkit.callbacks import StopOnNaN


class Poisoned(keras.utils.PyDataset):
    """Batches of a fixed data set, with NaN inputs in batch `batch` of epoch
    `epoch`; `Recorder` tells it the epoch."""

    def __init__(self, epoch, batch, value=float("nan"), n=80, batch_size=10):
        super().__init__()
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(n, 5)).astype("float32")
        self.y = (self.x[:, 0] > 0).astype("float32")
        self.poison = (epoch, batch)
        self.value = value
        self.batch_size = batch_size
        self.epoch = 0

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, i):
        rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
        x = self.x[rows].copy()
        if (self.epoch, i) == self.poison:
            x[2, 1] = self.value
        return x, self.y[rows]


class Recorder(keras.callbacks.Callback):
    """Records each batch's logged loss; sets the data's epoch."""

    def __init__(self, data):
        super().__init__()
        self.data = data
        self.batches, self.losses = [], {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = self.data.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append((self.epoch, batch))
        self.losses[(self.epoch, batch)] = float(np.asarray(logs["loss"]))


# Torch's binary cross-entropy raises on a NaN probability instead of
# returning NaN, so on torch the NaN reaches the loss through a squared error.
NAN_LOSS = "mse" if keras.backend.backend() == "torch" else "binary_crossentropy"


def _fit(data, loss=NAN_LOSS, epochs=4, activation="sigmoid", **guard_args):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1, activation=activation)])
    model.compile(keras.optimizers.SGD(0.1), loss)
    guard, recorder = StopOnNaN(**guard_args), Recorder(data)
    model.fit(data, epochs=epochs, shuffle=False, verbose=0, callbacks=[recorder, guard])
    return model, guard, recorder


def test_stops_at_the_first_nan_batch():
    model, guard, recorder = _fit(Poisoned(epoch=1, batch=3))
    assert guard.stopped_at == (1, 3)
    assert recorder.batches[-1] == (1, 3)  # no batch after it
    assert len(recorder.batches) == 8 + 4
    assert math.isnan(recorder.losses[(1, 3)])
    assert guard.last_finite_loss == recorder.losses[(1, 2)]
    assert np.isfinite(guard.last_finite_loss)
    assert model.stop_training


def test_infinite_loss_stops_too():
    _, guard, recorder = _fit(Poisoned(epoch=2, batch=0, value=1e30), loss="mse", activation=None)
    assert guard.stopped_at == (2, 0)
    assert recorder.batches[-1] == (2, 0)
    assert math.isinf(recorder.losses[(2, 0)])


def test_finite_training_is_not_stopped():
    _, guard, recorder = _fit(Poisoned(epoch=9, batch=0), epochs=3)
    assert guard.stopped_at is None
    assert len(recorder.batches) == 3 * 8
    assert guard.last_finite_loss == recorder.losses[(2, 7)]


def test_verbose_says_where(capsys):
    _fit(Poisoned(epoch=0, batch=5), verbose=True)
    assert capsys.readouterr().out == (
        "StopOnNaN: loss became nan at epoch 1, batch 6; training stopped\n")


@pytest.mark.parametrize("verbose", [False, True])
def test_config_round_trip(verbose):
    config = StopOnNaN(verbose=verbose).get_config()
    assert config == {"verbose": verbose}
    assert StopOnNaN(**config).get_config() == config

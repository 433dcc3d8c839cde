"""StopAtTarget in a plain model.fit: stops at the end of the first epoch
whose monitored value reaches the target."""

import keras
import numpy as np
import pytest

from deepkit.callbacks import StopAtTarget

EPOCHS = 6


def _data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8)).astype("float32")
    y = (x[:, :2].sum(axis=1) > 0).astype("int32")
    return x, y


def _fit(callbacks=()):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.02), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x, y = _data()
    history = model.fit(x, y, batch_size=20, epochs=EPOCHS, shuffle=False, verbose=0,
                        validation_data=(x[:50], y[:50]), callbacks=list(callbacks))
    return history.history


@pytest.fixture(scope="module")
def reference():
    """The history of the same training without the callback."""
    history = _fit()
    assert all(np.diff(history["loss"]) < 0), "the reference loss should fall every epoch"
    return history


@pytest.mark.parametrize("stop_epoch", [0, 3, EPOCHS - 1])
def test_stops_at_the_first_epoch_at_or_below_the_target(reference, stop_epoch):
    losses = reference["loss"]
    # between this epoch's loss and the previous one's
    above = losses[stop_epoch - 1] if stop_epoch else losses[0] + 1.0
    target = (losses[stop_epoch] + above) / 2
    callback = StopAtTarget("loss", target)
    history = _fit([callback])
    assert len(history["loss"]) == stop_epoch + 1
    assert callback.reached_at == stop_epoch
    np.testing.assert_allclose(history["loss"], losses[: stop_epoch + 1], rtol=1e-6)


def test_never_reached_trains_every_epoch(reference):
    callback = StopAtTarget("val_loss", target=min(reference["val_loss"]) - 1.0)
    history = _fit([callback])
    assert len(history["loss"]) == EPOCHS
    assert callback.reached_at is None


def test_max_mode(reference):
    accuracy = reference["val_accuracy"]
    target = accuracy[3]
    expected = next(e for e, a in enumerate(accuracy) if a >= target)
    assert accuracy[0] < target, "the reference accuracy should rise after epoch 1"
    callback = StopAtTarget("val_accuracy", target, mode="max")
    history = _fit([callback])
    assert callback.reached_at == expected
    assert len(history["loss"]) == expected + 1


def test_unknown_monitor_is_an_error_that_lists_the_logs():
    with pytest.raises(ValueError, match=r"'val_los' is not in the logs \(available: "
                                         r"accuracy, loss, val_accuracy, val_loss\)"):
        _fit([StopAtTarget("val_los", 0.1)])


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mode must be 'min' or 'max', got 'lowest'"):
        StopAtTarget("loss", 0.1, mode="lowest")


def test_config_round_trip():
    callback = StopAtTarget("val_accuracy", 0.98, mode="max")
    config = callback.get_config()
    assert config == {"monitor": "val_accuracy", "target": 0.98, "mode": "max"}
    assert StopAtTarget(**config).get_config() == config

import time

import keras
import numpy as np
import pytest

from deepkit.callbacks import TimeLimit


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_stops_at_the_last_whole_epoch_that_fits():
    x = np.zeros((8, 3), "float32")
    y = np.zeros((8, 1), "float32")
    slow = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep(0.3))
    limit = TimeLimit(minutes=1.5 / 60)  # 1.5 s; epochs take a bit over 0.3 s
    history = _model().fit(x, y, epochs=100, verbose=0, callbacks=[slow, limit])
    epochs = len(history.history["loss"])
    # After epoch e (from 1) about 0.3 e s have passed; the next one would
    # end past 1.5 s once 0.3 (e + 1) > 1.5, so it stops after 3 or 4 epochs.
    assert 2 <= epochs <= 4
    assert limit.stopped_epoch == epochs - 1


def test_a_generous_budget_does_not_stop():
    x = np.zeros((8, 3), "float32")
    y = np.zeros((8, 1), "float32")
    limit = TimeLimit(minutes=10)
    history = _model().fit(x, y, epochs=3, verbose=0, callbacks=[limit])
    assert len(history.history["loss"]) == 3
    assert limit.stopped_epoch is None


@pytest.mark.parametrize("bad", [0, -1, "ten", True, None])
def test_bad_budget(bad):
    with pytest.raises(ValueError, match="TimeLimit: minutes must be a positive number"):
        TimeLimit(minutes=bad)


def test_config_round_trip():
    cb = TimeLimit(minutes=25)
    assert TimeLimit(**cb.get_config()).get_config() == cb.get_config() == {"minutes": 25.0}

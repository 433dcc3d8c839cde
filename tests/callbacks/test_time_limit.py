import keras
import numpy as np
import pytest

from deepkit.callbacks import TimeLimit


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


class _Clock:
    """A stand-in for the `time` module whose clock moves only when told."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


def test_stops_at_the_last_whole_epoch_that_fits(monkeypatch):
    from deepkit.callbacks import time_limit

    clock = _Clock()  # a fake clock: the test does not depend on the machine's load
    monkeypatch.setattr(time_limit, "time", clock)
    x = np.zeros((8, 3), "float32")
    y = np.zeros((8, 1), "float32")

    def tick(epoch, logs):
        clock.now += 0.3  # every epoch takes 0.3 s

    limit = TimeLimit(minutes=1.4 / 60)
    history = _model().fit(x, y, epochs=100, verbose=0, callbacks=[
        keras.callbacks.LambdaCallback(on_epoch_end=tick), limit])
    # After epoch e (from 1) 0.3 e s have passed and the longest epoch took
    # 0.3 s: it stops once 0.3 e + 0.3 > 1.4, after epoch 4.
    assert len(history.history["loss"]) == 4
    assert limit.stopped_epoch == 3


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

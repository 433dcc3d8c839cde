"""AnnealOnPlateau: GroundHog's rule (divide the rate and go back to the best
weights after `patience` bad epochs), step by step on hand-made validation
values, and in a real fit."""

import json

import keras
import numpy as np
import pytest

from deepkit.callbacks import AnnealOnPlateau


def _model(lr=0.1):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(lr, momentum=0.9), "mse")
    return model


def _lr(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def _drive(callback, model, values):
    """Epoch e sets every weight to e, then reports values[e]; returns the
    weight value seen after each epoch's decision and the learning rates."""
    callback.set_model(model)
    callback.on_train_begin()
    seen, rates = [], []
    for epoch, value in enumerate(values):
        model.set_weights([np.full_like(w, epoch) for w in model.get_weights()])
        logs = {"val_loss": value}
        callback.on_epoch_end(epoch, logs)
        seen.append(float(model.get_weights()[0].flat[0]))
        rates.append(_lr(model))
        if model.stop_training:
            break
    return seen, rates


def test_the_groundhog_rule_step_by_step():
    model = _model(0.1)
    callback = AnnealOnPlateau("val_loss", factor=0.5, patience=2, tolerance=0.01, min_lr=0.02)
    #          e0   e1   e2    e3    e4    e5    e6   e7    e8    e9
    values = [5.0, 4.0, 4.02, 4.5, 4.6, 3.9, 4.0, 4.2, 4.3, 4.4]
    seen, rates = _drive(callback, model, values)
    # e0, e1: improvements (best weights 0, then 1)
    # e2: 4.02 is within 1% of 4.0: neither better nor bad
    # e3: bad (1); e4: bad (2) -> rate 0.05, back to the weights of e1
    # e5: improvement (best 3.9, weights 5); e6: 4.0 > 3.939: bad (1)
    # e7: bad (2) -> rate 0.025, back to e5's weights
    # e8: bad (1); e9: bad (2) -> 0.0125 < min_lr 0.02: stop
    assert seen == [0, 1, 2, 3, 1, 5, 6, 5, 8, 9]
    np.testing.assert_allclose(rates, [0.1] * 4 + [0.05] * 3 + [0.025] * 3, rtol=1e-6)
    assert callback.divisions == 2 and callback.stopped_epoch == 9 and model.stop_training
    assert callback.best == 3.9 and callback.best_epoch == 5
    callback.on_train_end()
    assert float(model.get_weights()[0].flat[0]) == 5.0  # best weights at the end


def test_max_mode_and_bad_epochs_need_not_be_consecutive():
    model = _model(1.0)
    callback = AnnealOnPlateau("val_loss", mode="max", patience=2, tolerance=0.0)
    # 0.9 (best), 0.8 bad, 0.9 equal (neither), 0.85 bad -> divide
    seen, rates = _drive(callback, model, [0.9, 0.8, 0.9, 0.85, 0.95])
    assert seen == [0, 1, 2, 0, 4]
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5]


def test_learning_rate_is_logged():
    model = _model(0.3)
    callback = AnnealOnPlateau("val_loss")
    callback.set_model(model)
    callback.on_train_begin()
    logs = {"val_loss": 1.0}
    callback.on_epoch_end(0, logs)
    assert logs["learning_rate"] == pytest.approx(0.3)


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="AnnealOnPlateau: mode must be"):
        AnnealOnPlateau(mode="down")
    with pytest.raises(ValueError, match="factor must be between 0 and 1"):
        AnnealOnPlateau(factor=2)
    with pytest.raises(ValueError, match="patience must be an integer >= 1"):
        AnnealOnPlateau(patience=0)
    model = _model()
    callback = AnnealOnPlateau("val_nll")
    callback.set_model(model)
    callback.on_train_begin()
    with pytest.raises(ValueError, match=r"monitor 'val_nll' is not in the logs of epoch 1; "
                                         r"available: \['loss', 'val_loss'\]"):
        callback.on_epoch_end(0, {"loss": 1.0, "val_loss": 1.0})
    scheduled = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    scheduled.compile(keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)),
                      "mse")
    callback = AnnealOnPlateau()
    callback.set_model(scheduled)
    with pytest.raises(ValueError, match="learning rate is a schedule"):
        callback.on_train_begin()
    # a callable rate cannot be divided either (Keras' setter would fail on it)
    called = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    called.compile(keras.optimizers.SGD(lambda: 0.1), "mse")
    callback.set_model(called)
    with pytest.raises(ValueError, match=r"is a schedule \(or a callable\)"):
        callback.on_train_begin()


def test_in_a_fit_the_rate_drops_and_the_best_weights_come_back():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = x @ rng.normal(size=(3, 2)).astype("float32")
    keras.utils.set_random_seed(1)
    model = _model(lr=0.4)  # too large: the validation loss goes up and down
    callback = AnnealOnPlateau("val_loss", patience=1, tolerance=0.0, min_lr=1e-4)
    history = model.fit(x, y, validation_data=(x[:16], y[:16]), batch_size=8, epochs=12,
                        shuffle=False, verbose=0, callbacks=[callback])
    assert callback.divisions >= 1
    val = history.history["val_loss"]
    assert callback.best == pytest.approx(min(val), rel=1e-6)
    # the final weights are the best epoch's: evaluating gives its loss
    assert model.evaluate(x[:16], y[:16], verbose=0) == pytest.approx(callback.best, rel=1e-4)
    rates = history.history["learning_rate"]
    assert rates[0] == pytest.approx(0.4) and rates[-1] < 0.4


def test_config_round_trip_and_state():
    callback = AnnealOnPlateau("val_frame_nll", factor=0.25, patience=3, tolerance=1e-3,
                               min_lr=0.01, restore_best_weights=False, reset_optimizer=True)
    config = callback.get_config()
    assert AnnealOnPlateau(**config).get_config() == config
    serialized = keras.saving.serialize_keras_object(callback)
    assert serialized["registered_name"] == "deepkit>AnnealOnPlateau"
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert isinstance(revived, AnnealOnPlateau) and revived.get_config() == config
    callback.best, callback.best_epoch, callback.wait, callback.divisions = 2.5, 4, 1, 2
    callback.best_weights = [np.ones((2, 2))]
    state, arrays = callback.get_state()
    other = AnnealOnPlateau(**config)
    other.set_state(state, arrays)
    assert other.get_state()[0] == state
    np.testing.assert_array_equal(other.best_weights[0], np.ones((2, 2)))


def test_reset_optimizer_zeroes_the_momentum_when_going_back():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    for reset in (False, True):
        model = _model(0.1)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # momentum is non-zero now
        callback = AnnealOnPlateau("val_loss", patience=1, tolerance=0.0, reset_optimizer=reset)
        _drive(callback, model, [1.0, 2.0])  # epoch 1 is bad: divide and go back
        slots = [np.asarray(v) for v in model.optimizer.variables
                 if "momentum" in v.path]
        assert slots and all(np.all(s == 0) for s in slots) == reset
        assert int(np.asarray(model.optimizer.iterations)) == 4  # never reset
        assert _lr(model) == pytest.approx(0.05)

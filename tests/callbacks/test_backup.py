"""ExactBackupAndRestore in a plain model.fit: atomic checkpoints, no
checkpoint of a non-finite epoch, and a resumed fit that ends with the same
weights as an uninterrupted one (dropout and per-epoch shuffling included)."""

import json

import keras
import numpy as np
import pytest

from deepkit.callbacks import ExactBackupAndRestore
from deepkit.callbacks.backup import epoch_seed_state
from deepkit.datasets.epoch_arrays import EpochShuffledArrays

SEED = 7


def _data(n=240):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 10)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    return x, y


def _model(seed=SEED):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((10,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dropout(0.4),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    return model


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def _meta(folder):
    return json.loads((folder / "training_metadata.json").read_text())


def test_one_weights_file_named_by_the_metadata(tmp_path):
    x, y = _data()
    model = _model()
    model.fit(x, y, batch_size=40, epochs=3, shuffle=False, verbose=0,
              callbacks=[ExactBackupAndRestore(str(tmp_path), seed=SEED)])
    assert _meta(tmp_path) == {"epoch": 3, "batch": 0, "weights": "epoch-00003.weights.h5",
                              "stop_training": False}
    assert _files(tmp_path) == ["epoch-00003.weights.h5", "training_metadata.json"]
    restored = _model(seed=99)
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(str(tmp_path / "epoch-00003.weights.h5"))
    for a, b in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_last_checkpoint_is_the_metadata_or_none(tmp_path):
    backup = ExactBackupAndRestore(str(tmp_path / "ckpt"), seed=SEED)
    assert backup.last_checkpoint() is None
    x, y = _data()
    _model().fit(x, y, batch_size=40, epochs=2, shuffle=False, verbose=0, callbacks=[backup])
    assert backup.last_checkpoint() == _meta(tmp_path / "ckpt")
    assert backup.last_checkpoint()["epoch"] == 2
    # a new callback on the same folder reads the same checkpoint
    assert ExactBackupAndRestore(str(tmp_path / "ckpt")).last_checkpoint()["weights"] == \
        "epoch-00002.weights.h5"


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    x, y = _data()
    _model().fit(x, y, batch_size=40, epochs=2, shuffle=False, verbose=0,
                 callbacks=[ExactBackupAndRestore(str(tmp_path), seed=SEED)])
    good = (tmp_path / "epoch-00002.weights.h5").read_bytes()

    def crash(self, filepath, *args, **kwargs):  # a partial file, then the process "dies"
        with open(filepath, "wb") as f:
            f.write(b"\x89HDF half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save_weights", crash)
    with pytest.raises(KeyboardInterrupt):
        _model().fit(x, y, batch_size=40, epochs=4, shuffle=False, verbose=0,
                     callbacks=[ExactBackupAndRestore(str(tmp_path), seed=SEED)])
    monkeypatch.undo()
    assert _meta(tmp_path)["weights"] == "epoch-00002.weights.h5"
    assert (tmp_path / "epoch-00002.weights.h5").read_bytes() == good
    assert "epoch-00003.weights.h5" not in _files(tmp_path)

    # the next run resumes from epoch 2 and cleans up the partial file
    backup = ExactBackupAndRestore(str(tmp_path), seed=SEED)
    history = _model().fit(x, y, batch_size=40, epochs=4, shuffle=False, verbose=0,
                           callbacks=[backup])
    assert backup.restored_epoch == 2 and len(history.history["loss"]) == 2
    assert _files(tmp_path) == ["epoch-00004.weights.h5", "training_metadata.json"]


def test_a_non_finite_epoch_is_not_checkpointed(tmp_path):
    x, y = _data()
    _model().fit(x, y, batch_size=40, epochs=2, shuffle=False, verbose=0,
                 callbacks=[ExactBackupAndRestore(str(tmp_path), seed=SEED)])
    good = (tmp_path / "epoch-00002.weights.h5").read_bytes()
    weights = np.ones(len(x), "float32")
    weights[5] = np.nan  # a NaN loss on every backend
    history = _model().fit(x, y, sample_weight=weights, batch_size=40, epochs=3, shuffle=False,
                           verbose=0, callbacks=[ExactBackupAndRestore(str(tmp_path), seed=SEED)])
    assert np.isnan(history.history["loss"][-1])  # epoch 3 ran, its loss is NaN
    assert _meta(tmp_path)["epoch"] == 2
    assert _files(tmp_path) == ["epoch-00002.weights.h5", "training_metadata.json"]
    assert (tmp_path / "epoch-00002.weights.h5").read_bytes() == good


class Interrupt(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise Interrupt


def _train(folder, interrupt=None, callback=ExactBackupAndRestore, model_seed=SEED):
    """Fit 4 epochs of shuffled, dropped-out training; returns the final weights."""
    x, y = _data()
    data = EpochShuffledArrays((x, y), batch_size=30, seed=SEED, shuffle=True)
    if callback is ExactBackupAndRestore:
        backup = ExactBackupAndRestore(str(folder), seed=SEED, data=data)
    else:
        backup = callback(str(folder))
    model = _model(model_seed)
    callbacks = [backup] + ([InterruptAt(*interrupt)] if interrupt else [])
    # shuffle=False: the data shuffles itself, from (seed, epoch)
    model.fit(data, epochs=4, shuffle=False, verbose=0, callbacks=callbacks)
    return model.get_weights()


def _interrupted_then_resumed(folder, callback=ExactBackupAndRestore):
    with pytest.raises(Interrupt):
        _train(folder, interrupt=(2, 3), callback=callback)
    # a new process would build a new model with other initial weights
    return _train(folder, callback=callback, model_seed=SEED + 1)


def test_resumed_fit_ends_with_the_same_weights(tmp_path):
    uninterrupted = _train(tmp_path / "a")
    resumed = _interrupted_then_resumed(tmp_path / "b")
    assert len(resumed) == len(uninterrupted) == 4
    for a, b in zip(resumed, uninterrupted):
        np.testing.assert_array_equal(a, b)


def test_plain_backup_and_restore_diverges_in_the_same_setting(tmp_path):
    """Why ExactBackupAndRestore exists: Keras' callback does not restore the
    random state, so the same interrupted training ends elsewhere."""
    uninterrupted = _train(tmp_path / "a", callback=keras.callbacks.BackupAndRestore)
    resumed = _interrupted_then_resumed(tmp_path / "b", callback=keras.callbacks.BackupAndRestore)
    assert not all(np.array_equal(a, b) for a, b in zip(resumed, uninterrupted))


def test_epoch_seed_states_are_distinct_31_bit_and_reproducible():
    states = {epoch_seed_state(SEED, e, i) for e in range(50) for i in range(3)}
    assert len(states) == 150
    assert all(0 <= s < 2**31 for s in states)
    assert epoch_seed_state(SEED, 4, 1) == epoch_seed_state(SEED, 4, 1)
    assert epoch_seed_state(SEED, 4, 1) != epoch_seed_state(SEED + 1, 4, 1)


def test_config_round_trip(tmp_path):
    callback = ExactBackupAndRestore(str(tmp_path / "ckpt"), seed=3, delete_checkpoint=True)
    config = callback.get_config()
    assert config == {"backup_dir": str(tmp_path / "ckpt"), "seed": 3, "delete_checkpoint": True}
    assert ExactBackupAndRestore(**config).get_config() == config


# -- the state of plateau rules and early stopping is part of the checkpoint --

def _train_with(folder, make_callbacks, interrupt=None, model_seed=SEED, epochs=8, lr=0.3):
    """Like `_train`, with validation data and the callbacks `make_callbacks()`
    returns placed before the backup; returns (weights, learning rates, callbacks)."""
    x, y = _data()
    data = EpochShuffledArrays((x[:180], y[:180]), batch_size=30, seed=SEED, shuffle=True)
    model = _model(model_seed)
    model.optimizer.learning_rate = lr
    watched = make_callbacks()
    backup = ExactBackupAndRestore(str(folder), seed=SEED, data=data, callbacks=watched)
    callbacks = watched + [backup] + ([InterruptAt(*interrupt)] if interrupt else [])
    history = model.fit(data, validation_data=(x[180:], y[180:]), epochs=epochs, shuffle=False,
                        verbose=0, callbacks=callbacks)
    return model.get_weights(), history.history.get("learning_rate", []), watched


def _plateau_callbacks():
    from deepkit.callbacks import AnnealOnPlateau
    return [AnnealOnPlateau("val_loss", patience=1, tolerance=0.0, min_lr=1e-4)]


def _keras_callbacks():
    return [keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=1),
            keras.callbacks.EarlyStopping("val_loss", patience=3, restore_best_weights=True)]


@pytest.mark.parametrize("make", [_plateau_callbacks, _keras_callbacks],
                         ids=["AnnealOnPlateau", "ReduceLROnPlateau+EarlyStopping"])
def test_resumed_fit_takes_the_same_plateau_decisions(tmp_path, make):
    weights, rates, watched = _train_with(tmp_path / "a", make)
    assert min(rates) < 0.3  # the rule acted
    with pytest.raises(Interrupt):
        _train_with(tmp_path / "b", make, interrupt=(4, 2))
    meta = _meta(tmp_path / "b")
    assert meta["epoch"] == 4 and len(meta["callbacks"]) == len(watched)
    resumed_weights, resumed_rates, resumed = _train_with(tmp_path / "b", make,
                                                          model_seed=SEED + 1)
    assert resumed_rates == rates[4:len(rates)]
    for a, b in zip(resumed_weights, weights):
        np.testing.assert_array_equal(a, b)
    for before, after in zip(watched, resumed):
        assert after.best == before.best and after.wait == before.wait


def test_a_run_that_stopped_early_does_not_train_again_on_resume(tmp_path):
    def make():
        return [keras.callbacks.EarlyStopping("val_loss", patience=1, restore_best_weights=True)]

    weights, _, (stopper,) = _train_with(tmp_path, make, epochs=30, lr=0.5)
    assert 0 < stopper.stopped_epoch < 29
    meta = _meta(tmp_path)
    assert meta["stop_training"] is True and meta["epoch"] == stopper.stopped_epoch + 1
    assert meta["callback_arrays"] in _files(tmp_path)  # the best weights
    # as if killed after the last checkpoint: the same command runs no epoch
    # and ends with the same (best) weights
    again, rates, (resumed,) = _train_with(tmp_path, make, epochs=30, lr=0.5, model_seed=SEED + 1)
    assert rates == [] and resumed.best_epoch == stopper.best_epoch
    for a, b in zip(again, weights):
        np.testing.assert_array_equal(a, b)


def test_a_stop_set_outside_the_kept_callbacks_is_kept_too(tmp_path):
    # No callbacks handed to the backup; a callback it does not keep stops
    # the fit after its third epoch. A resume must not train again.
    class StopAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                self.model.stop_training = True

    def fit(model_seed):
        x, y = _data()
        data = EpochShuffledArrays((x, y), batch_size=30, seed=SEED, shuffle=True)
        model = _model(model_seed)
        backup = ExactBackupAndRestore(str(tmp_path), seed=SEED, data=data)
        history = model.fit(data, epochs=10, shuffle=False, verbose=0,
                            callbacks=[StopAfter(), backup])
        return model.get_weights(), history.history.get("loss", [])

    weights, losses = fit(SEED)
    assert len(losses) == 3
    meta = _meta(tmp_path)
    assert meta["stop_training"] is True and meta["epoch"] == 3 and "callbacks" not in meta
    again, losses = fit(SEED + 1)
    assert losses == []
    for a, b in zip(again, weights):
        np.testing.assert_array_equal(a, b)


def test_resuming_with_other_callbacks_is_an_error(tmp_path):
    _train_with(tmp_path, _keras_callbacks, epochs=2)
    with pytest.raises(ValueError, match="keeps the state of 2 callbacks, this fit has 1"):
        _train_with(tmp_path, _plateau_callbacks, epochs=3)

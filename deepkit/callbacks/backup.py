"""Exact, atomic, NaN-safe backup and restore of a training run."""

import json
import os
from pathlib import Path

import keras
import numpy as np

from deepkit import _keras_internals
from deepkit.callbacks._config import FromConfig
from deepkit.export import export


def _finite(logs):
    value = (logs or {}).get("loss")
    return value is None or bool(np.isfinite(value))


def _json_number(value):
    """A monitored value as JSON can hold it (numpy scalars -> float)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return float(value)


# Keras callbacks whose progress lives in attributes: the ones to keep.
_KERAS_STATE = {
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
}


def _own_state(callback):
    return hasattr(callback, "get_state") and hasattr(callback, "set_state")


def _keras_fields(callback):
    return next((f for cls, f in _KERAS_STATE.items() if isinstance(callback, cls)), None)


def keeps_state(callback):
    """Whether `callback_state` has something to keep for `callback`."""
    return _own_state(callback) or _keras_fields(callback) is not None


def callback_state(callback):
    """`(state, arrays)` of a callback whose progress a resumed run needs.

    Callbacks with `get_state()` (deepkit's) give their own; for Keras'
    `EarlyStopping` and `ReduceLROnPlateau` the state is read from their
    attributes, and the arrays are `EarlyStopping`'s best weights. None
    for a callback without state to keep (see `keeps_state`).
    """
    if _own_state(callback):
        return callback.get_state()
    fields = _keras_fields(callback)
    if fields is None:
        return None
    state = {f: _json_number(getattr(callback, f)) for f in fields}
    return state, getattr(callback, "best_weights", None)


def set_callback_state(callback, state, arrays):
    """Put back what `callback_state` returned."""
    if _own_state(callback):
        callback.set_state(state, arrays)
        return
    for key, value in state.items():
        setattr(callback, key, value)
    if hasattr(callback, "best_weights"):
        callback.best_weights = None if arrays is None else [np.asarray(a) for a in arrays]


def epoch_seed_state(seed, epoch, index):
    """The 31-bit seed that random-state variable `index` gets at `epoch`."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0] & 0x7FFFFFFF)


def set_epoch_state(model, seed, epoch, data=None):
    """Set what epoch `epoch` draws: the data's order (`data.set_epoch`) and
    every `SeedGenerator` state of `model`, both from `(seed, epoch)`.

    `ExactBackupAndRestore` calls it at the start of every epoch; so does
    `deepkit.training.fit_stages` without checkpoints, so that a run's
    numbers do not depend on whether it is checkpointed.
    """
    if data is not None and hasattr(data, "set_epoch"):
        data.set_epoch(epoch)
    variables = _keras_internals.seed_state_variables(model)
    for index, variable in enumerate(variables):
        value = np.array([epoch_seed_state(seed, epoch, index), 0])
        variable.assign(value.astype(variable.dtype))
    if keras.backend.backend() == "torch":
        # Keras' torch dropout of a layer given no seed draws from torch's
        # global generator instead of its SeedGenerator.
        _keras_internals.torch_manual_seed(epoch_seed_state(seed, epoch, len(variables)))


@export
class ExactBackupAndRestore(FromConfig, keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose resumed runs end exactly as uninterrupted ones.

    Keras' `BackupAndRestore` restores weights, optimizer state and the epoch,
    but not the state of the random generators (dropout, noise) nor the order
    of the shuffled data, so a resumed run diverges. This callback:

    - sets every `SeedGenerator` state of the model at the start of each
      epoch to a value derived from `(seed, epoch)`, and tells the training
      data its epoch (`data.set_epoch(epoch)`, as
      `deepkit.datasets.epoch_arrays.EpochShuffledArrays` has), so epoch `e`
      draws the same numbers whether or not the run was interrupted before
      it;
    - writes each checkpoint atomically (a new weights file, then the
      metadata that names it, each through `os.replace`), so a kill during a
      write leaves the previous checkpoint intact;
    - skips the checkpoint of an epoch whose loss is not finite, so the last
      good checkpoint is kept when training diverges;
    - keeps the progress of the `callbacks` it is given (`EarlyStopping`,
      `ReduceLROnPlateau`, `AnnealOnPlateau` and any callback with
      `get_state()` / `set_state(state, arrays)`) in the same checkpoint, and
      whether the epoch stopped training, so early stopping and plateau
      rules resume where they were. Put it *after* those callbacks in the
      `fit` list, so that it saves each epoch once they have acted on it.

    `last_checkpoint()` returns the metadata of the checkpoint in
    `backup_dir` (the epoch it ends, its weights file, ...), or None.

    Args:
        backup_dir: folder of the checkpoint.
        seed: the run's seed, from which each epoch's random state derives.
        data: optional training data with a `set_epoch(epoch)` method.
        callbacks: the other callbacks of the `fit` call whose state to keep.
        delete_checkpoint: delete the checkpoint when training ends.

    Example:

    ```python
    stopper = keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)
    backup = ExactBackupAndRestore("run/backup", seed=1, callbacks=[stopper])
    # run again after a crash: it resumes, early stopping included
    model.fit(x, y, validation_split=0.1, epochs=100, shuffle=False,
              callbacks=[stopper, backup])
    ```

    Reference: the behaviour of `keras.callbacks.BackupAndRestore`, extended.
    """

    def __init__(self, backup_dir, seed=0, data=None, callbacks=(), delete_checkpoint=False):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=delete_checkpoint)
        self.seed = int(seed)
        self.data = data
        self.callbacks = [c for c in callbacks if keeps_state(c)]
        self.restored_epoch = 0
        # This callback's own checkpoint bookkeeping: the metadata file (the
        # name Keras' BackupAndRestore uses too) and the number of finished
        # epochs, which the checkpoint being written records.
        self._metadata_path = Path(backup_dir) / "training_metadata.json"
        self._epochs_done = 0

    def get_config(self):
        return {"backup_dir": self.backup_dir, "seed": self.seed,
                "delete_checkpoint": self.delete_checkpoint}

    # -- random state -------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        set_epoch_state(self.model, self.seed, epoch, self.data)

    # -- saving -------------------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        # Keras' BackupAndRestore.on_epoch_end is not called: this callback
        # saves each epoch itself (save_freq="epoch").
        if _finite(logs):
            self._epochs_done = epoch + 1
            self._write_checkpoint()

    def last_checkpoint(self):
        """The metadata of the checkpoint in `backup_dir`, or None if there is none.

        A dict with ``"epoch"`` (the number of finished epochs it holds),
        ``"weights"`` (the weights file's name in `backup_dir`),
        ``"stop_training"`` and, when callbacks are kept, ``"callbacks"`` and
        ``"callback_arrays"``.
        """
        if not self._metadata_path.exists():
            return None
        return json.loads(self._metadata_path.read_text())

    def _write_checkpoint(self):
        folder = Path(self.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{self._epochs_done:05d}.weights.h5"
        tmp = folder / f"tmp-{name}"
        self.model.save_weights(str(tmp), overwrite=True)
        os.replace(tmp, folder / name)
        # Whether this epoch ended the training is recorded with or without
        # kept callbacks: whatever set it (a callback, the model itself),
        # a resumed run must not train past it.
        meta = {"epoch": self._epochs_done, "batch": 0, "weights": name,
                "stop_training": bool(self.model.stop_training)}
        keep = {name}
        if self.callbacks:
            states, arrays = [], {}
            for i, callback in enumerate(self.callbacks):
                state, weights = callback_state(callback)
                states.append(state)
                for j, array in enumerate(weights or ()):
                    arrays[f"c{i}_{j:04d}"] = np.asarray(array)
            meta["callbacks"] = states
            if arrays:
                arrays_name = f"epoch-{self._epochs_done:05d}.callbacks.npz"
                tmp = folder / f"tmp-{arrays_name}"
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
                os.replace(tmp, folder / arrays_name)
                meta["callback_arrays"] = arrays_name
                keep.add(arrays_name)
        meta_tmp = folder / "training_metadata.json.tmp"
        meta_tmp.write_text(json.dumps(meta))
        os.replace(meta_tmp, self._metadata_path)
        for old in list(folder.glob("*.weights.h5")) + list(folder.glob("*.callbacks.npz")):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def _read_states(self, meta):
        """[(callback, (state, arrays))] from the checkpoint's metadata."""
        states = meta.get("callbacks")
        if states is None or not self.callbacks:
            return []
        if len(states) != len(self.callbacks):
            raise ValueError(
                f"ExactBackupAndRestore: the checkpoint in {self.backup_dir} keeps the state "
                f"of {len(states)} callbacks, this fit has {len(self.callbacks)}; resume with "
                "the same callbacks")
        arrays = [None] * len(states)
        if "callback_arrays" in meta:
            with np.load(Path(self.backup_dir) / meta["callback_arrays"]) as stored:
                for i in range(len(states)):
                    keys = sorted(k for k in stored.files if k.startswith(f"c{i}_"))
                    arrays[i] = [stored[k] for k in keys] if keys else None
        return list(zip(self.callbacks, zip(states, arrays)))

    def _restore_checkpoint(self):
        meta = self.last_checkpoint()
        if meta is None:
            return
        if not self.model.built:
            raise ValueError("ExactBackupAndRestore: build the model before fit()")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(Path(self.backup_dir) / meta["weights"]))
        _keras_internals.set_initial_epoch(self.model, meta["epoch"])  # as BackupAndRestore
        self._epochs_done = meta["epoch"]
        self.restored_epoch = meta["epoch"]
        # Applied after the kept callbacks' own on_train_begin (they reset
        # themselves there), since this callback comes after them.
        for callback, (state, arrays) in self._read_states(meta):
            set_callback_state(callback, state, arrays)
        if meta.get("stop_training"):
            # The checkpointed epoch ended the training (early stopping, a
            # plateau rule, a time limit): no epoch is left to run.
            _keras_internals.set_initial_epoch(
                self.model, max(meta["epoch"], self.params.get("epochs", 0)))

    def on_train_begin(self, logs=None):
        # Replaces BackupAndRestore.on_train_begin (and its fallback to a
        # `.bkp` copy): the checkpoint is written atomically instead.
        self._restore_checkpoint()

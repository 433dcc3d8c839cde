"""Exact, atomic, NaN-safe backup and restore of a training run."""

import json
import os
from pathlib import Path

import keras
import numpy as np

from deepkit.export import export


def _finite(logs):
    value = (logs or {}).get("loss")
    return value is None or bool(np.isfinite(value))


def epoch_seed_state(seed, epoch, index):
    """The 31-bit seed that random-state variable `index` gets at `epoch`."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0] & 0x7FFFFFFF)


@export
class ExactBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose resumed runs end exactly as uninterrupted ones.

    Keras' `BackupAndRestore` restores weights, optimizer state and the epoch,
    but not the state of the random generators (dropout, noise) nor the order
    of the shuffled data, so a resumed run diverges. This callback:

    - sets every `SeedGenerator` state of the model at the start of each
      epoch to a value derived from `(seed, epoch)`, and tells the training
      data its epoch (`data.set_epoch(epoch)`, as `deepkit.recipe`'s
      `EpochShuffledArrays` has), so epoch `e` draws the same numbers whether
      or not the run was interrupted before it;
    - writes each checkpoint atomically (a new weights file, then the
      metadata that names it, each through `os.replace`), so a kill during a
      write leaves the previous checkpoint intact;
    - skips the checkpoint of an epoch whose loss is not finite, so the last
      good checkpoint is kept when training diverges.

    Args:
        backup_dir: folder of the checkpoint.
        seed: the run's seed, from which each epoch's random state derives.
        data: optional training data with a `set_epoch(epoch)` method.
        delete_checkpoint: delete the checkpoint when training ends.

    Example:

    ```python
    model.fit(x, y, epochs=10, shuffle=False,
              callbacks=[ExactBackupAndRestore("run/backup", seed=1)])
    ```

    Reference: the behaviour of `keras.callbacks.BackupAndRestore`, extended.
    """

    def __init__(self, backup_dir, seed=0, data=None, delete_checkpoint=False):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=delete_checkpoint)
        self.seed = int(seed)
        self.data = data
        self.restored_epoch = 0

    def get_config(self):
        return {"backup_dir": self.backup_dir, "seed": self.seed,
                "delete_checkpoint": self.delete_checkpoint}

    # -- random state -------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        if self.data is not None and hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)
        index = 0
        for variable in self.model.variables:
            if "seed_generator_state" in variable.path:
                value = np.array([epoch_seed_state(self.seed, epoch, index), 0])
                variable.assign(value.astype(variable.dtype))
                index += 1

    # -- saving -------------------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        if _finite(logs):
            super().on_epoch_end(epoch, logs)

    def _metadata(self):
        path = Path(self._training_metadata_path)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def _save_model(self):
        folder = Path(self.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{self._current_epoch:05d}.weights.h5"
        tmp = folder / f"tmp-{name}"
        self.model.save_weights(str(tmp), overwrite=True)
        os.replace(tmp, folder / name)
        meta_tmp = folder / "training_metadata.json.tmp"
        meta_tmp.write_text(json.dumps({"epoch": self._current_epoch, "batch": 0,
                                        "weights": name}))
        os.replace(meta_tmp, self._training_metadata_path)
        for old in folder.glob("*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def _load_model(self):
        meta = self._metadata()
        if meta is None:
            return
        if not self.model.built:
            raise ValueError("ExactBackupAndRestore: build the model before fit()")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(Path(self.backup_dir) / meta["weights"]))
        self.model._initial_epoch = meta["epoch"]  # what BackupAndRestore sets too
        self._current_epoch = meta["epoch"]
        self.restored_epoch = meta["epoch"]

    def on_train_begin(self, logs=None):
        self._load_model()

"""Helper for the Ctrl-C tests: send a real SIGINT to this process at a
chosen moment of a `deepkit run`.

Run in a subprocess, never imported by the test process itself (it registers
`InterruptAt` in deepkit's registry, which other tests must not see):

    python -c "import interrupter, sys; sys.exit(interrupter.main(sys.argv[1:]))" run ...

The environment variable DEEPKIT_TEST_SIGINT chooses the moment, and without
it nothing is sent, so the same recipe serves the interrupted, the resumed
and the uninterrupted runs:

- ``batch_begin:E:B:N`` sends N signals when batch B of epoch E (from 0)
  begins (epoch 0, batch 0: while the first step is being compiled);
- ``batch_end:E:B:N`` sends them when that batch has ended;
- ``checkpoint:E:N`` sends them from inside the checkpoint write at the end
  of epoch E, after the weights file is opened and before it is complete.
"""

import os
import signal

import keras

from deepkit.export import export

ENV = "DEEPKIT_TEST_SIGINT"


def _moment():
    text = os.environ.get(ENV)
    return text.split(":") if text else None


def _send(times):
    for _ in range(int(times)):
        os.kill(os.getpid(), signal.SIGINT)


@export
class InterruptAt(keras.callbacks.Callback):
    """Send SIGINT to this process at the moment DEEPKIT_TEST_SIGINT names."""

    def __init__(self):
        super().__init__()
        self._epoch = None

    def get_config(self):
        return {}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _at(self, kind, batch):
        moment = _moment()
        if moment and moment[0] == kind and (int(moment[1]), int(moment[2])) == (self._epoch, batch):
            _send(moment[3])

    def on_train_batch_begin(self, batch, logs=None):
        self._at("batch_begin", batch)

    def on_train_batch_end(self, batch, logs=None):
        self._at("batch_end", batch)


def _patch_checkpoint_write():
    from deepkit.callbacks.backup import ExactBackupAndRestore

    original = keras.Model.save_weights

    def save_weights(model, filepath, *args, **kwargs):
        moment = _moment()
        if moment and moment[0] == "checkpoint" and "tmp-epoch-" in str(filepath):
            epoch = int(str(filepath).split("tmp-epoch-")[1][:5]) - 1
            if epoch == int(moment[1]):
                _send(moment[2])  # the handler runs now, mid-write
        return original(model, filepath, *args, **kwargs)

    keras.Model.save_weights = save_weights
    return ExactBackupAndRestore


def main(argv):
    """`deepkit.cli.main(argv)` with `InterruptAt` registered."""
    from deepkit.cli import main as deepkit_main

    _patch_checkpoint_write()
    return deepkit_main(argv)

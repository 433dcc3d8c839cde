"""Helper for the kill-and-resume test: a callback that SIGKILLs its process.

Run in a subprocess, never imported by the test process itself (it registers
`KillAt` in deepkit's registry, which other tests must not see):

    KERAS_BACKEND=jax python -c "import killer, sys; sys.exit(killer.main(sys.argv[1:]))" \\
        run recipe.yaml --backend jax --run-dir RUN

`KillAt(epoch, batch)` kills the process at the end of that batch of that
epoch (both counted from 0) when the environment variable DEEPKIT_TEST_KILL
is set, and does nothing otherwise, so the same recipe serves the killed, the
resumed and the uninterrupted runs.
"""

import os
import signal

import keras

from deepkit.export import export

KILL_ENV = "DEEPKIT_TEST_KILL"


@export
class KillAt(keras.callbacks.Callback):
    """SIGKILL this process after batch `batch` of epoch `epoch` (from 0)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch = int(epoch)
        self.batch = int(batch)
        self._current = None

    def get_config(self):
        return {"epoch": self.epoch, "batch": self.batch}

    def on_epoch_begin(self, epoch, logs=None):
        self._current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if os.environ.get(KILL_ENV) and (self._current, batch) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv):
    """`deepkit.cli.main(argv)` with `KillAt` registered."""
    from deepkit.cli import main as deepkit_main

    return deepkit_main(argv)

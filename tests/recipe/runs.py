"""Shared helpers of the recipe tests (imported as `runs`): `deepkit run` in a
subprocess that a helper module (killer.py, interrupter.py) can kill or
interrupt, and the weights of the run it leaves."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

HERE = Path(__file__).resolve().parent
# The test-only environment variables the helper modules read.
_HELPER_ENV = ("DEEPKIT_TEST_KILL", "DEEPKIT_TEST_SIGINT")


def start_run(helper, recipe, run_dir, env=None):
    """`deepkit run recipe --run-dir run_dir` in a subprocess with `helper`
    (the name of a module beside this file, which registers its callbacks)
    imported first; `env` adds environment variables (the helper's trigger)."""
    backend = keras.backend.backend()
    environment = {k: v for k, v in os.environ.items() if k not in _HELPER_ENV}
    environment.update(env or {}, KERAS_BACKEND=backend)
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import {helper}; "
            f"sys.exit({helper}.main(sys.argv[1:]))")
    return subprocess.Popen(
        [sys.executable, "-c", code, "run", str(recipe), "--backend", backend,
         "--run-dir", str(run_dir)],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_run(process, timeout=300):
    """(exit code, stdout, stderr) of a process from `start_run`."""
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def final_weights(run_dir):
    """The weights of a finished run's model.keras, loaded in safe mode."""
    model = keras.saving.load_model(Path(run_dir) / "model.keras", safe_mode=True)
    return [np.asarray(w) for w in model.get_weights()]

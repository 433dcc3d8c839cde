"""Where a maxout_mnist_pi epoch's time goes in the recipe runner.

Times epochs (4 per variant; the first includes compilation) of the
maxout_mnist_pi model on real MNIST (50,000 training images, batch 100; the
10,000 validation images at batch 100) with the JAX backend: numpy arrays to
`fit`, `deepkit.datasets.epoch_arrays.EpochShuffledArrays`, each of the runner's
callbacks alone (StopOnNaN reads the loss every batch; RichProgressBar;
ExactBackupAndRestore writes a checkpoint every epoch), and
`steps_per_execution=10`. Needs DEEPKIT_DATA.

    DEEPKIT_DATA=/path/to/data python benchmarks/recipe_overhead.py
"""

import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

from deepkit.callbacks import ExactBackupAndRestore, RichProgressBar, StopOnNaN  # noqa: E402
from deepkit.datasets.epoch_arrays import EpochShuffledArrays  # noqa: E402
from deepkit.recipe import build, load, names  # noqa: E402

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes",
                      "maxout_mnist_pi.yaml")


def main():
    recipe = load(RECIPE)
    splits = build.load_splits(recipe)
    train, valid = splits["train"], splits["valid"]

    def timed(label, steps_per_execution, pydataset, callbacks, validate=True, epochs=4):
        keras.utils.set_random_seed(1)
        model = build.build_model(recipe, train)
        model.compile(**names.build_compile_args(recipe),
                      steps_per_execution=steps_per_execution)
        times = []

        class Clock(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.start)

        kwargs = dict(validation_data=valid, validation_batch_size=100) if validate else {}
        callbacks = [*callbacks, Clock()]
        if pydataset:
            data = EpochShuffledArrays(train, 100, 1)
            model.fit(data, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks, **kwargs)
        else:
            model.fit(train[0], train[1], batch_size=100, epochs=epochs, verbose=0,
                      callbacks=callbacks, **kwargs)
        print(f"{label:44s} " + " ".join(f"{t:.2f}" for t in times), flush=True)

    folder = tempfile.mkdtemp()
    print(f"{'variant':44s} seconds per epoch (the first compiles)")
    timed("arrays, no callbacks, no validation", 1, False, [], validate=False)
    timed("arrays, no callbacks", 1, False, [])
    timed("EpochShuffledArrays, no callbacks", 1, True, [])
    timed("EpochShuffledArrays + StopOnNaN", 1, True, [StopOnNaN()])
    timed("EpochShuffledArrays + RichProgressBar", 1, True, [RichProgressBar(batch_size=100)])
    timed("EpochShuffledArrays + ExactBackupAndRestore", 1, True,
          [ExactBackupAndRestore(folder + "/backup", seed=1)])
    timed("EpochShuffledArrays, steps_per_execution 10", 10, True, [])
    timed("arrays, steps_per_execution 10", 10, False, [])


if __name__ == "__main__":
    main()

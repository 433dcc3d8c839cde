"""Helper for tests/training/test_clipping.py: one clipped SGD step on one
device and on two (run in a subprocess, which configures the devices before
the backend starts):

    KERAS_BACKEND=tensorflow python distributed_step.py OUT.npz
    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        python distributed_step.py OUT.npz

Writes the weights after one step for each of: single-device and
two-replica training, with `ClipGradients` and with Keras' own
`global_clipnorm`, plus an unclipped step, and a `ClipGradients(Adam)` step
on a batch with a NaN ("skip": the weights must not move); keys
"<optimizer>_<devices>".
"""

import os
import sys

import numpy as np

BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from deepkit.training import ClipGradients  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 4)).astype("float32")
Y = (RNG.normal(size=(8, 2)) * 5).astype("float32")
KERNEL = RNG.normal(size=(4, 2)).astype("float32")
BIAS = np.zeros(2, "float32")
THRESHOLD = 0.5


def optimizer(kind):
    if kind == "wrapper":
        return ClipGradients(keras.optimizers.SGD(0.1), threshold=THRESHOLD)
    if kind == "keras":
        return keras.optimizers.SGD(0.1, global_clipnorm=THRESHOLD)
    return keras.optimizers.SGD(0.1)


def step(kind):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.set_weights([KERNEL, BIAS])
    if kind == "skip":  # a NaN in the last example (the second replica's half)
        model.compile(ClipGradients(keras.optimizers.Adam(0.1), threshold=THRESHOLD), "mse")
        x = X.copy()
        x[-1, 0] = np.nan
        model.fit(x, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        return [np.asarray(w) for w in model.get_weights()]
    model.compile(optimizer(kind), "mse")
    model.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return [np.asarray(w) for w in model.get_weights()]


def main(out):
    results = {}
    for kind in ("wrapper", "keras", "plain", "skip"):
        if BACKEND == "tensorflow":
            results[f"{kind}_1"] = step(kind)
            strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
            with strategy.scope():
                results[f"{kind}_2"] = step(kind)
        else:
            keras.distribution.set_distribution(None)
            results[f"{kind}_1"] = step(kind)
            devices = keras.distribution.list_devices("cpu")
            assert len(devices) == 2, devices
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            results[f"{kind}_2"] = step(kind)
            keras.distribution.set_distribution(None)
    results["initial"] = [KERNEL, BIAS]
    np.savez(out, **{f"{k}_{i}": w for k, ws in results.items() for i, w in enumerate(ws)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""Helper of test_equivalence.py, run in a subprocess (the devices are set
up before the backend starts), once per model and device count:

    KERAS_BACKEND=tensorflow python equivalence.py DEVICES OUT_FOLDER
    KERAS_BACKEND=jax python equivalence.py DEVICES OUT_FOLDER

Trains each model (maxout, dts_rnn, gated_experts) two epochs of four steps from
seeded weights on one device (DEVICES 1) or on two (MirroredStrategy on
TensorFlow, keras.distribution.DataParallel on JAX, through
`deepkit.distribution.Scale`) with the same global batches, and writes the
initial and final weights, the losses and the replica count to
OUT_FOLDER/<model>.npz.
"""

import json
import os
import sys

import numpy as np

from deepkit.distribution import Scale, split_cpu

BACKEND = os.environ["KERAS_BACKEND"]
split_cpu(2, BACKEND)

import keras  # noqa: E402

from deepkit.layers import DeepTransitionRNN, GatedExperts, Maxout  # noqa: E402

KIND = "mirrored" if BACKEND == "tensorflow" else "data_parallel"
RNG = np.random.default_rng(0)


def maxout():
    x = RNG.normal(size=(64, 12)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    layers = [keras.Input((12,)), Maxout(8, pieces=3, max_norm=1.9365),
              keras.layers.Dense(2, activation="softmax")]
    return layers, "sparse_categorical_crossentropy", x, y


def dts_rnn():
    x = RNG.normal(size=(32, 7, 3)).astype("float32")
    y = RNG.normal(size=(32, 2)).astype("float32")
    layers = [keras.Input((7, 3)),
              DeepTransitionRNN(6, transition_layers=(5,), shortcut=True, seed=3),
              keras.layers.Dense(2)]
    return layers, "mse", x, y


def gated_experts():
    # Capacity for every token and no balance loss: under MirroredStrategy
    # each replica routes its own half of the batch, and a balance loss of
    # per-replica means is not the loss of the global batch's means.
    x = RNG.normal(size=(32, 6)).astype("float32")
    y = RNG.normal(size=(32, 6)).astype("float32")
    layers = [keras.Input((6,)),
              GatedExperts(4, 8, top_k=2, train_capacity_factor=4.0, balance_loss_weight=0.0,
                           seed=4)]
    return layers, "mse", x, y


MODELS = {"maxout": maxout, "dts_rnn": dts_rnn, "gated_experts": gated_experts}


def train(name, scale, out):
    keras.utils.set_random_seed(1)
    with scale.scope():  # layers too: their seed generators are variables
        layers, loss, x, y = MODELS[name]()
        model = keras.Sequential(layers)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.5), loss)
        start = [np.asarray(w) for w in model.get_weights()]
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    arrays = {f"start_{i}": w for i, w in enumerate(start)}
    arrays.update({f"end_{i}": np.asarray(w) for i, w in enumerate(model.get_weights())})
    np.savez(out, loss=np.asarray(history.history["loss"]), replicas=scale.replicas, **arrays)


if __name__ == "__main__":
    devices, folder = int(sys.argv[1]), sys.argv[2]
    # One strategy for the process: MirroredStrategies made one after another
    # in one process mix up their collective operations (TF 2.21).
    scale = Scale(KIND if devices > 1 else None)
    for name in MODELS:
        train(name, scale, os.path.join(folder, f"{name}.npz"))

"""A few training steps on two devices give the weights of one device on the
same global batch: tf.distribute.MirroredStrategy on TensorFlow,
keras.distribution.DataParallel on JAX, for a maxout MLP, a DT(S)-RNN and
GatedExperts (`deepkit.distribution.Scale`); each backend in subprocesses
that split the CPU into two devices before the backend starts."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
MODELS = ("maxout", "dts_rnn", "gated_experts")


def _train(backend, devices, folder):
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([sys.executable, str(HERE / "equivalence.py"), str(devices),
                             str(folder)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_devices_train_as_one_on_the_same_global_batch(backend, tmp_path):
    processes = {d: _train(backend, d, tmp_path / str(d)) for d in (1, 2)}
    for devices, process in processes.items():
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    for name in MODELS:
        one = np.load(tmp_path / "1" / f"{name}.npz")
        two = np.load(tmp_path / "2" / f"{name}.npz")
        assert int(one["replicas"]) == 1 and int(two["replicas"]) == 2, name
        starts = sorted(k for k in one if k.startswith("start_"))
        for key in starts:  # the same seeded weights on both
            np.testing.assert_array_equal(one[key], two[key], err_msg=f"{name} {key}")
        moved = max(float(np.max(np.abs(one[k.replace("start", "end")] - one[k])))
                    for k in starts)
        assert moved > 1e-3, f"{name}: training did not change the weights"
        for key in (k.replace("start", "end") for k in starts):
            # GatedExperts' routing statistics included (averaged over replicas).
            np.testing.assert_allclose(one[key], two[key], atol=1e-6, rtol=1e-5,
                                       err_msg=f"{name} {key}")
        np.testing.assert_allclose(one["loss"], two["loss"], rtol=1e-6, err_msg=name)

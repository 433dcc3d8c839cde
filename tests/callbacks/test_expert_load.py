"""Tests for deepkit.callbacks.ExpertLoad."""

import contextlib
import csv
import io
import os

import keras
import numpy as np
from rich.console import Console

from deepkit.callbacks import ExpertLoad
from deepkit.layers import GatedExperts
from deepkit.testing import TestCase


def routed_model():
    """Every token prefers expert 0; capacity ceil(4 / 2 * 1.0) = 2 per batch of 4."""
    layer = GatedExperts(2, 3, router="switch", train_capacity_factor=1.0, name="moe")
    model = keras.Sequential([keras.Input((2,)), layer, keras.layers.Dense(1)])
    layer.router_kernel.assign(np.array([[0.0, 0.0], [9.0, -9.0]], "float32"))
    model.compile(keras.optimizers.SGD(0.0), "mse", jit_compile=True)
    return model, layer


X = np.stack([np.linspace(-1, 1, 12), np.ones(12)], axis=1).astype("float32")
Y = np.zeros((12, 1), "float32")


class ExpertLoadTest(TestCase):
    def test_logs_csv_and_chart(self):
        model, _ = routed_model()
        path = os.path.join(self.get_temp_dir(), "sub", "load.csv")
        out = io.StringIO()
        callback = ExpertLoad(path, chart=True, console=Console(file=out, width=100))
        history = model.fit(X, Y, batch_size=4, epochs=2, verbose=0, callbacks=[callback])
        logs = history.history
        # Learning rate 0: the router stays put, all tokens choose expert 0,
        # and half of each batch of 4 is dropped.
        self.assertAllClose(logs["moe_load_0"], [1.0, 1.0])
        self.assertAllClose(logs["moe_load_1"], [0.0, 0.0])
        self.assertAllClose(logs["moe_dropped_fraction"], [0.5, 0.5], atol=1e-6)
        self.assertTrue(all(0 <= e < 0.01 for e in logs["moe_router_entropy"]))
        with open(path) as f:
            rows = list(csv.reader(f))
        self.assertEqual(
            rows[0], ["epoch", "layer", "dropped_fraction", "router_entropy", "load_0", "load_1"]
        )
        self.assertEqual([r[:2] for r in rows[1:]], [["0", "moe"], ["1", "moe"]])
        self.assertAllClose(float(rows[2][4]), 1.0)
        text = out.getvalue()
        self.assertIn("moe epoch 2", text)
        self.assertIn("dropped 50.0%", text)
        self.assertIn("█", text)

    def test_epoch_values_are_differences_not_totals(self):
        model, layer = routed_model()
        # Balanced routing for the second epoch: flip the router halfway.
        class Flip(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 1:
                    layer.router_kernel.assign(np.array([[9.0, -9.0], [0.0, 0.0]], "float32"))

        callback = ExpertLoad(chart=False)
        history = model.fit(
            X, Y, batch_size=4, epochs=2, verbose=0, callbacks=[Flip(), callback], shuffle=False
        )
        # Epoch 2: batches hold x0 = [-1, -.82, -.64, -.45], ... , [.45 .. 1]:
        # 6 of 12 tokens choose expert 0 (x0 > 0).
        self.assertAllClose(history.history["moe_load_0"], [1.0, 0.5], atol=1e-6)
        self.assertEqual(len(callback.history), 2)
        self.assertEqual(layer.routing_statistics()["steps"], 6.0)

    def test_chart_goes_to_stderr_by_default(self):
        model, _ = routed_model()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            model.fit(X, Y, batch_size=4, epochs=2, verbose=0, callbacks=[ExpertLoad()])
        self.assertEqual(out.getvalue(), "")
        text = err.getvalue()
        self.assertIn("moe epoch 1: dropped 50.0%", text)
        self.assertIn("moe epoch 2: dropped 50.0%", text)
        self.assertIn("100.0%", text)  # expert 0's load

    def test_model_without_experts_is_left_alone(self):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        history = model.fit(X, Y, epochs=1, verbose=0, callbacks=[ExpertLoad(chart=True)])
        self.assertEqual(set(history.history), {"loss"})

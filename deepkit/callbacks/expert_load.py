"""ExpertLoad: per-epoch routing statistics of every GatedExperts layer."""

import csv
import os

import keras
import numpy as np

from deepkit import _keras_internals
from deepkit.callbacks._config import FromConfig
from deepkit.export import export


def _gated_experts_layers(model):
    from deepkit.layers.gated_experts import GatedExperts

    layers = _keras_internals.flatten_layers(model)
    return [layer for layer in layers if isinstance(layer, GatedExperts)]


@export
class ExpertLoad(FromConfig, keras.callbacks.Callback):
    """Write the expert load, dropped fraction and router entropy of each epoch.

    `GatedExperts` layers sum their routing statistics over training calls in
    non-trainable variables; this callback reads them at the start and the
    end of each epoch (when the JAX backend has written its training state
    back to the variables) and reports the epoch's means. For each layer
    ``name`` it adds to the epoch logs (so `History` and a `CSVLogger` placed
    after it record them):

    - ``{name}_load_{i}``: the fraction of (token, choice) assignments the
      router chose expert ``i`` for, before capacity; ``1 / num_experts`` for
      perfect balance;
    - ``{name}_dropped_fraction``: the fraction of assignments dropped for
      lack of capacity;
    - ``{name}_router_entropy``: the mean entropy of the router's
      distribution, in nats (``log(num_experts)`` at most).

    Args:
        path: optional CSV file; one row per layer and epoch (columns
            ``epoch, layer, dropped_fraction, router_entropy, load_0, ...``),
            appended to.
        chart: whether to draw the load of each expert as a bar chart (with
            rich) at the end of each epoch.
        console: optional `rich.console.Console` to draw the charts on. The
            default writes to stderr, like the progress bars: progress and
            diagnostics during training go to stderr, final results to
            stdout.

    Example:

    ```python
    model.fit(x, y, epochs=5, callbacks=[ExpertLoad("runs/expert_load.csv")])
    ```
    """

    def __init__(self, path=None, chart=True, console=None):
        super().__init__()
        self.path = None if path is None else os.fspath(path)
        self.chart = bool(chart)
        self.console = console
        self.history = []
        self._start = {}

    def get_config(self):
        return {"path": self.path, "chart": self.chart}

    def _layers(self):
        return _gated_experts_layers(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._start = {
            layer.name: layer.routing_statistics() for layer in self._layers()
        }

    def on_epoch_end(self, epoch, logs=None):
        rows = []
        for layer in self._layers():
            end = layer.routing_statistics()
            start = self._start.get(layer.name)
            if start is None:
                continue
            steps = end["steps"] - start["steps"]
            if steps <= 0:
                continue
            load = (end["load"] - start["load"]) / steps
            row = {
                "epoch": epoch,
                "layer": layer.name,
                "dropped_fraction": (end["dropped"] - start["dropped"]) / steps,
                "router_entropy": (end["entropy"] - start["entropy"]) / steps,
                "load": [float(v) for v in load],
            }
            rows.append(row)
            if logs is not None:
                for i, value in enumerate(row["load"]):
                    logs[f"{layer.name}_load_{i}"] = value
                logs[f"{layer.name}_dropped_fraction"] = row["dropped_fraction"]
                logs[f"{layer.name}_router_entropy"] = row["router_entropy"]
        self.history.extend(rows)
        if self.path is not None and rows:
            self._write_csv(rows)
        if self.chart and rows:
            self._draw(rows)

    def _write_csv(self, rows):
        width = max(len(row["load"]) for row in rows)
        header = ["epoch", "layer", "dropped_fraction", "router_entropy"] + [
            f"load_{i}" for i in range(width)
        ]
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(header)
            for row in rows:
                loads = row["load"] + [""] * (width - len(row["load"]))
                writer.writerow(
                    [row["epoch"], row["layer"], row["dropped_fraction"], row["router_entropy"]]
                    + loads
                )

    def _draw(self, rows):
        from rich.console import Console
        from rich.table import Table

        console = self.console or Console(stderr=True)
        for row in rows:
            load = np.asarray(row["load"])
            even = 1.0 / len(load)
            table = Table(
                title=(
                    f"{row['layer']} epoch {row['epoch'] + 1}: "
                    f"dropped {row['dropped_fraction']:.1%}, "
                    f"router entropy {row['router_entropy']:.3f} nats"
                ),
                show_edge=False,
            )
            table.add_column("expert", justify="right")
            table.add_column("load", justify="right")
            table.add_column(f"bar (| = even share {even:.1%})")
            scale = 30.0 / max(float(load.max()), 2 * even)
            for i, value in enumerate(load):
                length = int(round(value * scale))
                mark = int(round(even * scale))
                bar = "█" * length
                bar = bar.ljust(max(mark + 1, length))
                bar = bar[:mark] + ("|" if length <= mark else bar[mark]) + bar[mark + 1 :]
                table.add_row(str(i), f"{value:.1%}", bar)
            console.print(table)

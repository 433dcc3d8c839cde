"""Test errors of trained ConditionalGatedMLP runs under each test-time gate rule.

Usage (from the repository root, with DEEPKIT_DATA set):

    KERAS_BACKEND=jax python benchmarks/gated_mnist_inference.py RUN_DIR [RUN_DIR ...] [--mc 10]

For each run directory (its model.keras), prints the valid and test error in %
with the rules `top_fraction`, `threshold` (0.5), a global threshold that turns
on the model's sparsity target of the training gates, `expectation`, the mean
of single stochastic samples, and the average of `--mc` sampled softmax outputs.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import deepkit  # noqa: E402
from deepkit import datasets  # noqa: E402


def _error(probs, y):
    return 100.0 * float(np.mean(probs.argmax(1) != y))


def _deterministic(model, rule, x, threshold=0.5):
    model.gates.inference, model.gates.threshold = rule, threshold
    model.predict_function = None  # rebuild: the rule is read when tracing
    return model.predict(x, batch_size=1000, verbose=0)


def _sampled(model, x):
    return np.concatenate([np.asarray(model(x[i:i + 1000], training=True))
                           for i in range(0, len(x), 1000)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--mc", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    splits = {"valid": datasets.load("mnist", "valid", flatten=True, validation=10000),
              "test": datasets.load("mnist", "test", flatten=True)}
    x_train, _ = datasets.load("mnist", "train", flatten=True, validation=10000)
    print("| run | split | top fraction | threshold 0.5 | global threshold | expectation "
          f"| 1 sample (mean) | MC-{args.mc} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        model = deepkit.load_model(os.path.join(run, "model.keras"))
        logits = model.gater_output(model.gater_hidden(x_train[:20000]))
        gate_probs = np.asarray(keras.ops.sigmoid(logits))
        global_t = float(np.quantile(gate_probs, 1.0 - model.gates.sparsity_target))
        for split, (x, y) in splits.items():
            row = [_error(_deterministic(model, "top_fraction", x), y),
                   _error(_deterministic(model, "threshold", x), y),
                   _error(_deterministic(model, "threshold", x, global_t), y),
                   _error(_deterministic(model, "expectation", x), y)]
            keras.utils.set_random_seed(args.seed)
            samples = [_sampled(model, x) for _ in range(args.mc)]
            row.append(float(np.mean([_error(s, y) for s in samples])))
            row.append(_error(np.mean(samples, axis=0), y))
            print(f"| {run} | {split} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


if __name__ == "__main__":
    main()

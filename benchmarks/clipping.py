"""Overhead of ClipGradients on a dt_rnn_jsb train step, against Keras' global_clipnorm.

The dt_rnn_jsb model (DT(S)-RNN, 400 sigmoid units, one intermediate layer of
400, shortcut; Dense(88) frames, binary cross-entropy) trained with SGD 0.5,
momentum 0.9 and a gradient-norm threshold of 1, three ways:

- Keras: ``SGD(..., global_clipnorm=1.0)``;
- deepkit: ``ClipGradients(SGD(...), threshold=1.0)`` with ``ClippingLogs``
  (norm and clipped fraction in the logs; non-finite steps skipped);
- no clipping (for scale).

One compiled train step per ``train_on_batch`` (batch 8, 100 frames of 88
notes, random data); the variants timed in turn, round after round, the
first rounds dropped; the median step time and its ratio to Keras'.

    python benchmarks/clipping.py --backend jax
"""

import argparse
import os
import statistics
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="jax", choices=["jax", "tensorflow"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--timesteps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    from deepkit.layers import DeepTransitionRNN, SparseSingular
    from deepkit.metrics import FrameBinaryCrossentropy
    from deepkit.training import ClipGradients, ClippingLogs

    rng = np.random.default_rng(0)
    x = (rng.random((args.batch_size, args.timesteps, 88)) < 0.05).astype("float32")
    y = np.roll(x, -1, axis=1)

    def build(optimizer):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([
            keras.Input((args.timesteps, 88)),
            DeepTransitionRNN(400, transition_layers=[400], shortcut=True, activation="sigmoid",
                              transition_activation="sigmoid", return_sequences=True,
                              kernel_initializer=keras.initializers.RandomNormal(stddev=0.1),
                              recurrent_initializer=SparseSingular(20)),
            keras.layers.Dense(88),
        ])
        model.compile(optimizer, FrameBinaryCrossentropy(from_logits=True))
        return model

    variants = {
        "Keras SGD(global_clipnorm=1)": build(
            keras.optimizers.SGD(0.5, momentum=0.9, global_clipnorm=1.0)),
        "ClipGradients(SGD, threshold=1) + ClippingLogs": build(
            ClipGradients(keras.optimizers.SGD(0.5, momentum=0.9), threshold=1.0)),
        "SGD, no clipping": build(keras.optimizers.SGD(0.5, momentum=0.9)),
    }
    logs = ClippingLogs()
    logs.set_model(variants["ClipGradients(SGD, threshold=1) + ClippingLogs"])
    times = {name: [] for name in variants}
    for round_index in range(args.warmup + args.rounds):
        for name, model in variants.items():
            if model is logs.model:
                logs.on_epoch_begin(round_index)
            start = time.perf_counter()
            model.train_on_batch(x, y)
            elapsed = time.perf_counter() - start
            if model is logs.model:
                epoch_logs = {}
                logs.on_epoch_end(round_index, epoch_logs)
            if round_index >= args.warmup:
                times[name].append(elapsed)
    base = statistics.median(times["Keras SGD(global_clipnorm=1)"])
    print(f"backend {args.backend}, batch {args.batch_size} x {args.timesteps} frames, "
          f"{args.rounds} rounds (median); last logged norm {epoch_logs['grad_norm']:.3g}, "
          f"clipped {epoch_logs['clipped']:.0%}")
    print("| variant | ms / step (median) | vs Keras global_clipnorm | fastest, vs Keras |")
    print("|---|---:|---:|---:|")
    fastest = min(times["Keras SGD(global_clipnorm=1)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {1000 * median:.1f} | {median / base:.3f}x | "
              f"{1000 * min(values):.1f} ms, {min(values) / fastest:.3f}x |")


if __name__ == "__main__":
    main()

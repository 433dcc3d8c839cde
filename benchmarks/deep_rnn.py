"""Throughput of DeepTransitionRNN vs a hand-written keras.ops scan, SimpleRNN, GRU.

Every variant is the same Keras model (Input → recurrent layer → Dense head,
mean squared error, SGD), so the model overhead is identical and the ratios
compare the recurrent layers. One train step (forward + backward + update,
compiled) is timed per call of `train_on_batch`; the variants are timed in
turn, round after round, so that a change in machine load hits all of them;
the first rounds (compilation, warm-up) are dropped; the figure is the median.

The hand-written baseline computes exactly the DT(S) cell's math with
`keras.ops.scan` (input projection for all steps first, then the recurrent
products in the loop), with the same weights.

    python benchmarks/deep_rnn.py --backend jax
    python benchmarks/deep_rnn.py --backend tensorflow
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="jax", choices=["jax", "tensorflow", "torch"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--timesteps", type=int, default=50)
    parser.add_argument("--features", type=int, default=88)
    parser.add_argument("--units", type=int, default=400)
    parser.add_argument(
        "--transition", type=int, default=400, help="width of the one intermediate layer"
    )
    parser.add_argument("--no-shortcut", action="store_true", help="DT instead of DT(S)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument(
        "--jit-compile",
        default="auto",
        choices=["auto", "true", "false"],
        help="Model.compile(jit_compile=...)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    from keras import ops

    from deepkit.layers.deep_transition import DeepTransitionRNN

    shortcut = not args.no_shortcut

    class HandScanDTS(keras.layers.Layer):
        """DT(S) (or DT) transition written directly with keras.ops.scan."""

        def build(self, input_shape):
            d, n, m = input_shape[-1], args.units, args.transition
            self.u = self.add_weight(shape=(d, m), initializer="glorot_uniform")
            self.b1 = self.add_weight(shape=(m,), initializer="zeros")
            self.w1 = self.add_weight(shape=(n, m), initializer="orthogonal")
            self.w2 = self.add_weight(shape=(m, n), initializer="orthogonal")
            self.b2 = self.add_weight(shape=(n,), initializer="zeros")
            if shortcut:
                self.ws = self.add_weight(shape=(n, n), initializer="orthogonal")

        def call(self, x):
            projected = ops.matmul(x, self.u) + self.b1
            projected = ops.transpose(projected, (1, 0, 2))  # time major

            def step(h, p):
                z = ops.sigmoid(p + ops.matmul(h, self.w1))
                a = ops.matmul(z, self.w2) + self.b2
                if shortcut:
                    a = a + ops.matmul(h, self.ws)
                h = ops.sigmoid(a)
                return h, h

            h0 = ops.zeros((ops.shape(x)[0], args.units), dtype=x.dtype)
            _, hs = ops.scan(step, h0, projected)
            return ops.transpose(hs, (1, 0, 2))

    def deep_transition():
        return DeepTransitionRNN(
            args.units,
            transition_layers=[args.transition],
            shortcut=shortcut,
            activation="sigmoid",
            transition_activation="sigmoid",
            return_sequences=True,
        )

    variants = {
        "DeepTransitionRNN": deep_transition,
        "keras.ops.scan (hand-written)": HandScanDTS,
        "SimpleRNN": lambda: keras.layers.SimpleRNN(args.units, return_sequences=True),
        "GRU": lambda: keras.layers.GRU(args.units, return_sequences=True),
    }
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    rng = np.random.default_rng(0)
    x = (rng.random((args.batch_size, args.timesteps, args.features)) < 0.05).astype(
        "float32"
    )
    y = rng.random((args.batch_size, args.timesteps, args.features)).astype("float32")

    models = {}
    for name, make in variants.items():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((args.timesteps, args.features), batch_size=args.batch_size)
        outputs = keras.layers.Dense(args.features)(make()(inputs))
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=jit)
        models[name] = model

    times = {name: [] for name in models}
    for r in range(args.warmup + args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)  # returns floats: waits for the device
            elapsed = time.perf_counter() - start
            if r >= args.warmup:
                times[name].append(elapsed)

    median = {name: statistics.median(t) for name, t in times.items()}
    fastest = {name: min(t) for name, t in times.items()}
    reference = median["keras.ops.scan (hand-written)"]
    cell = "DT(S)" if shortcut else "DT"
    print(
        f"# Deep RNN train step: {cell}, batch {args.batch_size}, {args.timesteps} steps, "
        f"{args.features} features, {args.units} units, transition [{args.transition}], "
        f"sigmoid"
    )
    print(
        f"# {datetime.datetime.now().isoformat(timespec='minutes')}, "
        f"{platform.node()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"jit_compile={args.jit_compile} (resolved: "
        f"{next(iter(models.values())).jit_compile}), median of {args.rounds} rounds "
        f"after {args.warmup} warm-up"
    )
    print(
        "| layer | ms / step (median) | sequences/s | time vs hand-written scan "
        "| fastest step, vs scan |"
    )
    print("|---|---:|---:|---:|---:|")
    fastest_reference = fastest["keras.ops.scan (hand-written)"]
    for name, t in median.items():
        print(
            f"| {name} | {t * 1000:.1f} | {args.batch_size / t:.0f} | {t / reference:.2f}x "
            f"| {fastest[name] * 1000:.1f} ms, {fastest[name] / fastest_reference:.2f}x |"
        )
    ratio = median["DeepTransitionRNN"] / reference
    print(f"# DeepTransitionRNN / hand-written scan = {ratio:.2f}x (target <= 1.15x)")
    print(f"# load average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return ratio


if __name__ == "__main__":
    sys.exit(0 if main() <= 1.15 else 1)

"""Speed of deepkit's Maxout: train step vs hand-written layers, and the
arithmetic rate of a maxout_mnist_pi epoch vs this machine's matmul rate.

(a) Train step. Three models of the same shapes (784 -> 240 units x 5 pieces
-> 240 x 5 -> softmax 10, batch 100, SGD with momentum 0.5, compiled by
`Model.compile`'s default: `jax.jit` on JAX, `tf.function` on TensorFlow):
deepkit's `Maxout`, and a hand-written `Dense(units * pieces)` -> `Reshape` ->
`ops.max`, once with the natural unit-major reshape `(units, pieces)` / max
over the last axis, once piece-major `(pieces, units)` / max over axis -2 (the
layout `Maxout` uses, so that ratio is the layer's own overhead). Each model
runs `--steps` steps per `fit` call; the models take turns, round after
round, so that a change in machine load hits all of them; the first round
(compilation) is dropped; the figure is the median over rounds of the
per-round ratio.

(b) Arithmetic rate. The maxout_mnist_pi model of the paper (dropout 0.2 / 0.5
/ 0.5, max column norm 1.9365 on every layer, uniform +-0.005 weights, SGD
momentum 0.5 with the 1.000004 learning-rate decay, batch 100) trains
`--epochs` timed epochs of 50,000 examples (random, or real MNIST when
DEEPKIT_DATA is set) after one untimed epoch. Its FLOP count is 3 x 2mnk for
each of the three matrix products per batch (forward, and the two backward
products). The reference is the same 9 products (forward shapes and both
backward shapes of each layer) timed alone, one compiled function per product
(`jax.jit` / `tf.function`, the same compilation as the train step; one after
the other, as in a train step), best of 4 bursts of 10, less the harness's own
cost per call (timed on a 1x1 product), measured right before and right after
each timed epoch; the percentage is the median over epochs of (epoch rate /
mean of the two reference rates). `--breakdown` adds variants without dropout,
without max-norm, with `MomentumSchedule` on Keras' SGD (which retraces the
step every epoch while the momentum ramps) and on deepkit's
`VariableMomentumSGD` (no retracing).

    python benchmarks/maxout.py --backend jax
    python benchmarks/maxout.py --backend tensorflow
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

UNITS, PIECES, INPUT, CLASSES, BATCH = 240, 5, 784, 10, 100


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="jax", choices=["jax", "tensorflow"])
    parser.add_argument("--steps", type=int, default=100, help="train steps per timed call, (a)")
    parser.add_argument("--rounds", type=int, default=11, help="timed rounds, (a)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs, (b)")
    parser.add_argument("--examples", type=int, default=50_000, help="examples per epoch, (b)")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="(b) also without dropout, without max-norm, and with MomentumSchedule",
    )
    return parser.parse_args(argv)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    from keras import ops

    from deepkit.callbacks import MomentumSchedule
    from deepkit.layers import Maxout
    from deepkit.training import ExponentialDecayWithFloor, VariableMomentumSGD

    keras.utils.set_random_seed(0)
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)

    # ---------------------------------------------------------------- (a)
    def hand_written(piece_major):
        shape = (PIECES, UNITS) if piece_major else (UNITS, PIECES)
        axis = -2 if piece_major else -1
        return [
            keras.layers.Dense(UNITS * PIECES),
            keras.layers.Reshape(shape),
            keras.layers.Lambda(lambda t: ops.max(t, axis=axis)),
        ]

    def step_model(kind):
        layers = [keras.Input((INPUT,))]
        for _ in range(2):
            if kind == "Maxout":
                layers.append(Maxout(UNITS, PIECES))
            else:
                layers.extend(hand_written(kind == "hand-written piece-major"))
        layers.append(keras.layers.Dense(CLASSES, activation="softmax"))
        model = keras.Sequential(layers)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.5),
            loss="sparse_categorical_crossentropy",
        )
        return model

    kinds = ["Maxout", "hand-written unit-major", "hand-written piece-major"]
    models = {k: step_model(k) for k in kinds}
    x = rng.uniform(size=(args.steps * BATCH, INPUT)).astype("float32")
    y = rng.integers(0, CLASSES, size=args.steps * BATCH).astype("int32")
    times = {k: [] for k in kinds}
    for round_ in range(args.rounds + 1):
        for k in kinds:
            start = time.perf_counter()
            models[k].fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
            if round_:
                times[k].append((time.perf_counter() - start) / args.steps)
    step_ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    ratios = {
        k: statistics.median(a / b for a, b in zip(times["Maxout"], times[k]))
        for k in kinds[1:]
    }

    # ---------------------------------------------------------------- (b)
    def pi_model(dropout=True, max_norm=1.9365, variable_momentum=False):
        init = keras.initializers.RandomUniform(-0.005, 0.005)
        layers = [keras.Input((INPUT,))]
        for rate in (0.2, 0.5):
            if dropout:
                layers.append(keras.layers.Dropout(rate))
            layers.append(
                Maxout(UNITS, PIECES, max_norm=max_norm, kernel_initializer=init)
            )
        if dropout:
            layers.append(keras.layers.Dropout(0.5))
        constraint = keras.constraints.MaxNorm(max_norm, axis=0) if max_norm else None
        layers.append(
            keras.layers.Dense(
                CLASSES, activation="softmax", kernel_initializer=init,
                kernel_constraint=constraint,
            )
        )
        model = keras.Sequential(layers)
        schedule = ExponentialDecayWithFloor(0.1, 1.000004, 1e-6)
        model.compile(
            optimizer=(VariableMomentumSGD if variable_momentum else keras.optimizers.SGD)(
                schedule, momentum=0.5
            ),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    data_source = "random uniform [0, 1)"
    if os.environ.get("DEEPKIT_DATA"):
        from deepkit import datasets

        x_pi, y_pi = datasets.load("mnist", "train", flatten=True)[:2]
        x_pi, y_pi = x_pi[: args.examples], y_pi[: args.examples]
        data_source = f"MNIST from DEEPKIT_DATA ({len(x_pi)} examples)"
    else:
        x_pi = rng.uniform(size=(args.examples, INPUT)).astype("float32")
        y_pi = rng.integers(0, CLASSES, size=args.examples).astype("int32")

    shapes = [(BATCH, INPUT, UNITS * PIECES), (BATCH, UNITS, UNITS * PIECES),
              (BATCH, UNITS, CLASSES)]
    forward_flops = sum(2 * m * k * n for m, k, n in shapes)
    step_flops = 3 * forward_flops
    # The input gradient of the first layer is counted but never computed.
    performed_flops = step_flops - 2 * BATCH * INPUT * UNITS * PIECES
    steps_per_epoch = -(-args.examples // BATCH)

    operands = []
    for m, k, n in shapes:
        a = rng.normal(size=(m, k)).astype("float32")
        w = rng.normal(size=(k, n)).astype("float32")
        g = rng.normal(size=(m, n)).astype("float32")
        operands += [ops.convert_to_tensor(t) for t in (a, w, g)]

    # One compiled function per product, called one after the other: in a
    # single function the 9 independent products run concurrently (XLA's
    # thunk executor, TF's inter-op pool), which oversubscribes 2 cores.
    forward = lambda a, w: ops.matmul(a, w)  # noqa: E731
    kernel_grad = lambda a, g: ops.matmul(ops.transpose(a), g)  # noqa: E731
    input_grad = lambda g, w: ops.matmul(g, ops.transpose(w))  # noqa: E731
    if args.backend == "jax":
        import jax

        compiled = [jax.jit(f) for f in (forward, kernel_grad, input_grad)]

        def call(f, *tensors):
            jax.block_until_ready(f(*tensors))
    else:
        import tensorflow as tf

        compiled = [tf.function(f) for f in (forward, kernel_grad, input_grad)]

        def call(f, *tensors):
            f(*tensors)  # eager TF returns when the result is computed

    def run_products():
        for i in range(0, len(operands), 3):
            a, w, g = operands[i : i + 3]
            call(compiled[0], a, w)
            call(compiled[1], a, g)
            call(compiled[2], g, w)

    def matmul_seconds(calls=40):
        """Seconds for the 9 products of a step, best of 4 bursts."""
        best = float("inf")
        for _ in range(4):
            start = time.perf_counter()
            for _ in range(calls // 4):
                run_products()
            best = min(best, (time.perf_counter() - start) / (calls // 4))
        return best - 3 * len(shapes) * call_overhead

    for _ in range(20):
        run_products()

    # The harness's own cost per product (dispatch, synchronization), timed
    # on a 1x1 product; it is subtracted so that the reference is the rate of
    # the products themselves (the train step runs them inside one call).
    tiny = ops.convert_to_tensor(np.ones((1, 1), "float32"))
    for _ in range(50):
        call(compiled[0], tiny, tiny)
    overheads = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(100):
            call(compiled[0], tiny, tiny)
        overheads.append((time.perf_counter() - start) / 100)
    call_overhead = min(overheads)

    def epoch_seconds(model, epochs, callbacks=(), initial_epoch=0):
        start = time.perf_counter()
        model.fit(
            x_pi, y_pi, batch_size=BATCH, epochs=initial_epoch + epochs,
            initial_epoch=initial_epoch, verbose=0, callbacks=list(callbacks),
        )
        return (time.perf_counter() - start) / epochs

    variants = {"paper model": (dict(), False)}
    if args.breakdown:
        variants["no dropout"] = (dict(dropout=False), False)
        variants["no max-norm"] = (dict(max_norm=None), False)
        variants["paper model + MomentumSchedule (SGD: retrace per epoch)"] = (dict(), True)
        variants["paper model, VariableMomentumSGD + MomentumSchedule"] = (
            dict(variable_momentum=True), True
        )
    epoch_s, matmul_s, fraction = {}, {}, {}
    for name, (kwargs, ramp) in variants.items():
        model = pi_model(**kwargs)
        callbacks = [MomentumSchedule(0.5, 0.7, 250)] if ramp else []
        epoch_seconds(model, 1, callbacks)  # compilation and warm-up
        seconds, references, fractions = [], [], []
        for epoch in range(1, args.epochs + 1):
            # A matmul burst before and after each epoch: a change in machine
            # load hits both sides of the ratio.
            before = matmul_seconds()
            seconds.append(epoch_seconds(model, 1, callbacks, initial_epoch=epoch))
            reference = (before + matmul_seconds()) / 2
            references.append(reference)
            fractions.append(steps_per_epoch * reference / seconds[-1])
        epoch_s[name] = statistics.median(seconds)
        matmul_s[name] = statistics.median(references)
        fraction[name] = statistics.median(fractions)
    load_after = os.getloadavg()

    # ---------------------------------------------------------------- report
    if args.backend == "jax":
        versions = f"keras {keras.__version__}, jax {jax.__version__}"
    else:
        versions = f"keras {keras.__version__}, tensorflow {tf.__version__}"
    print(f"# Maxout benchmark, backend {args.backend}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {platform.platform()}")
    print(f"versions: {versions}, python {platform.python_version()}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    print(f"command: python {' '.join(sys.argv)}")
    print()
    print(f"(a) train step, batch {BATCH}, 784 -> {UNITS}x{PIECES} -> {UNITS}x{PIECES} -> "
          f"{CLASSES}, median of {args.rounds} rounds of {args.steps} steps")
    print()
    print("| model | ms / step | Maxout / this |")
    print("|---|---|---|")
    for k in kinds:
        ratio = "1.00" if k == "Maxout" else f"{ratios[k]:.3f}"
        print(f"| {k} | {step_ms[k]:.2f} | {ratio} |")
    print()
    print(f"(b) maxout_mnist_pi epoch, {args.examples} examples ({data_source}), "
          f"{steps_per_epoch} steps of {BATCH}; median of {args.epochs} epochs after 1 "
          "warm-up epoch, each between two matmul bursts")
    print(f"counted FLOPs per step: {step_flops / 1e6:.1f} M (3 x forward); "
          f"performed: {performed_flops / 1e6:.1f} M (no input gradient for layer 1)")
    print(f"reference harness overhead subtracted: {1e6 * call_overhead:.0f} us per product")
    print()
    print("| variant | s / epoch | GFLOP/s (counted) | matmul reference GFLOP/s "
          "| % of matmul rate (counted) | % (performed FLOPs) |")
    print("|---|---|---|---|---|---|")
    for name in epoch_s:
        rate = step_flops * steps_per_epoch / epoch_s[name]
        reference = step_flops / matmul_s[name]
        performed = fraction[name] * performed_flops / step_flops
        print(f"| {name} | {epoch_s[name]:.2f} | {rate / 1e9:.1f} | {reference / 1e9:.1f} "
              f"| {100 * fraction[name]:.0f}% | {100 * performed:.0f}% |")

if __name__ == "__main__":
    main()

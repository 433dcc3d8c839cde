"""Speed and memory of deepkit's Parzen-window estimator vs this machine's matmul rate.

The GSN evaluation scores 10,000 chain samples on the 10,000 MNIST test
images (784 pixels): `parzen_log_likelihood(samples, data, sigma=0.2)` on
random float32 data in [0, 1] of those shapes. Its arithmetic is one
`[10000, 784] x [784, 10000]` product (2 n m d FLOPs) done block by block;
the reference is that product alone, one `jax.jit` / `tf.function` of
`a @ b` on the whole matrices, timed in the same run. The estimator and the
product take turns, round after round (so that a change in machine load hits
both); the first round (compilation) is dropped and each figure is the best
of the remaining rounds. The share is (matmul time / estimator time): the
estimator's rate as a fraction of the bare product's. Target: >= 50%.

Peak memory is the growth of the process's resident-set high-water mark
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) over the first full estimator
call, after a warm-up call on one block (which starts the runtime), and
before the reference product allocates its 400 MB result; it includes the
backend's copies of the inputs (31 MB each at 10,000 x 784 float32) and
the compilation of the full-length loop. With several chunk sizes only the
first one's growth is clean: the high-water mark never goes down. For
scale, the unchunked `[m, n]` float32 kernel matrix is 381 MiB.

    KERAS_BACKEND=jax python benchmarks/parzen.py
    KERAS_BACKEND=jax python benchmarks/parzen.py --chunk-sizes 500,1000,2000
"""

import argparse
import datetime
import os
import platform
import resource
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"),
                        choices=["jax", "tensorflow"])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--data", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=784)
    parser.add_argument("--sigma", type=float, default=0.2)
    parser.add_argument("--chunk-sizes", default="1000",
                        help="comma-separated chunk sizes (data rows = samples per block)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the first")
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


def max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    from keras import ops

    from deepkit.metrics import parzen_log_likelihood

    chunk_sizes = [int(c) for c in args.chunk_sizes.split(",")]
    n, m, d = args.samples, args.data, args.features
    rng = np.random.default_rng(0)
    samples = rng.uniform(size=(n, d)).astype("float32")
    data = rng.uniform(size=(m, d)).astype("float32")
    flops = 2.0 * n * m * d
    load_before = os.getloadavg()

    if args.backend == "jax":
        import jax

        product = jax.jit(lambda a, b: a @ b)

        def matmul():
            product(a_t, b_t).block_until_ready()
    else:
        import tensorflow as tf

        product = tf.function(lambda a, b: tf.matmul(a, b))

        def matmul():
            product(a_t, b_t).numpy()[0, 0]  # wait for the result, copy one number

    def estimator(chunk):
        return parzen_log_likelihood(samples, data, args.sigma, chunk_size=chunk)

    # A warm-up call on one block of each (starts the runtime, compiles the
    # block's loop body); then the first full calls, memory measured before
    # the reference product's result exists.
    for chunk in chunk_sizes:
        parzen_log_likelihood(samples[:chunk], data[:chunk], args.sigma, chunk_size=chunk)
    memory, first_s, estimates = {}, {}, {}
    for chunk in chunk_sizes:
        before = max_rss_mb()
        start = time.perf_counter()
        estimates[chunk] = estimator(chunk)
        first_s[chunk] = time.perf_counter() - start
        memory[chunk] = (max_rss_mb() - before, max_rss_mb())

    a_t = ops.convert_to_tensor(data)
    b_t = ops.transpose(ops.convert_to_tensor(samples))
    matmul()  # compile
    times = {chunk: [] for chunk in chunk_sizes}
    times["matmul"] = []
    for _ in range(args.rounds):
        for chunk in chunk_sizes:
            start = time.perf_counter()
            estimator(chunk)
            times[chunk].append(time.perf_counter() - start)
        start = time.perf_counter()
        matmul()
        times["matmul"].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    load_after = os.getloadavg()

    versions = f"keras {keras.__version__}"
    if args.backend == "jax":
        versions += f", jax {jax.__version__}"
    else:
        versions += f", tensorflow {tf.__version__}"
    print(f"# Parzen estimator benchmark, backend {args.backend}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {platform.platform()}")
    print(f"versions: {versions}, python {platform.python_version()}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    print(f"command: KERAS_BACKEND={args.backend} python {' '.join(sys.argv)}")
    print()
    print(f"{n} samples x {m} data rows x {d} features, float32 uniform [0, 1], "
          f"sigma {args.sigma}; {flops / 1e9:.1f} GFLOP in the product; best of "
          f"{args.rounds} rounds after the first")
    print(f"unchunked kernel matrix would be {4 * n * m / 2**20:.0f} MiB; memory is the "
          "ru_maxrss growth over the first full call (after a one-block warm-up; "
          f"inputs {4 * (n + m) * d / 2**20:.0f} MiB)")
    print()
    print("| what | chunk | s (best) | first call s | GFLOP/s | share of matmul rate "
          "| peak memory growth MiB (process peak) | estimate |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    print(f"| matmul `[{m}, {d}] x [{d}, {n}]` | - | {best['matmul']:.3f} | - "
          f"| {flops / best['matmul'] / 1e9:.1f} | 100% | - | - |")
    for chunk in chunk_sizes:
        grown, peak = memory[chunk]
        print(f"| parzen_log_likelihood | {chunk} | {best[chunk]:.3f} | {first_s[chunk]:.2f} "
              f"| {flops / best[chunk] / 1e9:.1f} | {100 * best['matmul'] / best[chunk]:.0f}% "
              f"| {grown:.0f} ({peak:.0f}) | {estimates[chunk]} |")


if __name__ == "__main__":
    main()

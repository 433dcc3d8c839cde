"""GatedExperts forward + backward time against the number of experts.

Measures, side by side in one run, the time of one forward and backward pass
(gradients for every weight; no optimizer update) of

- ``GatedExperts`` (top-k routing, fixed capacity, sort-based dispatch), and
- a dense-masked mixture with the same weights: every expert runs on every
  token, then the outputs are weighted by the same sparse top-k gates (zero
  for experts not chosen), as in most simple MoE code,

for several numbers of experts at a fixed number of tokens and expert size.
Both are compiled (XLA on JAX; on TF ``tf.function``, with XLA when
``--tf-xla``). Warm-up calls are excluded; the figure is the median over
repeats, all configurations measured in turn within each round so that a
change of machine load hits them alike.

Targets (TARGETS.md): 64 experts <= 1.2x the time of 4 experts; >= 20x
faster than dense-masked at 64 experts.

Usage:
    python benchmarks/gated_experts.py --backend jax
    python benchmarks/gated_experts.py --backend tensorflow
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("jax", "tensorflow"), default="jax")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--experts", default="4,8,16,32,64")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds")
    parser.add_argument("--dense-repeats", type=int, default=3, help="timed rounds, dense-masked")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-dense", action="store_true", help="skip the dense-masked baseline")
    parser.add_argument("--tf-xla", action="store_true", help="TF: jit_compile=True")
    return parser.parse_args()


ARGS = parse_args()
os.environ["KERAS_BACKEND"] = ARGS.backend

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from deepkit.layers import GatedExperts, routing  # noqa: E402


def dense_masked(layer, tokens):
    """Every expert on every token, weighted by the layer's sparse gates."""
    logits = ops.matmul(ops.cast(tokens, "float32"), layer.router_kernel)
    expert_index, gates, _ = routing.top_k_route(logits, layer.top_k)
    dense_gates = ops.sum(
        ops.one_hot(expert_index, layer.num_experts) * ops.expand_dims(gates, -1), axis=1
    )  # [T, E], zero for experts not chosen
    hidden = ops.einsum("td,edh->eth", tokens, layer.expert_kernel_1)
    hidden = ops.relu(hidden + layer.expert_bias_1[:, None, :])
    outputs = ops.einsum("eth,eho->eto", hidden, layer.expert_kernel_2)
    outputs = outputs + layer.expert_bias_2[:, None, :]
    return ops.einsum("eto,te->to", outputs, dense_gates)


def make_step(layer, forward, tokens, cotangent):
    """A compiled function computing d sum(forward(x) * cotangent) / d weights."""
    variables = layer.trainable_variables
    if ARGS.backend == "jax":
        import jax

        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss(trainable):
            with keras.StatelessScope(
                state_mapping=list(zip(variables, trainable))
                + list(zip(layer.non_trainable_variables, non_trainable))
            ):
                y = forward(tokens)
            return ops.sum(y * cotangent)

        grad = jax.jit(jax.grad(loss))
        values = [v.value for v in variables]

        def step():
            out = grad(values)
            jax.block_until_ready(out)

        return step

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # one tf.function per configuration

    @tf.function(jit_compile=ARGS.tf_xla)
    def grad():
        with tf.GradientTape() as tape:
            y = forward(tokens)
            value = tf.reduce_sum(y * cotangent)
        return tape.gradient(value, [v.value for v in variables])

    def step():
        # TF runs the function to completion before returning on CPU; no copy
        # of the gradients to numpy (64 experts' kernel gradients are 67 MB).
        grad()

    return step


def sparse_forward(layer):
    def forward(tokens):
        # training=True: train capacity factor; no balance loss, no noise.
        return layer(tokens, training=True)

    return forward


def main():
    experts = [int(e) for e in ARGS.experts.split(",")]
    rng = np.random.default_rng(0)
    tokens = ops.convert_to_tensor(
        rng.normal(size=(ARGS.tokens, ARGS.dim)).astype("float32")
    )
    cotangent = ops.convert_to_tensor(
        rng.normal(size=(ARGS.tokens, ARGS.dim)).astype("float32")
    )
    steps = {}
    for count in experts:
        layer = GatedExperts(
            count,
            ARGS.hidden,
            top_k=ARGS.top_k,
            train_capacity_factor=ARGS.capacity_factor,
            balance_loss=None,
        )
        layer.build((None, ARGS.dim))
        steps[("sparse", count)] = make_step(layer, sparse_forward(layer), tokens, cotangent)
        if not ARGS.no_dense:
            steps[("dense", count)] = make_step(
                layer, lambda x, layer=layer: dense_masked(layer, x), tokens, cotangent
            )
    for name, step in steps.items():
        for _ in range(ARGS.warmup):
            step()
    times = {name: [] for name in steps}
    cpu_times = {name: [] for name in steps}
    for round_ in range(max(ARGS.repeats, ARGS.dense_repeats)):
        for name, step in steps.items():
            limit = ARGS.repeats if name[0] == "sparse" else ARGS.dense_repeats
            if round_ >= limit:
                continue
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    median = {name: statistics.median(t) for name, t in times.items()}
    cpu = {name: statistics.median(t) for name, t in cpu_times.items()}

    capacity = {
        e: routing.expert_capacity(ARGS.tokens, e, ARGS.capacity_factor, ARGS.top_k)
        for e in experts
    }
    print(f"# GatedExperts forward + backward, {datetime.date.today().isoformat()}")
    print(
        f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''} "
        f"{os.cpu_count()} CPUs; {platform.platform()}"
    )
    compiled = "XLA (jax.jit)" if ARGS.backend == "jax" else (
        "tf.function(jit_compile=True)" if ARGS.tf_xla else "tf.function (no XLA)"
    )
    print(f"backend: {ARGS.backend}, keras {keras.__version__}, compiled with {compiled}")
    print(
        f"tokens {ARGS.tokens}, d {ARGS.dim}, hidden {ARGS.hidden}, top-{ARGS.top_k}, "
        f"capacity factor {ARGS.capacity_factor}; median of {ARGS.repeats} "
        f"(dense-masked: {ARGS.dense_repeats}) after {ARGS.warmup} warm-up calls"
    )
    print(f"command: python {' '.join(sys.argv)}")
    print()
    print(
        "wall: median wall-clock time; cpu: median CPU time of this process (all "
        "threads), less sensitive to other processes on a shared machine"
    )
    print()
    print(
        f"| experts | capacity | GatedExperts wall ms | vs {experts[0]} experts "
        "| dense-masked wall ms | dense / GatedExperts | GatedExperts cpu ms "
        f"| vs {experts[0]} experts | dense / GatedExperts (cpu) |"
    )
    print("|" + "---|" * 9)
    base, cpu_base = median[("sparse", experts[0])], cpu[("sparse", experts[0])]
    for count in experts:
        sparse, sparse_cpu = median[("sparse", count)], cpu[("sparse", count)]
        dense, dense_cpu = median.get(("dense", count)), cpu.get(("dense", count))
        dense_text = "-" if dense is None else f"{dense * 1e3:.1f}"
        ratio_text = "-" if dense is None else f"{dense / sparse:.1f}x"
        cpu_ratio_text = "-" if dense is None else f"{dense_cpu / sparse_cpu:.1f}x"
        print(
            f"| {count} | {capacity[count]} | {sparse * 1e3:.1f} | {sparse / base:.2f}x "
            f"| {dense_text} | {ratio_text} | {sparse_cpu * 1e3:.1f} "
            f"| {sparse_cpu / cpu_base:.2f}x | {cpu_ratio_text} |"
        )


if __name__ == "__main__":
    main()

"""The table of benchmarks/gpu.sh: this run's wall times and throughput beside
the 2-core CPU's.

Reads what gpu.sh left in its results folder OUT:

- ``OUT/runs/<recipe>/results.json`` (and, for dot_rnn_jsb, the results of
  its init_from source dt_rnn_jsb under ``init_from/dt_rnn_jsb/``),
- ``OUT/logs/<recipe>.log`` (the progress lines ``epoch N/M: ... (4.9s,
  10,204 ex/s)``, for the training throughput of single epochs),
- ``OUT/gated_experts.md`` (the output of benchmarks/gated_experts.py),
- ``OUT/device.txt`` and ``OUT/steps.tsv`` (written by gpu.sh),

and the CPU's numbers from the repository: ``results/<recipe>/results.json``
(the runs of README.md's results table) and, for GatedExperts, the JAX rerun
of benchmarks/RESULTS.md ("Gated experts", 2026-11-27, quiet CPU), copied
below. Writes ``OUT/table.md`` and ``OUT/table.json`` and prints the short
table (``--quiet``: writes only).

Throughput of a recipe: training examples per second of training time,
sum over stages of (epochs x training examples) / sum of the stages' seconds
(``wall_time_s`` is that sum of seconds: training and the per-epoch
validation, without start-up and the final evaluation; the first epoch
includes compilation). It is counted the same way on both machines, so it
compares runs of different lengths (a GPU run under ``--time-limit`` stops
after fewer epochs than the CPU's). MNIST counts digits, JSB Chorales whole
pieces (sequences). The detailed table also gives the median of the
progress lines' ex/s (training batches only, epochs 2 onwards).

Usage: python benchmarks/gpu_table.py OUT [--quiet]
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECIPES = ("maxout_mnist_pi", "dot_rnn_jsb", "moe_mnist")

# benchmarks/RESULTS.md, "Gated experts": the rerun of 2026-11-27 on a quiet
# CPU (load about 2), `python benchmarks/gated_experts.py --backend jax
# --repeats 9 --dense-repeats 3`, 2-core AMD EPYC VM, JAX 0.10.2. Forward +
# backward wall ms at these sizes.
GATED_CPU = {
    "sizes": {"tokens": 4096, "dim": 256, "hidden": 512, "top_k": 2, "capacity_factor": 1.25},
    "sparse_ms": {4: 172.3, 64: 161.1},
    "dense_ms": {64: 3722.2},
    "source": "benchmarks/RESULTS.md, Gated experts, JAX rerun 2026-11-27 (2-core CPU)",
}


# -- numbers of training examples ---------------------------------------------
_COUNTS = {}


def _split_size(data, split):
    """Number of examples in `split` of the recipe's `data:` block."""
    from deepkit import datasets

    data = dict(data)
    name = data.pop("dataset")
    batch_size = data.pop("batch_size", None)
    key = (name, split, json.dumps(data, sort_keys=True))
    if key not in _COUNTS:
        if "batch_size" in datasets.get(name).options and batch_size is not None:
            data["batch_size"] = batch_size
        arrays = datasets.load(name, split, **data)
        first = None if arrays is None else arrays[0]
        if isinstance(first, dict):
            first = next(iter(first.values()))
        _COUNTS[key] = 0 if first is None else len(first)
    return _COUNTS[key]


def stage_sizes(recipe, n_stages):
    """Training examples per epoch of each stage (None where unknown)."""
    try:
        train = _split_size(recipe["data"], "train")
        sizes = [train]
        for spec in (recipe.get("stages") or [])[: n_stages - 1]:
            merged = isinstance(spec, dict) and spec.get("merge_validation")
            sizes.append(train + _split_size(recipe["data"], "valid") if merged else train)
        return sizes + [None] * (n_stages - len(sizes))
    except Exception as e:  # the table still shows the wall times
        print(f"gpu_table: cannot count the training examples ({type(e).__name__}: {e})",
              file=sys.stderr)
        return [None] * n_stages


def summarize(results, recipe):
    """{wall_s, epochs, s_per_epoch, ex_per_s} of one run's results."""
    if results is None:
        return None
    stages = results.get("stages") or [
        {"epochs": results.get("epochs"), "seconds": results.get("wall_time_s")}]
    wall = results.get("wall_time_s")
    epochs = results.get("epochs")
    out = {"wall_s": wall, "epochs": epochs, "s_per_epoch": None, "ex_per_s": None,
           "status": results.get("status"), "smoke": results.get("smoke")}
    if wall and epochs:
        out["s_per_epoch"] = wall / epochs
    sizes = stage_sizes(recipe, len(stages)) if recipe else [None] * len(stages)
    if stages and all(s is not None for s in sizes):
        examples = sum(s["epochs"] * n for s, n in zip(stages, sizes))
        seconds = sum(s["seconds"] for s in stages)
        if seconds:
            out["ex_per_s"] = examples / seconds
    return out


def read_json(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def read_yaml(path):
    path = Path(path)
    return yaml.safe_load(path.read_text()) if path.exists() else None


# -- the progress lines of a log ----------------------------------------------
EPOCH_LINE = re.compile(r"^epoch (\d+)/\S+: .*\(([\d.]+)s, ([\d,.]+) ex/s\)\s*$")


def log_segments(path):
    """The progress lines of a run's log, split at init_from's hand-over:
    [(epoch, seconds, ex/s), ...] per segment (source recipe, then this one)."""
    path = Path(path)
    if not path.exists():
        return []
    segments, current = [], []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("initialized ") and " from " in line:
            segments.append(current)
            current = []
            continue
        match = EPOCH_LINE.match(line.strip())
        if match:
            current.append((int(match[1]), float(match[2]),
                            float(match[3].replace(",", ""))))
    segments.append(current)
    return segments


def median_rate(lines):
    """Median ex/s of epochs 2 onwards (all epochs when there is only one)."""
    later = [rate for epoch, _, rate in lines if epoch > 1] or [rate for _, _, rate in lines]
    return statistics.median(later) if later else None


# -- GatedExperts ---------------------------------------------------------------
def gated_experts(path):
    """{sizes, sparse_ms: {E: ms}, dense_ms: {E: ms}} from the benchmark's output."""
    path = Path(path)
    if not path.exists():
        return None
    text = path.read_text(errors="replace")
    sizes = {}
    match = re.search(r"tokens (\d+), d (\d+), hidden (\d+), top-(\d+), capacity factor ([\d.]+)",
                      text)
    if match:
        sizes = {"tokens": int(match[1]), "dim": int(match[2]), "hidden": int(match[3]),
                 "top_k": int(match[4]), "capacity_factor": float(match[5])}
    sparse, dense = {}, {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0].isdigit():
            experts = int(cells[0])
            sparse[experts] = float(cells[2])
            if cells[4] not in ("-", ""):
                dense[experts] = float(cells[4])
    if not sparse:
        return None
    return {"sizes": sizes, "sparse_ms": sparse, "dense_ms": dense}


# -- formatting -------------------------------------------------------------------
def fmt(value, spec, suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def wall_text(summary):
    if summary is None:
        return "-"
    return f"{fmt(summary['wall_s'], '.1f', ' s')} ({summary['epochs']} ep)"


def ratio(new, old):
    return f"{new / old:.3g}x" if new and old else "-"


def rate_text(value, unit):
    """'16,374 ex/s'; one decimal below 100 (smoke runs)."""
    if value is None:
        return "-"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quiet", action="store_true", help="write the files, print nothing")
    args = parser.parse_args()
    out = args.out
    device = (out / "device.txt").read_text().strip() if (out / "device.txt").exists() else "?"
    dry = (out / "DRY_RUN").exists()
    steps = {}
    if (out / "steps.tsv").exists():
        for line in (out / "steps.tsv").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                steps[parts[0]] = {"rc": int(parts[1]), "process_s": float(parts[2])}

    rows = []  # (step, cpu summary, this summary, detail dict)
    for name in RECIPES:
        run_dir = out / "runs" / name
        cpu_results = read_json(REPO / "results" / name / "results.json")
        cpu_recipe = read_yaml(REPO / "results" / name / "recipe.yaml")
        this_results = read_json(run_dir / "results.json")
        this_recipe = read_yaml(run_dir / "recipe.yaml")
        segments = log_segments(out / "logs" / f"{name}.log")
        if name == "dot_rnn_jsb":
            # init_from: dt_rnn_jsb trains first, inside this run's directory.
            source_dir = run_dir / "init_from" / "dt_rnn_jsb"
            cpu_source = (cpu_results or {}).get("init_from")
            cpu_source = cpu_source and {"status": "finished",
                                         "wall_time_s": cpu_source.get("wall_time_s"),
                                         "epochs": cpu_source.get("epochs"),
                                         "stages": [{"epochs": cpu_source.get("epochs"),
                                                     "seconds": cpu_source.get("wall_time_s")}]}
            source_recipe = read_yaml(source_dir / "recipe.yaml")
            rows.append(("dt_rnn_jsb (init_from of dot_rnn_jsb)",
                         summarize(cpu_source, read_yaml(REPO / "results" / "dt_rnn_jsb"
                                                         / "recipe.yaml") or cpu_recipe),
                         summarize(read_json(source_dir / "results.json"), source_recipe),
                         {"median_ex_per_s": median_rate(segments[0]) if len(segments) > 1
                          else None}))
        rows.append((name, summarize(cpu_results, cpu_recipe),
                     summarize(this_results, this_recipe),
                     {"median_ex_per_s": median_rate(segments[-1]) if segments else None,
                      **steps.get(name, {})}))

    gated = gated_experts(out / "gated_experts.md")
    gated_rows = []  # (label, cpu ms, this ms, tokens)
    if gated is not None:
        comparable = all(gated["sizes"].get(k) == v for k, v in GATED_CPU["sizes"].items())
        tokens = gated["sizes"].get("tokens")
        largest = max(gated["sparse_ms"])
        for experts in sorted({min(gated["sparse_ms"]), largest}):
            cpu_ms = GATED_CPU["sparse_ms"].get(experts) if comparable else None
            gated_rows.append((f"GatedExperts fwd+bwd, {experts} experts", cpu_ms,
                               gated["sparse_ms"][experts], tokens))
        if largest in gated["dense_ms"]:
            cpu_ms = GATED_CPU["dense_ms"].get(largest) if comparable else None
            gated_rows.append((f"dense-masked fwd+bwd, {largest} experts", cpu_ms,
                               gated["dense_ms"][largest], tokens))

    this_name = "this run" + (" (dry run)" if dry else "")
    header = (f"| step | CPU wall | {this_name} wall | CPU throughput "
              f"| {this_name} throughput | throughput vs CPU |")
    short = [header, "|---|---:|---:|---:|---:|---:|"]
    for step, cpu, this, _ in rows:
        short.append(
            f"| {step} | {wall_text(cpu)} | {wall_text(this)} "
            f"| {rate_text(cpu and cpu['ex_per_s'], 'ex/s')} "
            f"| {rate_text(this and this['ex_per_s'], 'ex/s')} "
            f"| {ratio(this and this['ex_per_s'], cpu and cpu['ex_per_s'])} |")
    for label, cpu_ms, this_ms, tokens in gated_rows:
        def rate(ms):
            return tokens / (ms / 1e3) if ms and tokens else None
        short.append(
            f"| {label} | {fmt(cpu_ms, '.1f', ' ms')} | {fmt(this_ms, '.1f', ' ms')} "
            f"| {rate_text(rate(cpu_ms), 'tok/s')} | {rate_text(rate(this_ms), 'tok/s')} "
            f"| {ratio(rate(this_ms), rate(cpu_ms))} |")

    detail = ["| step | status | epochs | s / epoch | ex/s (run) | train ex/s, median epoch "
              "| process s | rc |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for step, cpu, this, extra in rows:
        for who, s, e in (("CPU", cpu, {}), (this_name, this, extra)):
            if s is None and who == "CPU":
                continue
            s = s or {}
            status = (s.get("status") or "missing") + (" (smoke)" if s.get("smoke") else "")
            detail.append(
                f"| {step}, {who} | {status} | {s.get('epochs', '-')} "
                f"| {fmt(s.get('s_per_epoch'), '.2f')} | {rate_text(s.get('ex_per_s'), '')} "
                f"| {rate_text(e.get('median_ex_per_s'), '')} "
                f"| {fmt(e.get('process_s'), '.1f')} | {e.get('rc', '-')} |")

    notes = [
        "Wall: `wall_time_s` of results.json (training and per-epoch validation, all "
        "stages), with the number of epochs. Throughput: training examples (MNIST "
        "digits, JSB pieces) per second of that time, or tokens per second of one "
        "GatedExperts forward + backward. Runs of different lengths compare by "
        "throughput, not wall time.",
        "CPU: 2-core AMD EPYC VM, JAX backend: results/<recipe>/results.json and "
        f"{GATED_CPU['source']}.",
    ]
    if dry:
        notes.append("DRY RUN: smoke settings and the benchmark's smallest sizes on this "
                     "machine's CPU; the ratios mean nothing, the run only tests the script.")
    if gated is not None and not all(gated["sizes"].get(k) == v
                                     for k, v in GATED_CPU["sizes"].items()):
        notes.append(f"GatedExperts sizes here {gated['sizes']} differ from the CPU's "
                     f"{GATED_CPU['sizes']}: no CPU figure.")
    failed = [name for name, s in steps.items() if s["rc"] != 0]
    if failed:
        notes.append(f"FAILED steps (see logs/): {', '.join(failed)}")

    text = "\n".join(
        ["# GPU run of benchmarks/gpu.sh", "", "```", device, "```", "", *short, "",
         *[f"- {n}" for n in notes], "", "## Details", "", *detail, ""]
        + (["## GatedExperts (benchmarks/gated_experts.py)", "",
            (out / "gated_experts.md").read_text().strip(), ""]
           if gated is not None else []))
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(json.dumps(
        {"device": device, "dry_run": dry, "steps": steps,
         "recipes": [{"step": s, "cpu": c, "this": t, **e} for s, c, t, e in rows],
         "gated_experts": {"this": gated, "cpu": GATED_CPU}},
        indent=2, default=str))
    if not args.quiet:
        print("\n".join(short))
        for n in notes:
            print(f"- {n}")


if __name__ == "__main__":
    main()

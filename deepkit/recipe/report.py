"""Reports: this run's numbers beside the paper's, as a rich table and Markdown."""

import json
from pathlib import Path

from rich.table import Table

RESULTS = "results.json"
# Keys of a `reference:` block that are not the paper's numbers.
REFERENCE_META = ("source", "notes", "unverified", "per_dataset")
# Data options that change what is measured (the examples and the split),
# unlike the batch size or a sequence length, which change how it is trained.
SPLIT_OPTIONS = ("limit", "validation")


def paper_numbers(reference):
    """The metric -> number entries of a reference block."""
    return {k: v for k, v in (reference or {}).items() if k not in REFERENCE_META}


def comparable_reference(recipe):
    """(reference, note): the paper's numbers this run can be compared with.

    A smoke run is compared with nothing. When an override changed the data
    set, the recipe's `reference.per_dataset` entry for the new data set is
    used (the paper's number on that data), or nothing; when it changed the
    split (`data.limit`, `data.validation`), nothing. `note` says why the
    comparison was dropped or changed, else None.
    """
    reference = dict(recipe.reference or {})
    if recipe.smoke_run:
        return {}, "smoke run (the recipe's smoke: block): a seconds-long check, not a result"
    file_data = recipe.file_data if recipe.file_data is not None else {}
    dataset = recipe.data.dataset
    if file_data.get("dataset", dataset) != dataset:
        numbers = (reference.get("per_dataset") or {}).get(dataset)
        if not numbers:
            return {}, (f"the paper's numbers are for {file_data['dataset']}; this run "
                        f"trains on {dataset}, for which the recipe gives none")
        out = {k: reference[k] for k in ("source",) if k in reference}
        out.update(numbers)
        return out, f"the paper's numbers for {dataset} (reference.per_dataset)"
    for key in SPLIT_OPTIONS:
        if file_data.get(key) != recipe.data.options.get(key):
            return {}, (f"data.{key} is {recipe.data.options.get(key)!r} here, "
                        f"{file_data.get(key)!r} in the recipe the paper's numbers belong "
                        "to: not comparable")
    reference.pop("per_dataset", None)
    return reference, None


def derived_metrics(metrics):
    """`metrics` plus an error rate, 1 − accuracy, for each accuracy.

    ``<name>_accuracy`` gives ``<name>_error`` (``test_label_accuracy``:
    ``test_label_error``, one per output of a model with named outputs), and
    a split with exactly one accuracy also gets ``<split>_error``
    (``test_sparse_categorical_accuracy``: ``test_error``).
    """
    out = dict(metrics)
    by_split = {}
    for key, value in metrics.items():
        if key.endswith("accuracy") and "_" in key:
            by_split.setdefault(key.split("_", 1)[0], []).append(value)
            if key.endswith("_accuracy"):
                out.setdefault(key[: -len("accuracy")] + "error", 1.0 - float(value))
    for split, values in by_split.items():
        if len(values) == 1:
            out.setdefault(f"{split}_error", 1.0 - float(values[0]))
    return out


def format_value(key, value):
    if value is None:
        return "—"
    if key.endswith("_error"):
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


def format_paper(key, reference):
    """The paper's number for `key`, marked when it is unverified."""
    text = format_value(key, (reference or {}).get(key))
    if key in ((reference or {}).get("unverified") or ()):
        text += " (unverified)"
    return text


def format_delta(key, value, paper):
    if value is None or paper is None:
        return "—"
    delta = value - paper
    if key.endswith("_error"):
        return f"{100 * delta:+.2f} pp"
    return f"{delta:+.4g}"


def rows(reference, metrics):
    """[(metric, this run, paper, delta)] with the paper's metrics first."""
    out = []
    ref = paper_numbers(reference)
    for key, paper in ref.items():
        value = metrics.get(key)
        out.append((key, format_value(key, value), format_paper(key, reference),
                    format_delta(key, value, paper)))
    for key in sorted(metrics):
        if key not in ref:
            out.append((key, format_value(key, metrics[key]), "—", "—"))
    return out


def table(results):
    """A rich Table of one run's results."""
    title = f"{results['name']}" + (" (smoke run)" if results.get("smoke") else "")
    source = (results.get("reference") or {}).get("source")
    caption = "; ".join(c for c in (f"paper: {source}" if source else None,
                                    results.get("comparison")) if c)
    t = Table(title=title, caption=caption or None)
    for column in ("metric", "this run", "paper", "delta"):
        t.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows(results.get("reference"), results["metrics"]):
        t.add_row(*row)
    return t


def markdown(results):
    """report.md for one run."""
    ref = results.get("reference") or {}
    lines = [f"# {results['name']}" + (" (smoke run)" if results.get("smoke") else ""), ""]
    if ref.get("source"):
        lines += [f"Paper: {ref['source']}", ""]
    if results.get("comparison"):
        lines += [f"Comparison: {results['comparison']}.", ""]
    lines += ["| metric | this run | paper | delta |", "|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(r)} |" for r in rows(ref, results["metrics"])]
    env = results.get("env", {})
    lines += [
        "",
        f"- status: {results.get('status', 'finished')}",
        f"- epochs: {results.get('epochs')}",
        f"- wall time: {results.get('wall_time_s', 0):.0f} s",
        f"- backend: {env.get('backend')} (keras {env.get('keras')}, deepkit {env.get('deepkit')})",
        f"- devices: {', '.join(env.get('devices', []))}",
        f"- machine: {env.get('machine', '')}",
        f"- command: {' '.join(env.get('command', []))}",
    ]
    lines += stage_lines(results.get("stages"))
    lines += chain_evaluation_lines(results.get("generative"))
    source = results.get("init_from")
    if source:
        metrics = ", ".join(f"{k} {format_value(k, v)}" for k, v in
                            sorted((source.get("metrics") or {}).items()))
        wall = source.get("wall_time_s")
        lines.append(f"- initialized from a run of {source['recipe']} ({source['run_dir']}"
                     + (f"; {source.get('epochs')} epochs, {wall:.0f} s" if wall is not None
                        else "") + (f"; {metrics}" if metrics else "") + ")")
    lines.append("")
    return "\n".join(lines)


def stage_lines(stages):
    """report.md's table of the stages of a run with more than one: each
    stage's epochs, time and the numbers of its last epoch."""
    if not stages or len(stages) < 2:
        return []
    keys = []
    for stage in stages:
        keys += [k for k in stage.get("last_epoch") or {} if k not in keys]
    keys = sorted(keys, key=lambda k: (k.startswith("val_"), k))
    lines = ["", "## Stages (each stage's last epoch)", "",
             "| stage | epochs | time | " + " | ".join(keys) + " |",
             "|---|---:|---:|" + "---:|" * len(keys)]
    for stage in stages:
        last = stage.get("last_epoch") or {}
        cells = [format_value(k, last.get(k)) for k in keys]
        lines.append(f"| {stage['stage']} | {stage['epochs']} | {stage['seconds']:.0f} s | "
                     + " | ".join(cells) + " |")
    return lines


def chain_evaluation_lines(details):
    """report.md lines on how a chain evaluation's numbers were made
    (`deepkit.recipe.generative`), or none."""
    if not details:
        return []
    chain = details["chain"]
    lines = ["", "## Chain evaluation", "",
             f"- chain: {chain['chains']} chain(s) of {chain['steps']} steps from "
             f"{chain['start']} (seed {chain['seed']}), every step's mean p(x) a sample: "
             f"{chain['samples']} samples, {chain['seconds']:.0f} s"]
    parzen = details.get("parzen")
    if parzen:
        how = (f"chosen on {parzen['select_on']}" if parzen.get("sigma_table")
               else "fixed by the recipe")
        lines.append(f"- Parzen window: sigma {parzen['sigma']:g} ({how}), {parzen['samples']} "
                     f"samples, {parzen['rows']} {parzen['data']} rows, {parzen['seconds']:.0f} s")
        for sigma, value in parzen.get("sigma_table") or ():
            lines.append(f"  - sigma {sigma:g}: {value:.2f} on {parzen['select_on']}")
    csl = details.get("csl")
    if csl:
        lines.append(f"- CSL (Bengio, Yao & Cho 2013): {csl['hidden_states']} hidden states of "
                     f"the chain, {csl['rows']} {csl['data']} rows"
                     + (" thresholded at 0.5" if csl.get("binarize") else "")
                     + f", {csl['seconds']:.0f} s")
    nearest = details.get("nearest")
    if nearest:
        lines.append(f"- nearest training image of each of the {nearest['samples']} samples "
                     f"among {nearest['train_rows']}"
                     + (f"; test_nearest_distance_mean: the same for {nearest['baseline_rows']} "
                        "test images" if nearest.get("baseline_rows") else ""))
        if nearest.get("picture"):
            lines.append(f"- ![samples above their nearest training images]"
                         f"({nearest['picture']}) (distances "
                         f"{', '.join(f'{d:.2f}' for d in nearest['picture_distances'])})")
    for picture in details.get("pictures") or ():
        if not nearest or picture != nearest.get("picture"):
            lines.append(f"- ![{picture}]({picture})")
    return lines


def load_results(run_dir):
    path = Path(run_dir) / RESULTS
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no {RESULTS} (the run has not finished)")
    return json.loads(path.read_text())


def _overrides(results):
    """The `--set` overrides of a run's command, as a list of strings."""
    command = (results.get("env") or {}).get("command") or []
    return [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "--set"]


def _short(override):
    """`model.X.gate=noisy_rectifier` -> `gate=noisy_rectifier`."""
    key, _, value = override.partition("=")
    return f"{key.rsplit('.', 1)[-1]}={value}"


def run_labels(results_list, run_dirs=None):
    """Column labels: the recipe name, and what tells runs of one recipe apart.

    Runs of the same recipe get their run directory's name and the `--set`
    overrides that not all of them share.
    """
    names = [r["name"] for r in results_list]
    overrides = [_overrides(r) for r in results_list]
    shared = set.intersection(*map(set, overrides)) if overrides else set()
    labels = []
    for i, r in enumerate(results_list):
        label = r["name"] + (" (smoke)" if r.get("smoke") else "")
        if names.count(r["name"]) > 1:
            if run_dirs is not None:
                label += f" ({Path(run_dirs[i]).name})"
            shown = dict.fromkeys(_short(o) for o in overrides[i] if o not in shared)
            label += "".join(f"\n{o}" for o in shown)
        labels.append(label)
    return labels


def compare_table(results_list, run_dirs=None):
    """Several runs side by side: metric | run 1 | run 2 | ... | paper.

    When the runs' papers give different numbers for a metric (runs of
    different recipes), there is no single paper column: each such metric
    gets a ``<metric>, paper`` row under it with each run's own reference.

    Args:
        results_list: the runs' results dicts.
        run_dirs: their run directories (to tell runs of one recipe apart).
    """
    refs = [paper_numbers(r.get("reference")) for r in results_list]
    keys = []
    for ref in refs:
        keys += [k for k in ref if k not in keys]
    for r in results_list:
        keys += [k for k in sorted(r["metrics"]) if k not in keys]
    one_paper = all(len({ref[k] for ref in refs if k in ref}) <= 1 for k in keys)

    t = Table(title="runs side by side")
    t.add_column("metric")
    for r, label in zip(results_list, run_labels(results_list, run_dirs)):
        env = r.get("env", {})
        t.add_column(f"{label}\n{env.get('backend', '')}, {r.get('wall_time_s', 0):.0f} s",
                     justify="right")
    if one_paper:
        t.add_column("paper", justify="right")
    for k in keys:
        values = [format_value(k, r["metrics"].get(k)) for r in results_list]
        if one_paper:
            full = next((r.get("reference") for r, ref in zip(results_list, refs) if k in ref),
                        None)
            t.add_row(k, *values, format_paper(k, full))
            continue
        t.add_row(k, *values)
        if any(k in ref for ref in refs):
            t.add_row(f"{k}, paper", *[format_paper(k, r.get("reference")) for r in results_list],
                      style="dim")
    return t

"""Run a validated recipe in a run directory that can always be resumed.

The run directory holds the resolved `recipe.yaml`, `env.json`, the metrics
history (`history.csv`, one more CSV per later stage), the checkpoints
(`checkpoints/`), the final model (`model.keras`), `results.json` and
`report.md`. Running again in the same directory resumes where the last
completed epoch left off and finishes with the same numbers as an
uninterrupted run (see `ExactBackupAndRestore`).
"""

import csv
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import keras
import numpy as np
import yaml
from rich.console import Console

import deepkit
from deepkit import datasets
from deepkit.callbacks import (AnnealOnPlateau, ExactBackupAndRestore, RichProgressBar,
                               StopAtTarget, StopOnInterrupt, StopOnNaN, TimeLimit,
                               TrainingInterrupted)
from deepkit.recipe import names, report
from deepkit.recipe.errors import RecipeError, RunDiverged, RunFailed, RunInterrupted
from deepkit.recipe.load import dump
from deepkit.recipe.rundir import atomic_write, default_run_dir


class EpochShuffledArrays(keras.utils.PyDataset):
    """Batches of numpy arrays in an order that depends only on (seed, epoch).

    Args:
        arrays: `(x, y)` or `(x, y, sample_weight)`, equal lengths.
        batch_size: examples per batch (the last batch may be smaller).
        seed: the shuffle seed.
        shuffle: shuffle each epoch; False keeps the stored order (needed for
            stateful RNNs trained by truncated BPTT).
    """

    def __init__(self, arrays, batch_size, seed, shuffle=True):
        super().__init__(workers=1, use_multiprocessing=False)
        self.arrays = tuple(arrays)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.size = len(self.arrays[0])
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.epoch = epoch
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            self.order = rng.permutation(self.size)
        else:
            self.order = None

    def __len__(self):
        return math.ceil(self.size / self.batch_size)

    def __getitem__(self, index):
        start = index * self.batch_size
        stop = min(start + self.batch_size, self.size)
        if self.order is None:
            return tuple(a[start:stop] for a in self.arrays)
        rows = self.order[start:stop]
        return tuple(a[rows] for a in self.arrays)




def _framework_versions():
    versions = {}
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module:
        versions[module] = getattr(sys.modules.get(module) or __import__(module), "__version__", "?")
    return versions


def environment(recipe, command):
    try:
        devices = list(keras.distribution.list_devices())
    except Exception:  # some backends cannot list devices
        devices = []
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "deepkit": deepkit.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "frameworks": _framework_versions(),
        "devices": [str(d) for d in devices],
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "seed": recipe.seed,
        "command": list(command or sys.argv),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }




def load_splits(recipe):
    """{split: arrays or None} for train, valid and test."""
    data = recipe.data
    options = dict(data.options)
    if "batch_size" in datasets.get(data.dataset).options:
        options["batch_size"] = data.batch_size
    out = {}
    for split in datasets.SPLITS:
        try:
            arrays = datasets.load(data.dataset, split, **options)
        except datasets.DataError as e:
            raise RecipeError(str(e), "data", recipe.file) from None
        out[split] = None if arrays is None else tuple(np.asarray(a) for a in arrays)
    if out["train"] is None:
        raise RecipeError(f"data set {data.dataset!r} gave no training split", "data")
    return out


def stateful_layers(model):
    """The layers of `model` (nested ones included) that carry state across batches."""
    found, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        if getattr(layer, "stateful", False) and hasattr(layer, "reset_state"):
            found.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
        for attr in ("forward_layer", "backward_layer", "layer"):
            inner = getattr(layer, attr, None)
            if isinstance(inner, keras.layers.Layer):
                stack.append(inner)
    return found


def reset_states(model):
    for layer in stateful_layers(model):
        layer.reset_state()


class ResetStates(keras.callbacks.Callback):
    """Start every epoch, validation and evaluation of a stateful model from zeros."""

    def on_epoch_begin(self, epoch, logs=None):
        reset_states(self.model)

    def on_test_begin(self, logs=None):
        reset_states(self.model)


def build_model(recipe, train):
    """The recipe's model, built on the shape of the training inputs."""
    x = train[0]
    if recipe.model.sequential is not None:
        layers = names.build_layers(recipe)
        # Stateful layers need a static batch size.
        stateful = any(getattr(layer, "stateful", False) for layer in layers)
        batch = recipe.data.batch_size if stateful else None
        inputs = keras.Input(shape=x.shape[1:], dtype=str(x.dtype), batch_size=batch)
        model = keras.Sequential([inputs] + layers, name=recipe.name)
    else:
        model = names.build_model_object(recipe)
        model(x[: recipe.data.batch_size])
    return model


def init_from(model, spec, file=None):
    """Copy the weights of `spec["layers"]` from a finished run into `model`.

    `spec["path"]` is a run directory (its `model.keras`) or a `.keras` file;
    each named layer must exist in both models with weights of the same
    shapes. Returns the names copied. Pascanu et al. 2014 start their
    DOT(S)-RNN from a trained DT(S)-RNN this way.
    """
    path = Path(spec["path"]).expanduser()
    source_file = path / "model.keras" if path.is_dir() else path
    if not source_file.is_file():
        raise RecipeError(f"no trained model at {source_file}: expected the directory of a "
                          "finished run (its model.keras) or a .keras file; run the source "
                          f"recipe with --run-dir {path} first", "init_from.path", file)
    # This recipe's own layer names first: no need to load the source for them.
    target_layers = {layer.name: layer for layer in model.layers}
    for i, name in enumerate(spec["layers"]):
        if name not in target_layers:
            raise RecipeError(f"this recipe's model has no layer {name!r}; its layers: "
                              f"{', '.join(target_layers)}", f"init_from.layers[{i}]", file)
    try:
        source = keras.saving.load_model(str(source_file), compile=False)
    except Exception as error:  # a broken or foreign file: say which, no traceback
        raise RecipeError(f"could not load the model in {source_file}: "
                          f"{type(error).__name__}: {str(error).splitlines()[0][:300]}",
                          "init_from.path", file) from None
    source_layers = {layer.name: layer for layer in source.layers}
    for i, name in enumerate(spec["layers"]):
        where = f"init_from.layers[{i}]"
        if name not in source_layers:
            raise RecipeError(f"the model in {source_file} has no layer {name!r}; its layers: "
                              f"{', '.join(source_layers)}", where, file)
        src, dst = source_layers[name].get_weights(), target_layers[name].get_weights()
        shapes = ([w.shape for w in src], [w.shape for w in dst])
        if shapes[0] != shapes[1]:
            raise RecipeError(f"layer {name!r} has weights of shapes {shapes[0]} in "
                              f"{source_file} but {shapes[1]} here", where, file)
        target_layers[name].set_weights(src)
    return list(spec["layers"])


def _history_rows(path):
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _dedupe_history(path):
    """Keep the last row of each epoch (a resumed epoch is logged twice)."""
    rows = _history_rows(path)
    if not rows:
        return rows
    by_epoch = {}
    for row in rows:
        by_epoch[int(row["epoch"])] = row
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    fields = list(rows[0].keys())
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return rows


def _best_train_loss(history, callbacks):
    """The training loss at the best epoch by the monitor of the stage's
    EarlyStopping (or AnnealOnPlateau, which also ends at its best epoch)."""
    if not history:
        raise RunFailed("the previous stage has no history to take its training loss from")
    monitor, mode = None, "min"
    for cb in callbacks:
        if isinstance(cb, (keras.callbacks.EarlyStopping, AnnealOnPlateau)):
            monitor = cb.monitor
            mode = cb.mode if cb.mode in ("min", "max") else ("max" if "acc" in monitor else "min")
    if monitor is None or monitor not in history[0]:
        return float(history[-1]["loss"])
    values = [float(r[monitor]) for r in history]
    best = int(np.argmax(values) if mode == "max" else np.argmin(values))
    return float(history[best]["loss"])


class Runner:
    """Runs one recipe in one run directory. See `run`."""

    def __init__(self, recipe, run_dir=None, console=None, command=None, time_limit=None):
        self.recipe = recipe
        self.run_dir = Path(run_dir) if run_dir else default_run_dir(recipe)
        self.console = console or Console(stderr=True)
        self.command = command
        self.time_limit = time_limit

    # -- run directory --------------------------------------------------------
    def check_run_dir(self):
        """True when the run directory holds this recipe's run (it resumes).

        Writes nothing; RecipeError when it holds a different recipe.
        """
        path = self.run_dir / "recipe.yaml"
        if not path.exists():
            return False
        if yaml.safe_load(path.read_text()) != yaml.safe_load(dump(self.recipe)):
            raise RecipeError(
                f"the run directory {self.run_dir} holds a different recipe "
                "(its recipe.yaml); resume with the same recipe and overrides, "
                "or choose another --run-dir"
            )
        return True

    def prepare(self):
        """Create or check the run directory; True when it resumes a run."""
        if self.check_run_dir():
            return True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.run_dir / "recipe.yaml", dump(self.recipe))
        return False

    def _env(self, resumed):
        path = self.run_dir / "env.json"
        env = environment(self.recipe, self.command)
        if resumed and path.exists():
            previous = json.loads(path.read_text())
            previous.setdefault("resumed", []).append(env)
            env = previous
        atomic_write(path, json.dumps(env, indent=2))
        return env

    # -- stages ---------------------------------------------------------------
    def _stages(self):
        recipe = self.recipe
        yield {"name": "main", "epochs": recipe.fit.epochs, "callbacks": recipe.fit.callbacks,
               "optimizer": None, "merge_validation": False, "until": None, "index": 0}
        for i, stage in enumerate(recipe.stages, start=1):
            yield {"name": stage.name, "epochs": stage.epochs, "callbacks": stage.callbacks,
                   "optimizer": stage.optimizer, "merge_validation": stage.merge_validation,
                   "until": stage.until, "index": i}

    def _history_path(self, stage):
        return self.run_dir / ("history.csv" if stage["index"] == 0
                               else f"history-{stage['index']}-{stage['name']}.csv")

    def _run_stage(self, stage, model, splits, previous):
        recipe, index = self.recipe, stage["index"]
        ckpt = self.run_dir / "checkpoints"
        done_path = ckpt / f"stage-{index}.json"
        final_weights = ckpt / f"stage-{index}-final.weights.h5"
        user_callbacks = names.build_callbacks(stage["callbacks"])
        if self.time_limit is not None:
            user_callbacks.append(TimeLimit(self.time_limit))
        if done_path.exists():
            model.load_weights(str(final_weights))
            self.console.print(f"stage {index} ({stage['name']}) already finished; weights loaded")
            return json.loads(done_path.read_text()), user_callbacks

        if index > 0:
            if stage["optimizer"] is not None:
                args = names.build_compile_args(recipe, stage["optimizer"])
                model.compile(**args, jit_compile=recipe.jit_compile)
            if stage["until"] is not None:
                target = stage["until"]["target"]
                if target == "previous_train_loss":
                    target = previous["best_train_loss"]
                user_callbacks.append(StopAtTarget(stage["until"]["monitor"], target))

        train = splits["train"]
        if stage["merge_validation"]:
            train = tuple(np.concatenate([a, b]) for a, b in zip(train, splits["valid"]))
        stage_seed = recipe.seed + 7919 * index
        data = EpochShuffledArrays(train, recipe.data.batch_size, stage_seed, recipe.fit.shuffle)
        guard = StopOnNaN()
        backup = ExactBackupAndRestore(str(ckpt / f"stage-{index}"), seed=stage_seed, data=data,
                                       callbacks=user_callbacks)
        history_path = self._history_path(stage)
        clock_path = self.run_dir / "checkpoints" / f"stage-{index}-time.json"
        spent = json.loads(clock_path.read_text())["seconds"] if clock_path.exists() else 0.0
        start = time.perf_counter()

        def save_clock(epoch, logs):
            if (self.run_dir / "checkpoints").exists():
                atomic_write(clock_path, json.dumps({"seconds": spent + time.perf_counter() - start}))

        # The backup saves each epoch after the callbacks that act on it (a
        # plateau rule, early stopping), so their decisions are part of the
        # checkpoint, and after the history row and the clock, so a kill
        # between the two can only repeat a row (which is de-duplicated),
        # never lose one.
        # StopOnInterrupt first: on Ctrl-C it raises before any later
        # callback sees the unfinished epoch (no checkpoint of half an epoch).
        progress = RichProgressBar(batch_size=recipe.data.batch_size, console=self.console)
        callbacks = [
            StopOnInterrupt(),
            guard,
            *([ResetStates()] if stateful_layers(model) else []),
            *user_callbacks,
            keras.callbacks.CSVLogger(str(history_path), append=True),
            keras.callbacks.LambdaCallback(on_epoch_end=save_clock),
            backup,
            progress,
        ]
        fit_kwargs = dict(recipe.fit.options)
        if splits["valid"] is not None:
            fit_kwargs["validation_data"] = splits["valid"]
            # Validation may use larger batches (forward only, fewer
            # dispatches), except for stateful models, whose batch is static.
            if stateful_layers(model) or "validation_batch_size" not in fit_kwargs:
                fit_kwargs["validation_batch_size"] = recipe.data.batch_size
        # shuffle=False: `data` shuffles itself from (seed, epoch); Keras would
        # also shuffle the batch order, from Python's global random state,
        # which a resumed run does not share (and fit.shuffle: false means
        # the stored order).
        try:
            model.fit(data, epochs=stage["epochs"], callbacks=callbacks, verbose=0,
                      shuffle=False, **fit_kwargs)
        except TrainingInterrupted as stop:
            raise RunInterrupted(f"{stop} of stage {index} ({stage['name']}); "
                                 f"{self._kept(backup)}", self.run_dir) from None
        finally:
            progress.on_train_end()  # the live display, also when fit raised
        seconds = spent + time.perf_counter() - start
        if guard.stopped_at is not None:
            epoch, batch = guard.stopped_at
            raise RunDiverged(
                f"the loss became NaN at epoch {epoch + 1}, batch {batch + 1} of stage "
                f"{index} ({stage['name']}); the run stopped; {self._kept(backup, 'good ')}"
            )
        history = _dedupe_history(history_path)
        summary = {
            "stage": stage["name"],
            "epochs": len(history),
            "seconds": seconds,
            "best_train_loss": _best_train_loss(history, user_callbacks),
        }
        ckpt.mkdir(parents=True, exist_ok=True)
        tmp = ckpt / f"tmp-stage-{index}-final.weights.h5"
        model.save_weights(str(tmp))
        os.replace(tmp, final_weights)
        atomic_write(done_path, json.dumps(summary))
        return summary, user_callbacks

    @staticmethod
    def _kept(backup, good=""):
        meta = backup._metadata()
        if not meta:
            return "no epoch of this stage had finished, so it has no checkpoint yet"
        return (f"the last {good}checkpoint (end of epoch {meta['epoch']}) is kept in "
                f"{backup.backup_dir}")

    # -- init_from: {recipe: ...} ----------------------------------------------
    def _source_dir(self):
        source = self.recipe.init_source
        return self.run_dir / "init_from" / source.name

    def _run_source(self):
        """Run (or resume, or reuse) the source recipe inside this run's
        directory; returns its run directory."""
        source, run_dir = self.recipe.init_source, self._source_dir()
        self.console.print(f"init_from: the source recipe {source.name} runs first, "
                           f"in {run_dir}")
        policy = keras.mixed_precision.global_policy()
        try:
            results = Runner(source, run_dir, self.console, self.command, self.time_limit).run()
        finally:
            keras.mixed_precision.set_global_policy(policy)  # the source may set its own
        if results.get("status") != "finished":
            raise RunFailed(f"the source recipe {source.name} of init_from.recipe did not "
                            f"finish ({results.get('status')}); its run directory: {run_dir}")
        return run_dir

    def _source_summary(self):
        if self.recipe.init_source is None:
            return None
        run_dir = self._source_dir()
        summary = {"recipe": self.recipe.init_source.name, "run_dir": str(run_dir)}
        if (run_dir / report.RESULTS).exists():
            source = report.load_results(run_dir)
            summary.update(metrics=source.get("metrics", {}),
                           epochs=source.get("epochs"), wall_time_s=source.get("wall_time_s"))
        return summary

    # -- the whole run --------------------------------------------------------
    def run(self):
        """Train, evaluate, save and report; returns the results dict."""
        recipe = self.recipe
        resumed = self.check_run_dir()
        if resumed and (self.run_dir / report.RESULTS).exists():
            results = report.load_results(self.run_dir)
            if results.get("status") == "finished":
                self.console.print(f"{self.run_dir} is already finished; its report:")
                Console().print(report.table(results))
                return results
        spec = recipe.init_from
        if spec is not None and "recipe" in spec and recipe.init_source is None:
            raise RecipeError("init_from.recipe names a source recipe that was not loaded: "
                              "load the recipe with deepkit.recipe.load.load, which loads "
                              "and validates its source", "init_from.recipe", recipe.file)
        if recipe.init_source is not None and not resumed:
            # The source recipe runs to the end first, so this run then starts
            # as a fresh process would from the finished source run.
            spec = {"path": str(self._run_source()), "layers": spec["layers"]}
        keras.utils.set_random_seed(recipe.seed)
        if recipe.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        # Load the data before writing anything: a data error leaves no run directory.
        splits = load_splits(recipe)
        for i, stage in enumerate(recipe.stages):
            if stage.merge_validation and splits["valid"] is None:
                raise RecipeError("merge_validation needs a validation split "
                                  "(set data.validation)", f"stages[{i}].merge_validation",
                                  recipe.file)
        model = build_model(recipe, splits["train"])
        # Before anything is written, so a bad init_from leaves no run directory;
        # a resumed run gets its weights from the checkpoint instead.
        if spec is not None and not resumed:
            copied = init_from(model, spec, recipe.file)
            self.console.print(f"initialized {', '.join(copied)} from {spec['path']}")
        resumed = self.prepare()
        if resumed:
            self.console.print(f"resuming the run in {self.run_dir}")
        env = self._env(resumed)
        model.compile(**names.build_compile_args(recipe), jit_compile=recipe.jit_compile)

        summaries, previous = [], None
        for stage in self._stages():
            try:
                previous, _ = self._run_stage(stage, model, splits, previous)
            except RunDiverged as e:
                results = {"name": recipe.name, "status": "diverged", "message": str(e),
                           "metrics": {}, **self._comparison(), "env": env}
                atomic_write(self.run_dir / report.RESULTS, json.dumps(results, indent=2))
                raise
            summaries.append(previous)

        metrics = {}
        for split in recipe.evaluate.splits:
            if splits.get(split) is None:
                continue
            x, y, *weights = splits[split]
            reset_states(model)
            values = model.evaluate(x, y, sample_weight=weights[0] if weights else None,
                                    batch_size=recipe.data.batch_size, verbose=0,
                                    return_dict=True)
            metrics.update({f"{split}_{k}": float(v) for k, v in values.items()})
        metrics = report.derived_metrics(metrics)

        tmp = self.run_dir / "model.tmp.keras"
        model.save(str(tmp))
        os.replace(tmp, self.run_dir / "model.keras")
        results = {
            "name": recipe.name,
            "status": "finished",
            "metrics": metrics,
            **self._comparison(),
            "stages": summaries,
            "epochs": sum(s["epochs"] for s in summaries),
            "wall_time_s": sum(s["seconds"] for s in summaries),
            "env": env,
        }
        source = self._source_summary()
        if source is not None:
            results["init_from"] = source
        atomic_write(self.run_dir / report.RESULTS, json.dumps(results, indent=2))
        atomic_write(self.run_dir / "report.md", report.markdown(results))
        # Progress goes to stderr (self.console), the result to stdout.
        Console().print(report.table(results))
        self.console.print(f"run directory: {self.run_dir}")
        return results

    def _comparison(self):
        """The results' `smoke`, `reference` (what this run compares with)
        and `comparison` (why that differs from the recipe's, if it does)."""
        reference, note = report.comparable_reference(self.recipe)
        return {"smoke": self.recipe.smoke_run, "reference": reference, "comparison": note}


def run(recipe, run_dir=None, console=None, command=None, time_limit=None):
    """Run `recipe` (a validated `Recipe`) in `run_dir`; see `Runner`.

    Returns:
        The results dict (also in `run_dir/results.json`).

    Raises:
        RunDiverged: the loss became NaN; the last good checkpoint is kept.
        RecipeError: the run directory holds another recipe, or data are missing.
    """
    return Runner(recipe, run_dir, console, command, time_limit).run()

"""Run a validated recipe in a run directory that can always be resumed.

The run directory holds the resolved `recipe.yaml`, `env.json`, the metrics
history (`history.csv`, one more CSV per later stage), the checkpoints
(`checkpoints/`), the final model (`model.keras`), `results.json` and
`report.md`. Running again in the same directory resumes where the last
completed epoch left off and finishes with the same numbers as an
uninterrupted run.

The runner only orchestrates: `deepkit.recipe.build` turns the recipe into
data, a model and `deepkit.training.Stage` objects, `fit_stages` trains
them, and `deepkit.recipe.report` writes the report. Library errors become
the command's errors (`RecipeError`, `RunDiverged`, `RunInterrupted`) here.
"""

import json
import os
from pathlib import Path

import keras
from rich.console import Console

from deepkit.callbacks import (RichProgressBar, StopOnInterrupt, TrainingInterrupted,
                               reset_states, stateful_layers)
from deepkit.recipe import build, generative, report, rundir
from deepkit.recipe.errors import RecipeError, RunDiverged, RunFailed, RunInterrupted
from deepkit.training.loss_weights import LossWeightScheduler, scheduled_losses
from deepkit.training.stages import StageError, TrainingDiverged, fit_stages


class Runner:
    """Runs one recipe in one run directory. See `run`."""

    def __init__(self, recipe, run_dir=None, console=None, command=None, time_limit=None):
        self.recipe = recipe
        self.run_dir = Path(run_dir) if run_dir else rundir.default_run_dir(recipe)
        from deepkit.distribution import Scale, worker_name

        # Under multi_worker_mirrored every worker trains; the chief writes
        # the run directory, each other worker a folder of its own inside it
        # (its checkpoints, so that it resumes too).
        if not Scale.from_spec(recipe.distribution).is_chief:
            self.run_dir = self.run_dir / worker_name()
        self.console = console or Console(stderr=True)
        self.command = command
        self.time_limit = time_limit

    # -- init_from: {recipe: ...} ----------------------------------------------
    def _source_dir(self):
        return self.run_dir / "init_from" / self.recipe.init_source.name

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
    def _finished(self, resumed):
        """The results of a run that already finished in this directory, or None."""
        if not (resumed and (self.run_dir / report.RESULTS).exists()):
            return None
        results = report.load_results(self.run_dir)
        if results.get("status") != "finished":
            return None
        self.console.print(f"{self.run_dir} is already finished; its report:")
        Console().print(report.table(results))
        return results

    def _prepare_model(self, resumed):
        """Data and a compiled model, weights from init_from; creates the run
        directory only once nothing can fail for want of input."""
        recipe, spec = self.recipe, self.recipe.init_from
        if spec is not None and "recipe" in spec and recipe.init_source is None:
            raise RecipeError("init_from.recipe names a source recipe that was not loaded: "
                              "load the recipe with deepkit.recipe.load, which loads "
                              "and validates its source", "init_from.recipe", recipe.file)
        if recipe.init_source is not None and not resumed:
            # The source recipe runs to the end first, so this run then starts
            # as a fresh process would from the finished source run.
            spec = {"path": str(self._run_source()), "layers": spec["layers"]}
        keras.utils.set_random_seed(recipe.seed)
        if recipe.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        self.scale = build.scale(recipe)
        # Every object once, then the data, before anything is written: a bad
        # argument or a data error leaves no run directory.
        with self.scale.scope():
            built = build.objects(recipe, self.time_limit, self.run_dir)
            splits = build.load_splits(recipe)
            model = build.build_model(recipe, splits["train"], built)
        generative.check(recipe, splits, model)
        # Also before anything is written, so a bad init_from leaves no run
        # directory; a resumed run gets its weights from the checkpoint instead.
        if spec is not None and not resumed:
            copied = build.init_from(model, spec, recipe.file)
            self.console.print(f"initialized {', '.join(copied)} from {spec['path']}")
        if not resumed:
            rundir.create(self.run_dir, recipe)
        else:
            self.console.print(f"resuming the run in {self.run_dir}")
        with self.scale.scope():
            model.compile(**built.compile)
        return splits, model, built.stages

    def _fit_arguments(self, model, splits):
        kwargs = dict(self.recipe.fit.options)
        if splits["valid"] is not None:
            # Validation may use larger batches (forward only, fewer
            # dispatches), except for stateful models, whose batch is static.
            if stateful_layers(model) or "validation_batch_size" not in kwargs:
                kwargs["validation_batch_size"] = self.recipe.data.batch_size
        return kwargs

    def _model_data(self, splits):
        """The splits as `fit` and `evaluate` take them: the inputs alone for a
        model with its own loss (`compile.loss: null`, a GSN), else all arrays."""
        if self.recipe.compile.loss is not None:
            return splits
        return {k: None if v is None else v[:1] for k, v in splits.items()}

    def _train(self, model, stages, splits, env):
        recipe, ckpt = self.recipe, self.run_dir / "checkpoints"
        splits = self._model_data(splits)
        progress = RichProgressBar(batch_size=recipe.data.batch_size, console=self.console)
        try:
            with self.scale.scope():
                results = self._fit_stages(model, stages, splits, ckpt, progress)
        except TrainingInterrupted as stop:
            raise RunInterrupted(f"{stop} of stage {stop.index} ({stop.stage}); "
                                 f"{self._kept(stop.index, stop.checkpoint_epoch)}",
                                 self.run_dir) from None
        except TrainingDiverged as e:
            message = f"{e}; the run stopped; {self._kept(e.index, e.checkpoint_epoch, 'good ')}"
            results = {"name": recipe.name, "status": "diverged", "message": message,
                       "metrics": {}, **self._comparison(), "env": env}
            rundir.atomic_write(self.run_dir / report.RESULTS, json.dumps(results, indent=2))
            raise RunDiverged(message) from None
        except StageError as e:  # the library's refusal of what the recipe asked for
            raise RecipeError(str(e).splitlines()[0], "stages", recipe.file) from None
        finally:
            progress.on_train_end()  # the live display, also when fit raised
        return results

    def _fit_stages(self, model, stages, splits, ckpt, progress):
        recipe = self.recipe
        return fit_stages(
            model, stages, splits["train"],
            validation_data=splits["valid"], batch_size=recipe.data.batch_size,
            seed=recipe.seed, shuffle=recipe.fit.shuffle,
            # StopOnInterrupt first: on Ctrl-C it raises before any later
            # callback sees the unfinished epoch.
            callbacks=[StopOnInterrupt()], observers=[progress],
            checkpoint_dir=ckpt, history_dir=self.run_dir, log=self.console.print,
            **self._fit_arguments(model, splits))

    def _kept(self, index, epoch, good=""):
        if epoch is None:
            return "no epoch of this stage had finished, so it has no checkpoint yet"
        return (f"the last {good}checkpoint (end of epoch {epoch}) is kept in "
                f"{self.run_dir / 'checkpoints' / f'stage-{index}'}")

    def _evaluate(self, model, splits):
        """(metrics, details of the chain evaluation or None)."""
        metrics, details = {}, None
        data = self._model_data(splits)
        for split in self.recipe.evaluate.splits:
            if data.get(split) is None:
                continue
            x, y, *weights = data[split] + (None,) * (2 - len(data[split]))
            reset_states(model)
            # Scheduled loss weights take the trained model's step.
            extra = [LossWeightScheduler()] if scheduled_losses(model) else []
            values = model.evaluate(x, y, sample_weight=weights[0] if weights else None,
                                    batch_size=self.recipe.data.batch_size, verbose=0,
                                    return_dict=True, callbacks=extra)
            metrics.update({f"{split}_{k}": float(v) for k, v in values.items()})
        if generative.enabled(self.recipe.evaluate):
            numbers, details = generative.evaluate(model, splits, self.recipe.evaluate,
                                                   self.recipe.seed, self.run_dir,
                                                   log=self.console.print)
            metrics.update(numbers)
        return report.derived_metrics(metrics), details

    def run(self):
        """Train, evaluate, save and report; returns the results dict."""
        recipe = self.recipe
        resumed = rundir.holds_run(self.run_dir, recipe)
        finished = self._finished(resumed)
        if finished is not None:
            return finished
        splits, model, stages = self._prepare_model(resumed)
        env = rundir.write_environment(self.run_dir, recipe, self.command, resumed,
                                       distribution=self._distribution_record())
        stages = self._train(model, stages, splits, env)
        # Saved before the evaluation, which may run for minutes (a chain).
        tmp = self.run_dir / "model.tmp.keras"
        model.save(str(tmp))
        os.replace(tmp, self.run_dir / "model.keras")
        with self.scale.scope():
            metrics, chain_evaluation = self._evaluate(model, splits)
        results = {
            "name": recipe.name,
            "status": "finished",
            "metrics": metrics,
            **self._comparison(),
            "stages": [s.summary() for s in stages],
            "epochs": sum(s.epochs for s in stages),
            "wall_time_s": sum(s.seconds for s in stages),
            "env": env,
        }
        if chain_evaluation is not None:
            results["generative"] = chain_evaluation
        source = self._source_summary()
        if source is not None:
            results["init_from"] = source
        rundir.atomic_write(self.run_dir / report.RESULTS, json.dumps(results, indent=2))
        rundir.atomic_write(self.run_dir / "report.md", report.markdown(results))
        # Progress goes to stderr (self.console), the result to stdout.
        Console().print(report.table(results))
        self.console.print(f"run directory: {self.run_dir}")
        return results

    def _distribution_record(self):
        """env.json's `distribution`: kind, replicas, devices, batch sizes."""
        if self.scale.kind is None:
            return None
        return self.scale.describe(self.recipe.data.batch_size)

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
        RunInterrupted: Ctrl-C; the run resumes from its run directory.
        RecipeError: the run directory holds another recipe, or data are missing.
    """
    return Runner(recipe, run_dir, console, command, time_limit).run()

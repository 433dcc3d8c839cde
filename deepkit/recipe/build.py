"""What a recipe builds: its data splits, its model, its `init_from` weights, its stages.

Each function turns one section of a validated `Recipe` into the library's
own objects (numpy arrays, a Keras model, `deepkit.training.Stage`), so the
runner only orchestrates them.
"""

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Optional

import keras

from deepkit import datasets
from deepkit.callbacks import TimeLimit
from deepkit.datasets.epoch_arrays import as_arrays
from deepkit.recipe import names
from deepkit.recipe.errors import RecipeError
from deepkit.training.stages import Stage, previous_train_loss

# Targets of `until:` given by name in recipes.
UNTIL_TARGETS = {"previous_train_loss": previous_train_loss}


# Callbacks that install a training step of their own, tested on one device
# and under tf.distribute only.
_STEP_CALLBACKS = ("VanishingGradientRegularizer",)


def scale(recipe):
    """The recipe's `deepkit.distribution.Scale`, checked against the backend
    and against what cannot run under it (refused before anything is
    written, with the reason)."""
    import keras

    from deepkit.distribution import DistributionError, Scale

    where = "distribution"
    try:
        out = Scale.from_spec(recipe.distribution)
        out.check_backend(keras.backend.backend())
        if out.kind is None:
            return out
        if out.kind == "multi_worker_mirrored":
            # Measured 2026-12-07, Keras 3.15.1, TF 2.21, two workers on
            # localhost: the strategy starts and both workers join, then
            # Model.fit fails converting a PerReplica batch to a tensor (the
            # open question of keras-team/keras #20585).
            raise DistributionError(
                "multi_worker_mirrored is not supported yet: under Keras 3.15 Model.fit "
                "fails inside MultiWorkerMirroredStrategy ('Attempt to convert a value "
                "(PerReplica...) to a Tensor', keras-team/keras #20585); use mirrored on one "
                "machine, or data_parallel on JAX")
        trainers = [("fit.trainer", recipe.fit.trainer)] + [
            (f"stages[{i}].trainer", s.trainer) for i, s in enumerate(recipe.stages)]
        for path, spec in trainers:
            if spec is not None:
                where = path
                raise DistributionError(
                    f"the trainer {spec.name} runs its own loop of fit calls, which is not "
                    f"tested under distribution {out.kind}; run it on one device")
        if out.kind in ("data_parallel", "model_parallel", "expert_parallel"):
            specs = [("fit.callbacks", recipe.fit.callbacks)] + [
                (f"stages[{i}].callbacks", s.callbacks) for i, s in enumerate(recipe.stages)]
            for path, callbacks in specs:
                for spec in callbacks:
                    if spec.name in _STEP_CALLBACKS:
                        where = path
                        raise DistributionError(
                            f"{spec.name} installs a JAX training step of its own, which "
                            f"is not sharded by keras.distribution; use distribution "
                            "mirrored on the TensorFlow backend")
        where = "data.batch_size"
        out.per_replica_batch(recipe.data.batch_size)
        if recipe.model.sequential is not None and any(
                spec.config.get("stateful") for spec in recipe.model.sequential):
            where = "model"
            raise DistributionError("a stateful RNN keeps one state per example of a static "
                                    "batch, which a distribution would split")
    except DistributionError as error:
        raise RecipeError(str(error), where, recipe.file) from None
    return out


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
        out[split] = None if arrays is None else as_arrays(arrays)
    if out["train"] is None:
        raise RecipeError(f"data set {data.dataset!r} gave no training split", "data")
    for i, stage in enumerate(recipe.stages):
        if stage.merge_validation and out["valid"] is None:
            raise RecipeError("merge_validation needs a validation split (set data.validation)",
                              f"stages[{i}].merge_validation", recipe.file)
    return out


@dataclasses.dataclass
class Objects:
    """Every object a recipe names, each built once: the layers of a
    `sequential:` model (or the model object), `compile` arguments, stages."""

    layers: Optional[list]
    model: Any
    compile: dict
    stages: list


def objects(recipe, time_limit=None, run_dir=None):
    """Build every object of `recipe` once (see `Objects`).

    Call it right after the run's seed is set: layers draw their default
    seeds when they are built, in the order of the recipe. With `run_dir`,
    callbacks' folders are placed in it (see `callbacks`).
    """
    try:
        if recipe.model.sequential is not None:
            layers, model = names.build_layers(recipe), None
        else:
            layers, model = None, names.build_model_object(recipe)
        arguments = compile_arguments(recipe)
        return Objects(layers, model, arguments,
                       stages(recipe, time_limit, arguments, run_dir))
    except RecipeError as e:  # a constructor's own argument check
        raise e.at(file=recipe.file) from None


def build_model(recipe, train, built=None):
    """The recipe's model on the shape of the training inputs, from the
    objects of `objects(recipe)` (built here when not given)."""
    built = built or objects(recipe)
    x = train[0]
    if built.layers is not None:
        # Stateful layers need a static batch size.
        stateful = any(getattr(layer, "stateful", False) for layer in built.layers)
        batch = recipe.data.batch_size if stateful else None
        inputs = keras.Input(shape=x.shape[1:], dtype=str(x.dtype), batch_size=batch)
        return keras.Sequential([inputs] + built.layers, name=recipe.name)
    built.model(x[: recipe.data.batch_size])
    return built.model


def compile_arguments(recipe):
    """Keyword arguments of `model.compile`, `jit_compile` included."""
    return {**names.build_compile_args(recipe), "jit_compile": recipe.jit_compile}


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


def _time_limit(callbacks, minutes):
    return callbacks + ([TimeLimit(minutes)] if minutes is not None else [])


# Callback arguments that name a folder to write into.
_FOLDER_ARGUMENTS = ("directory", "log_dir")


def callbacks(specs, run_dir=None):
    """The callbacks of `specs`, built, with their folders in `run_dir`.

    A callback argument named `directory` or `log_dir` that is a relative
    path (given in the recipe or by default, such as TensorBoard's "logs")
    is taken relative to the run directory, and a `directory` left at None
    (SampleGrid's) is the run directory itself, so that a run's pictures and
    logs stay in its folder.
    """
    if run_dir is None:
        return names.build_callbacks(specs)
    out = []
    for spec in specs:
        parameters = inspect.signature(names.resolve("callback", spec).__init__).parameters
        config = dict(spec.config)
        for key in _FOLDER_ARGUMENTS:
            if key not in parameters:
                continue
            value = config.get(key, parameters[key].default)
            if value is None and key == "directory":
                config[key] = str(run_dir)
            elif isinstance(value, str) and not Path(value).expanduser().is_absolute():
                config[key] = str(Path(run_dir) / value)
        out.append(names.build("callback", dataclasses.replace(spec, config=config)))
    return out


def stages(recipe, time_limit=None, compile=None, run_dir=None):
    """The recipe's `fit:` and `stages:` as `deepkit.training.Stage` objects.

    The first stage trains with the model's compiled state; a later stage
    with an `optimizer:` is compiled anew with it and the loss and metrics
    of `compile` (the recipe's compile arguments, built here if not given).
    `time_limit` (minutes) adds a `TimeLimit` to every stage; `run_dir`
    places the callbacks' folders (`callbacks`).
    """
    fit = recipe.fit
    if compile is None and any(spec.recompiles for spec in recipe.stages):
        compile = compile_arguments(recipe)
    trainer = names.build("trainer", fit.trainer) if fit.trainer is not None else None
    out = [Stage(name=fit.name, epochs=fit.epochs, trainer=trainer,
                 trainable=fit.trainable, frozen=fit.frozen, batch_size=fit.batch_size,
                 callbacks=_time_limit(callbacks(fit.callbacks, run_dir), time_limit))]
    for i, spec in enumerate(recipe.stages, start=1):
        until = None
        if spec.until is not None:
            target = spec.until["target"]
            until = (spec.until["monitor"], UNTIL_TARGETS.get(target, target))
        out.append(Stage(
            name=spec.name, epochs=spec.epochs,
            compile=_stage_compile(recipe, spec, compile) if spec.recompiles else None,
            callbacks=_time_limit(callbacks(spec.callbacks, run_dir), time_limit),
            until=until, merge_validation=spec.merge_validation,
            trainer=None if spec.trainer is None else names.build("trainer", spec.trainer),
            trainable=spec.trainable, frozen=spec.frozen, batch_size=spec.batch_size))
    return out


def _stage_compile(recipe, spec, compile):
    """The `compile` arguments of a stage that changes them: the recipe's,
    with the stage's own optimizer, losses, loss weights and metrics; the
    optimizer is new (the stage's, or the recipe's built again), since the
    stage may train other variables than the one before."""
    out = dict(compile)
    out["optimizer"] = names.build("optimizer", spec.optimizer or recipe.compile.optimizer)
    if spec.has_loss:
        out["loss"] = None if spec.loss is None else names.build_loss(spec.loss)
    if spec.loss_weights is not None:
        out["loss_weights"] = spec.loss_weights
    if spec.metrics is not None:
        out["metrics"] = names.build_metrics(spec.metrics)
    return out

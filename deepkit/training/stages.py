"""Training in stages: `Stage` and `fit_stages`.

A stage is one ordinary `fit` call with its own epochs, callbacks, stopping
rule, optimizer and data (the training set, or the training and validation
sets merged), continuing from the weights the previous stage left. The
maxout paper's second stage, `init_from` followed by training, and the
guided and layer-wise pre-training schedules are all lists of stages.

With a `checkpoint_dir`, every stage is resumable: each epoch is
checkpointed by `ExactBackupAndRestore`, a finished stage leaves a marker
and its final weights, and calling `fit_stages` again with the same
arguments skips the finished stages and resumes the unfinished one where
its last completed epoch left off, ending with the numbers of an
uninterrupted run.
"""

import abc
import csv
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import keras
import numpy as np

from deepkit import _keras_internals
from deepkit.callbacks.anneal import AnnealOnPlateau
from deepkit.callbacks.backup import ExactBackupAndRestore, set_epoch_state
from deepkit.callbacks.nan_guard import StopOnNaN
from deepkit.callbacks.reset_states import ResetStates, stateful_layers
from deepkit.callbacks.rich_progress import RichProgressBar
from deepkit.callbacks.stop_at_target import StopAtTarget
from deepkit.datasets.epoch_arrays import EpochShuffledArrays, as_arrays
from deepkit.training.loss_weights import LossWeightScheduler, scheduled_losses

# A prime, so that stage seeds of nearby run seeds never coincide.
_STAGE_SEED_STRIDE = 7919


class Trainer(abc.ABC):
    """A training procedure that is more than one `Model.fit`, used like `fit`.

    ``trainer.fit(model, x, y=None, **fit_arguments)`` takes `Model.fit`'s
    arguments after the model (epochs, callbacks, validation data,
    ``initial_epoch``) and calls Keras callbacks once per epoch, so
    `fit_stages`, checkpoints and early stopping drive it as they drive
    `fit`. Subclasses are registered with `deepkit.export.export` so that
    recipes name them (``fit: {trainer: {Name: {config}}}``).
    """

    @abc.abstractmethod
    def fit(self, model, x=None, y=None, **fit_arguments):
        """Train `model`; returns a `keras.callbacks.History`."""

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def stage_seed(seed, index):
    """The seed of stage `index` of a run seeded with `seed`.

    It drives the stage's data order and its dropout and noise draws, so two
    stages never repeat each other's random numbers.
    """
    return int(seed) + _STAGE_SEED_STRIDE * int(index)


class StageError(ValueError):
    """A stage cannot run as given (its arguments, or what it needs from an
    earlier stage); raised before the stage trains."""


def previous_train_loss(results):
    """The training loss of the previous stage at its best epoch.

    A `Stage.until` target: the maxout paper's second stage trains "until
    the validation loss falls to the training loss of the first stage's
    best epoch".
    """
    if not results or results[-1].best_train_loss is None:
        raise StageError("until: the previous stage has no history to take its training "
                         "loss from (previous_train_loss needs a stage before this one)")
    return results[-1].best_train_loss


@dataclasses.dataclass
class Stage:
    """One stage of `fit_stages`: an ordinary `fit` call and what changes before it.

    Args:
        name: the stage's name (in logs, file names and results).
        epochs: most epochs of the stage.
        compile: keyword arguments of `model.compile` applied before the
            stage (a new optimizer, loss or metrics); None keeps the
            model's compiled state, optimizer state included.
        callbacks: this stage's own callbacks (early stopping, schedules,
            time limits); their progress is checkpointed with the stage.
        until: ``(monitor, target)``: stop at the end of the first epoch
            where ``monitor`` falls to ``target`` (`StopAtTarget`);
            ``target`` is a number or a function of the earlier stages'
            `StageResult` list, such as `previous_train_loss`.
        merge_validation: train on the training and validation sets
            together (validation still runs on the validation set).
        trainer: an object whose ``fit(model, x, **fit_arguments)`` trains
            the stage instead of ``model.fit(x, ...)`` (for example
            `deepkit.training.Alternation`, or
            `deepkit.training.DenoisingPretraining` for one layer of greedy
            layer-wise pre-training); it receives the same data, epochs and
            callbacks.
        trainable: names of the layers or sub-models that train in this
            stage (a sub-model's name covers all its layers; nested layers
            are found by name, or by a path ``"p1nn/p1nn_output"``); every
            other layer is frozen, its weights unchanged bit for bit.
        frozen: names of the layers or sub-models frozen in this stage; the
            rest train. At most one of `trainable` and `frozen`; with
            neither, the layers train as they did before `fit_stages`.
            A stage that changes what trains is compiled again before it
            starts (with its `compile`, or else with the model's own
            compile configuration, `model.get_compile_config()`), so its
            optimizer starts fresh. The freezing holds for this stage only;
            after the last stage the model stays as that stage left it
            (compiled, with its freezing).
        batch_size: examples per step in this stage (None: `fit_stages`'
            ``batch_size``). Gulcehre & Bengio's P1NN learns the hints from
            batches of about 200 blocks, 3-4 images of 64 blocks, and P2NN
            the label from batches of 200 images.
        fit_kwargs: other `fit` arguments of this stage.

    Which outputs and targets a stage trains on is chosen by its losses: the
    targets of a model with named outputs are a dict with every output's
    targets, and a stage's ``compile={"loss": {"hints": ..., "label": None}}``
    trains on the hints alone. A `deepkit.training.ScheduledLoss` in a
    stage's losses anneals its weight over the stage's own steps (its
    optimizer starts at step 0); `fit_stages` adds the
    `deepkit.training.LossWeightScheduler` it needs when the stage has none.

    Example: see `fit_stages`.
    """

    name: str = "main"
    epochs: int = 1
    compile: Optional[dict] = None
    callbacks: Sequence[Any] = ()
    until: Optional[tuple] = None
    merge_validation: bool = False
    trainer: Any = None
    trainable: Optional[Sequence[str]] = None
    frozen: Optional[Sequence[str]] = None
    batch_size: Optional[int] = None
    fit_kwargs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise StageError(f"Stage {self.name!r}: epochs must be a positive integer, "
                             f"got {self.epochs!r}")
        if self.until is not None:
            if not (isinstance(self.until, (tuple, list)) and len(self.until) == 2
                    and isinstance(self.until[0], str)):
                raise StageError(f"Stage {self.name!r}: until must be (monitor, target), "
                                 f"got {self.until!r}")
        if self.trainer is not None and not callable(getattr(self.trainer, "fit", None)):
            raise StageError(f"Stage {self.name!r}: trainer must have a fit(model, x, ...) "
                             f"method, got {type(self.trainer).__name__}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(
                self.batch_size, int) or self.batch_size < 1):
            raise StageError(f"Stage {self.name!r}: batch_size must be a positive integer, "
                             f"got {self.batch_size!r}")
        if self.trainable is not None and self.frozen is not None:
            raise StageError(f"Stage {self.name!r}: give trainable or frozen, not both")
        for key in ("trainable", "frozen"):
            names = getattr(self, key)
            if names is None:
                continue
            if isinstance(names, str):
                names = [names]
            names = list(names)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise StageError(f"Stage {self.name!r}: {key} must be a non-empty list of "
                                 f"layer names, got {getattr(self, key)!r}")
            setattr(self, key, names)
        self.callbacks = list(self.callbacks)


@dataclasses.dataclass
class StageResult:
    """What one stage of `fit_stages` did.

    Args:
        name: the stage's name.
        index: its position in the list.
        epochs: epochs trained (over all resumptions).
        seconds: training time (over all resumptions).
        best_train_loss: the training loss at the stage's best epoch, by the
            monitor of its `EarlyStopping` or `AnnealOnPlateau` (else the
            last epoch's); None without history.
        history: the epoch logs, one dict per epoch.
        resumed: True when the stage had finished before this call.
    """

    name: str
    index: int
    epochs: int
    seconds: float
    best_train_loss: Optional[float]
    history: list
    resumed: bool = False

    def summary(self):
        """The JSON-ready summary kept in results files, with the numbers of
        the stage's last epoch (``last_epoch``: loss and metrics)."""
        last = {}
        if self.history:
            last = {k: float(v) for k, v in self.history[-1].items()
                    if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        return {"stage": self.name, "epochs": self.epochs, "seconds": self.seconds,
                "best_train_loss": self.best_train_loss, "last_epoch": last}


class TrainingDiverged(RuntimeError):
    """The loss of a stage stopped being finite; the last good checkpoint is kept.

    Args:
        message: what happened, where.
        stage: the stage's name.
        index: its position in the list of stages.
        epoch, batch: where the loss stopped being finite (from 0).
        checkpoint_epoch: the epoch of the kept checkpoint (the number of
            epochs it holds), or None when none had finished.
    """

    def __init__(self, message, stage, index, epoch, batch, checkpoint_epoch=None):
        super().__init__(message)
        self.stage, self.index = stage, index
        self.epoch, self.batch = epoch, batch
        self.checkpoint_epoch = checkpoint_epoch


def history_file(directory, index, stage):
    """Where stage `index` logs its epochs: ``history.csv`` for the first,
    ``history-<index>-<name>.csv`` for later ones."""
    name = "history.csv" if index == 0 else f"history-{index}-{stage.name}.csv"
    return Path(directory) / name


def read_history(path):
    """Epoch rows of a CSVLogger file as dicts of numbers, the last row of
    each epoch kept (a resumed epoch can be logged twice); the file is
    rewritten de-duplicated."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return rows
    by_epoch = {int(row["epoch"]): row for row in rows}
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return [{key: _number(key, value) for key, value in row.items()} for row in rows]


def _number(key, text):
    if key == "epoch":
        return int(text)
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _mode(callback):
    """'min' or 'max': the direction of a stopping callback's monitor."""
    if callback.mode in ("min", "max"):
        return callback.mode
    op = getattr(callback, "monitor_op", None)  # set by Keras once an epoch ran
    if op is not None:
        return "max" if op is keras.ops.greater else "min"
    if callback.monitor.removeprefix("val_") == "loss":
        return "min"
    raise StageError(f"{type(callback).__name__}(monitor={callback.monitor!r}, mode='auto'): "
                     "the direction of the monitor is unknown before an epoch has run; "
                     "give mode='min' or mode='max'")


def best_train_loss(history, callbacks):
    """The training loss at the best epoch of `history` (rows of epoch logs).

    The best epoch is chosen by the monitor of the last `EarlyStopping` or
    `AnnealOnPlateau` among `callbacks` (both end at their best epoch's
    weights); without one, or when its monitor was not logged, the last
    epoch's loss.
    """
    if not history:
        return None
    stopper = None
    for callback in callbacks:
        if isinstance(callback, (keras.callbacks.EarlyStopping, AnnealOnPlateau)):
            stopper = callback
    if stopper is None or stopper.monitor not in history[0]:
        return float(history[-1]["loss"])
    values = [float(row[stopper.monitor]) for row in history]
    best = int(np.argmax(values) if _mode(stopper) == "max" else np.argmin(values))
    return float(history[best]["loss"])


def _atomic_json(path, value):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _kept_epoch(order):
    """The epoch of the checkpoint a stage's backup keeps, or None."""
    if isinstance(order, _EpochOrder):
        return None
    checkpoint = order.last_checkpoint()
    return None if checkpoint is None else checkpoint["epoch"]


class _Clock(keras.callbacks.Callback):
    """Seconds of training of one stage, kept over resumptions in `path`."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.spent = 0.0
        if path is not None and Path(path).exists():
            self.spent = json.loads(Path(path).read_text())["seconds"]
        self.start = time.perf_counter()

    def seconds(self):
        return self.spent + time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        if self.path is not None and Path(self.path).parent.exists():
            _atomic_json(self.path, {"seconds": self.seconds()})


class _EpochOrder(keras.callbacks.Callback):
    """Without checkpoints: each epoch's data order and random state, set as
    `ExactBackupAndRestore` sets them (`set_epoch_state`)."""

    def __init__(self, seed, data):
        super().__init__()
        self.seed, self.data = seed, data

    def on_epoch_begin(self, epoch, logs=None):
        set_epoch_state(self.model, self.seed, epoch, self.data)


def _named_layers(model):
    """``{name or path: [layers]}`` for every nested layer of `model`: each
    layer under its own name and under its path of names from the model
    (``"p1nn/p1nn_output"``)."""
    table = {}

    def walk(layer, prefix):
        for child in _keras_internals.flatten_layers(layer, recursive=False):
            path = f"{prefix}{child.name}"
            for key in {child.name, path}:
                table.setdefault(key, [])
                if child not in table[key]:
                    table[key].append(child)
            walk(child, f"{path}/")

    walk(model, "")
    return table


def _find_layers(model, stage, key):
    table = _named_layers(model)
    found = []
    for name in getattr(stage, key):
        layers = table.get(name)
        if not layers:
            known = sorted(k for k in table if "/" not in k)
            raise StageError(f"Stage {stage.name!r}: {key} names {name!r}, which is not a "
                             f"layer of {model.name}; its layers: {', '.join(known)}")
        if len(layers) > 1:
            paths = sorted(k for k, v in table.items() if "/" in k and v[0] in layers)
            raise StageError(f"Stage {stage.name!r}: {key} names {name!r}, which several "
                             f"layers are called; name one by its path: {', '.join(paths)}")
        found.append(layers[0])
    return found


def _leaves(layer):
    """The layers under `layer` (itself included) that have no sublayers."""
    children = _keras_internals.flatten_layers(layer)
    if not children:
        return [layer]
    return [c for c in children if not _keras_internals.flatten_layers(c, recursive=False)]


def _trainable_flags(model):
    return [(layer, layer.trainable) for layer in [model, *_keras_internals.flatten_layers(model)]]


def _set_flags(flags):
    for layer, value in flags:  # containers before their sublayers
        layer.trainable = value


def _apply_freezing(model, stage, initial):
    """Set which layers train in `stage`; True when that changed anything."""
    before = [value for _, value in _trainable_flags(model)]
    if stage.trainable is None and stage.frozen is None:
        _set_flags(initial)
    else:
        named = _find_layers(model, stage, "trainable" if stage.trainable is not None
                             else "frozen")
        marked = {id(leaf) for layer in named for leaf in _leaves(layer)}
        # Every layer set one by one: on TensorFlow, setting a model's
        # `trainable` to the value it already has does not reach its layers.
        for layer in [model, *_keras_internals.flatten_layers(model)]:
            layer.trainable = True
        for leaf in _leaves(model):
            if (id(leaf) in marked) != (stage.trainable is not None):
                leaf.trainable = False
    return before != [value for _, value in _trainable_flags(model)]


def _fit_arguments(stage, validation_data, fit_kwargs):
    kwargs = dict(fit_kwargs)
    kwargs.update(stage.fit_kwargs)
    if validation_data is not None:
        kwargs["validation_data"] = validation_data
    return kwargs


def fit_stages(model, stages, train, validation_data=None, *, batch_size=32, seed=0,
               shuffle=True, callbacks=(), observers=(), checkpoint_dir=None,
               history_dir=None, log=None, **fit_kwargs):
    """Train `model` through `stages` in order, each an ordinary `fit` call.

    Every stage starts from the weights the previous one ended with. The
    training data are numpy arrays served by `EpochShuffledArrays`, whose
    order depends only on the stage's seed (`stage_seed(seed, index)`) and
    the epoch; each epoch's random state (dropout, noise) is set from the
    same seed, so the numbers of a run do not depend on interruptions.

    The callbacks of a stage's `fit` come in this order: `callbacks`, a
    `StopOnNaN` guard, `ResetStates` (stateful models only), the stage's own
    callbacks, its `until` rule, the history logger, the checkpoint, then
    `observers`. The checkpoint is taken after every callback that acts on
    an epoch, so their decisions are part of it.

    Args:
        model: a compiled Keras model.
        stages: a list of `Stage`.
        train: ``(x, y)`` or ``(x, y, sample_weight)`` numpy arrays.
        validation_data: ``(x, y)`` (or with weights) for every stage, or
            None; needed by `Stage(merge_validation=True)`.
        batch_size: examples per training step.
        seed: the run's seed.
        shuffle: shuffle the training data every epoch.
        callbacks: callbacks of every stage, called first (such as
            `StopOnInterrupt`).
        observers: callbacks of every stage that only read the logs (a
            progress display), called last.
        checkpoint_dir: a folder that makes the stages resumable (see the
            module docstring); None: no checkpoints.
        history_dir: where each stage's epoch logs are written as CSV
            (`history_file`); default: `checkpoint_dir`, or none.
        log: a function of one message string (what was skipped or
            resumed); default: silent.
        **fit_kwargs: other `fit` arguments of every stage
            (``validation_batch_size``, ``steps_per_epoch``, ...).

    Returns:
        A list of `StageResult`, one per stage.

    Raises:
        StageError: a stage cannot run as given (a ValueError).
        TrainingDiverged: a loss was not finite; the stage's last good
            checkpoint is kept.
        deepkit.callbacks.TrainingInterrupted: from `StopOnInterrupt`, with
            ``stage``, ``index`` and ``checkpoint_epoch`` attributes added.

    Example:

    Pre-train a model, then fine-tune it on training plus validation data
    with a smaller learning rate until the validation loss reaches the
    first stage's best training loss (Goodfellow et al.'s protocol):

    ```python
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    stages = [
        Stage("train", epochs=100, callbacks=[keras.callbacks.EarlyStopping(
            "val_accuracy", mode="max", patience=10, restore_best_weights=True)]),
        Stage("continue", epochs=50, merge_validation=True,
              compile={"optimizer": keras.optimizers.SGD(0.01),
                       "loss": "sparse_categorical_crossentropy"},
              until=("val_loss", previous_train_loss)),
    ]
    results = fit_stages(model, stages, (x_train, y_train),
                         validation_data=(x_valid, y_valid), batch_size=100, seed=1,
                         checkpoint_dir="run/checkpoints")
    print([(r.name, r.epochs, r.best_train_loss) for r in results])
    ```

    Reference: Goodfellow et al. 2013, "Maxout Networks", ICML 2013,
    arXiv:1302.4389, section 5.1 (the two-stage protocol).
    """
    stages = list(stages)
    if not stages or not all(isinstance(s, Stage) for s in stages):
        raise StageError("fit_stages: stages must be a non-empty list of Stage, got "
                         f"{[type(s).__name__ for s in stages] or 'none'}")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise StageError(f"fit_stages: stage names must differ, got {names}")
    train = as_arrays(train)
    if isinstance(validation_data, (tuple, list)):
        validation_data = as_arrays(validation_data)
    for stage in stages:
        if stage.merge_validation and validation_data is None:
            raise StageError(f"Stage {stage.name!r}: merge_validation needs validation_data")
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir)
    history_dir = Path(history_dir) if history_dir is not None else ckpt
    for folder in (ckpt, history_dir):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    log = log or (lambda message: None)
    initial = _trainable_flags(model)
    results = []
    try:
        for index, stage in enumerate(stages):
            results.append(_fit_stage(model, stage, index, results, train, validation_data,
                                      batch_size, seed, shuffle, list(callbacks),
                                      list(observers), ckpt, history_dir, log, fit_kwargs,
                                      initial))
    except BaseException:
        _set_flags(initial)
        raise
    return results


def _concatenate(a, b):
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            raise StageError("merge_validation: the training and validation targets differ "
                             f"in their outputs: {sorted(a)} and "
                             f"{sorted(b) if isinstance(b, dict) else type(b).__name__}")
        return {k: np.concatenate([a[k], b[k]]) for k in a}
    return np.concatenate([a, np.asarray(b)])


def _fit_stage(model, stage, index, results, train, validation_data, batch_size, seed,
               shuffle, callbacks, observers, ckpt, history_dir, log, fit_kwargs, initial):
    changed = _apply_freezing(model, stage, initial)
    if stage.compile is not None:
        model.compile(**stage.compile)
    elif changed:
        if not model.compiled:
            raise StageError(f"Stage {stage.name!r}: the model must be compiled before "
                             "fit_stages (or the stage given compile=...)")
        # A fresh optimizer of the same configuration, for the variables
        # that train now.
        model.compile_from_config(model.get_compile_config())
    history_path = None if history_dir is None else history_file(history_dir, index, stage)
    if ckpt is not None:
        done_path = ckpt / f"stage-{index}.json"
        final_weights = ckpt / f"stage-{index}-final.weights.h5"
        if done_path.exists():
            model.load_weights(str(final_weights))
            log(f"stage {index} ({stage.name}) already finished; weights loaded")
            done = json.loads(done_path.read_text())
            history = read_history(history_path) if history_path is not None else []
            return StageResult(stage.name, index, done["epochs"], done["seconds"],
                               done["best_train_loss"], history, resumed=True)

    own = list(stage.callbacks)
    if scheduled_losses(model) and not any(
            isinstance(c, LossWeightScheduler) for c in [*callbacks, *own]):
        own.insert(0, LossWeightScheduler())
    if stage.until is not None:
        monitor, target = stage.until
        if callable(target):
            target = target(results)
        own.append(StopAtTarget(monitor, target))
    arrays = train
    if stage.merge_validation:
        arrays = tuple(_concatenate(a, b) for a, b in zip(train, validation_data))
    seed_i = stage_seed(seed, index)
    data = EpochShuffledArrays(arrays, stage.batch_size or batch_size, seed_i, shuffle)
    for display in observers:  # examples per second at this stage's batch size
        if isinstance(display, RichProgressBar):
            display.batch_size = data.batch_size
    guard = StopOnNaN()
    if ckpt is not None:
        order = ExactBackupAndRestore(str(ckpt / f"stage-{index}"), seed=seed_i, data=data,
                                      callbacks=callbacks + own)
        clock = _Clock(ckpt / f"stage-{index}-time.json")
    else:
        order, clock = _EpochOrder(seed_i, data), _Clock(None)
    history_cb = (keras.callbacks.History() if history_path is None
                  else keras.callbacks.CSVLogger(str(history_path), append=True))
    # The checkpoint (`order`) after the history row and the clock: a kill
    # between them can only repeat a row (de-duplicated), never lose one.
    fit_callbacks = [*callbacks, guard, *([ResetStates()] if stateful_layers(model) else []),
                     *own, history_cb, clock, order, *observers]
    kwargs = _fit_arguments(stage, validation_data, fit_kwargs)
    # shuffle=False: `data` shuffles itself from (seed, epoch); Keras would
    # shuffle the batch order from global random state, which a resumed
    # run does not share.
    fit = model.fit if stage.trainer is None else (
        lambda x, **kw: stage.trainer.fit(model, x, **kw))
    # Keras keeps the epoch a restored checkpoint set (and never clears it):
    # each stage starts from its own checkpoint, or from epoch 0.
    _keras_internals.set_initial_epoch(model, None)
    try:
        fit(data, epochs=stage.epochs, callbacks=fit_callbacks, verbose=0, shuffle=False,
            **kwargs)
    except Exception as error:
        from deepkit.callbacks.interrupt import TrainingInterrupted

        if isinstance(error, TrainingInterrupted):
            error.stage, error.index = stage.name, index
            error.checkpoint_epoch = _kept_epoch(order)
        raise
    if guard.stopped_at is not None:
        epoch, batch = guard.stopped_at
        kept = _kept_epoch(order)
        raise TrainingDiverged(
            f"the loss became NaN at epoch {epoch + 1}, batch {batch + 1} of stage {index} "
            f"({stage.name})", stage.name, index, epoch, batch, kept)
    if history_path is not None:
        history = read_history(history_path)
    else:
        logs = history_cb.history
        history = [{"epoch": e, **{k: v[i] for k, v in logs.items()}}
                   for i, e in enumerate(history_cb.epoch)]
    result = StageResult(stage.name, index, len(history), clock.seconds(),
                         best_train_loss(history, own), history)
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
        tmp = ckpt / f"tmp-stage-{index}-final.weights.h5"
        model.save_weights(str(tmp))
        os.replace(tmp, final_weights)
        _atomic_json(done_path, {"epochs": result.epochs, "seconds": result.seconds,
                                 "best_train_loss": result.best_train_loss})
    return result

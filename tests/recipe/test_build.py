"""Tests for deepkit.recipe.build: each recipe object is built once, as library objects."""

import collections
from pathlib import Path

import keras

from deepkit import cli
from deepkit.recipe import build, load, names
from deepkit.training import Alternation, Stage, previous_train_loss

RECIPE = """\
name: buildonce
seed: 3
data: {dataset: mnist_sample, flatten: true, limit: 200, validation: 100, batch_size: 50}
model:
  sequential:
    - Dropout: {rate: 0.2}
    - Dense: {units: 10, activation: softmax, kernel_constraint: {MaxNorm: {max_value: 2.0}}}
compile:
  optimizer: {SGD: {learning_rate: 0.1}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
fit:
  epochs: 1
  callbacks:
    - EarlyStopping: {monitor: val_accuracy, mode: max, patience: 2}
stages:
  - name: more
    merge_validation: true
    optimizer: {SGD: {learning_rate: 0.01}}
    epochs: 1
    until: {monitor: val_loss, target: previous_train_loss}
evaluate: {splits: [test]}
"""


def _recipe(tmp_path, text=RECIPE):
    path = Path(tmp_path) / "buildonce.yaml"
    path.write_text(text)
    return path


def test_a_run_builds_every_object_of_its_recipe_once(tmp_path, monkeypatch):
    built = collections.Counter()
    real = names.build

    def counting(kind, spec, **extra):
        built[spec.path] += 1
        return real(kind, spec, **extra)

    monkeypatch.setattr(names, "build", counting)
    path = _recipe(tmp_path)
    assert cli.main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    expected = ["model.sequential[0].Dropout", "model.sequential[1].Dense",
                "model.sequential[1].Dense.kernel_constraint.MaxNorm", "compile.optimizer.SGD",
                "compile.loss", "compile.metrics[0]",
                "fit.callbacks[0].EarlyStopping", "stages[0].optimizer.SGD"]
    assert sorted(built) == sorted(expected)
    assert all(n == 1 for n in built.values()), dict(built)


def test_objects_are_library_stages(tmp_path):
    recipe = load(_recipe(tmp_path))
    objects = build.objects(recipe, time_limit=5)
    assert [type(layer).__name__ for layer in objects.layers] == ["Dropout", "Dense"]
    assert objects.model is None
    main, more = objects.stages
    assert isinstance(main, Stage) and main.name == "main" and main.compile is None
    assert [type(c).__name__ for c in main.callbacks] == ["EarlyStopping", "TimeLimit"]
    assert more.until == ("val_loss", previous_train_loss)
    assert more.merge_validation
    assert isinstance(more.compile["optimizer"], keras.optimizers.SGD)
    assert more.compile["optimizer"] is not objects.compile["optimizer"]
    assert more.compile["loss"] is objects.compile["loss"]
    assert more.compile["jit_compile"] == recipe.jit_compile
    assert [type(c).__name__ for c in more.callbacks] == ["TimeLimit"]


def test_a_trainer_named_in_the_recipe_is_the_main_stages_trainer(tmp_path):
    text = RECIPE.replace("""  callbacks:
    - EarlyStopping: {monitor: val_accuracy, mode: max, patience: 2}
""", """  trainer: {Alternation: {expert_epochs: 2, seed: 5}}
""")
    recipe = load(_recipe(tmp_path, text))
    trainer = build.objects(recipe).stages[0].trainer
    assert isinstance(trainer, Alternation)
    assert (trainer.expert_epochs, trainer.seed) == (2, 5)

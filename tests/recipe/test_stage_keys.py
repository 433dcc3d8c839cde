"""The keys of guided and layer-wise pre-training in recipes: `trainable:`,
`frozen:`, `trainer:`, per-output `loss:` and `metrics:`, `batch_size:` and
`name:` in `fit:` and each stage, built into `deepkit.training.Stage`."""

import re
from pathlib import Path

import keras
import pytest

from deepkit.recipe import build, load, report
from deepkit.recipe.errors import RecipeError
from deepkit.training import DenoisingPretraining, ScheduledLoss

GUIDED = """\
name: guided
seed: 1
data: {dataset: pentomino, train_size: 40, validation: 20, test_size: 20, target: both, batch_size: 20}
model:
  StructuredMLP: {p1nn_units: [8], p2nn_units: [4], seed: 1}
compile:
  optimizer: {SGD: {learning_rate: 0.5}}
  loss: {hints: sparse_categorical_crossentropy, label: null}
  metrics: {hints: [accuracy], label: [accuracy]}
fit:
  name: hints
  epochs: 2
  batch_size: 4
  trainable: [p1nn]
stages:
  - name: label
    epochs: 3
    frozen: [p1nn]
    loss: {label: binary_crossentropy}
    metrics: {label: [accuracy]}
  - name: joint
    epochs: 1
    optimizer: {SGD: {learning_rate: 0.01}}
    loss:
      hints: {ScheduledLoss: {loss: sparse_categorical_crossentropy, weight: {LinearRamp: {initial_value: 1.0, final_value: 0.1, start_step: 0, end_step: 10}}}}
      label: binary_crossentropy
    loss_weights: {hints: 1.0, label: 2.0}
"""

LAYERWISE = """\
name: layerwise
seed: 1
data: {dataset: mnist_sample, flatten: true, limit: 100, validation: 50, batch_size: 25}
model:
  sequential:
    - Dense: {units: 16, activation: sigmoid, name: hidden_1}
    - Dense: {units: 10, activation: softmax}
compile:
  optimizer: {SGD: {learning_rate: 0.1}}
  loss: sparse_categorical_crossentropy
fit:
  epochs: 1
  trainer: {DenoisingPretraining: {layer: hidden_1, corruption: {MaskingCorruption: {rate: 0.25, seed: 1}}}}
stages:
  - name: finetune
    epochs: 1
    trainer: null
"""


def _load(tmp_path, text, **replace):
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = Path(tmp_path) / "recipe.yaml"
    path.write_text(text)
    return load(path)


def test_guided_stages_are_built_with_their_freezing_losses_and_batch_sizes(tmp_path):
    recipe = _load(tmp_path, GUIDED)
    built = build.objects(recipe)
    first, label, joint = built.stages
    assert (first.name, first.trainable, first.frozen, first.batch_size) == (
        "hints", ["p1nn"], None, 4)
    assert first.compile is None  # the recipe's compile section
    assert (label.trainable, label.frozen, label.batch_size) == (None, ["p1nn"], None)
    # A one-key mapping of an output name is per output, not a class name.
    assert label.compile["loss"] == {"label": "binary_crossentropy"}
    assert label.compile["metrics"] == {"label": ["accuracy"]}
    # No optimizer given: the recipe's optimizer built anew, not the first one.
    assert isinstance(label.compile["optimizer"], keras.optimizers.SGD)
    assert label.compile["optimizer"] is not built.compile["optimizer"]
    assert float(label.compile["optimizer"].learning_rate) == pytest.approx(0.5)
    assert isinstance(joint.compile["loss"]["hints"], ScheduledLoss)
    assert joint.compile["loss_weights"] == {"hints": 1.0, "label": 2.0}
    assert float(joint.compile["optimizer"].learning_rate) == pytest.approx(0.01)


def test_a_layerwise_stage_gets_its_trainer(tmp_path):
    recipe = _load(tmp_path, LAYERWISE)
    first, finetune = build.objects(recipe).stages
    assert isinstance(first.trainer, DenoisingPretraining)
    assert first.trainer.get_config()["layer"] == "hidden_1"
    assert finetune.trainer is None and finetune.compile is None


@pytest.mark.parametrize("replace, where, message", [
    ({"  trainable: [p1nn]\n": "  trainable: [p1nn]\n  frozen: [p2nn]\n"}, "fit",
     "give trainable .* or frozen, not both"),
    ({"    frozen: [p1nn]\n": "    frozen: []\n"}, r"stages\[0\]\.frozen",
     "expected a non-empty list of layer names"),
    ({"    frozen: [p1nn]\n": "    frozen: [p1nn]\n    batch_sise: 3\n"}, r"stages\[0\]",
     "batch_size"),
])
def test_bad_stage_keys_are_refused_with_their_place(tmp_path, replace, where, message):
    with pytest.raises(RecipeError, match=message) as caught:
        _load(tmp_path, GUIDED, **replace)
    assert re.search(where, str(caught.value.path)), caught.value


def test_errors_name_per_output_accuracies():
    metrics = report.derived_metrics({"test_hints_accuracy": 0.9, "test_label_accuracy": 0.75,
                                      "valid_accuracy": 0.6})
    assert metrics["test_hints_error"] == pytest.approx(0.1)
    assert metrics["test_label_error"] == pytest.approx(0.25)
    assert "test_error" not in metrics  # two accuracies: which one is ambiguous
    assert metrics["valid_error"] == pytest.approx(0.4)

"""deepkit.distribution.Scale: what a recipe's `distribution:` may say, and
what is refused before a run starts (with the key and the reason)."""

from pathlib import Path

import keras
import pytest

from deepkit.distribution import BACKENDS, KINDS, DistributionError, Scale
from deepkit.recipe import build, load
from deepkit.recipe.errors import RecipeError

RECIPE = """\
name: scaletest
seed: 1
data: {dataset: mnist_sample, flatten: true, limit: 100, validation: 50, batch_size: 20}
model:
  sequential:
    - Dense: {units: 10, activation: softmax}
compile:
  optimizer: {SGD: {learning_rate: 0.1}}
  loss: sparse_categorical_crossentropy
fit:
  epochs: 1
"""


def _load(tmp_path, extra):
    path = Path(tmp_path) / "scaletest.yaml"
    path.write_text(RECIPE + extra)
    return load(path)


def test_specs_are_read_as_kinds_or_kinds_with_options():
    assert Scale.from_spec(None).kind is None
    assert Scale.from_spec("mirrored").kind == "mirrored"
    scale = Scale.from_spec({"model_parallel": {"layout": {".*kernel": [None, "model"]},
                                                "mesh": {"batch": 1, "model": 2}}})
    assert scale.kind == "model_parallel" and scale.layout == {".*kernel": [None, "model"]}
    with pytest.raises(DistributionError, match="unknown kind 'mirored'; expected one of"):
        Scale("mirored")
    with pytest.raises(DistributionError, match=r"unknown options \['devises'\]"):
        Scale.from_spec({"data_parallel": {"devises": 2}})
    with pytest.raises(DistributionError, match="a layout is for model_parallel"):
        Scale("data_parallel", layout={".*": [None]})
    assert set(BACKENDS) == set(KINDS)


def test_a_kind_on_the_wrong_backend_names_its_counterpart():
    with pytest.raises(DistributionError, match="mirrored runs on the tensorflow backend, not "
                                                "jax; on jax the same is distribution: "
                                                "data_parallel"):
        Scale("mirrored").check_backend("jax")
    with pytest.raises(DistributionError, match="model_parallel runs on the jax backend, not "
                                                "tensorflow$"):
        Scale("model_parallel").check_backend("tensorflow")
    Scale("data_parallel").check_backend("torch")


def test_one_device_is_one_replica_with_the_whole_batch():
    scale = Scale()
    assert scale.replicas == 1 and scale.per_replica_batch(20) == 20 and scale.is_chief
    with scale.scope() as inside:
        assert inside is scale


def test_a_recipe_refuses_what_cannot_run_under_its_distribution(tmp_path):
    with pytest.raises(RecipeError, match="distribution: unknown kind 'mirroed'"):
        _load(tmp_path, "distribution: mirroed\n")
    other = "data_parallel" if keras.backend.backend() == "tensorflow" else "mirrored"
    recipe = _load(tmp_path, f"distribution: {other}\n")
    with pytest.raises(RecipeError, match=f"distribution: distribution {other} runs on the"):
        build.scale(recipe)
    mine = "mirrored" if keras.backend.backend() == "tensorflow" else "data_parallel"
    assert _load(tmp_path, f"distribution: {mine}\n").distribution == mine
    text = RECIPE.replace("fit:\n  epochs: 1\n",
                          "fit:\n  epochs: 1\n  trainer: {Alternation: {seed: 1}}\n")
    path = Path(tmp_path) / "trainer.yaml"
    path.write_text(text + f"distribution: {mine}\n")
    with pytest.raises(RecipeError, match=r"fit\.trainer: the trainer Alternation runs its "
                                          "own loop of fit calls"):
        build.scale(load(path))

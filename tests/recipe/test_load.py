"""Loading recipes: overrides, the smoke block, the frozen resolved recipe,
`deepkit show`, and every shipped recipe loading and validating."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from deepkit import cli
from deepkit.recipe import RecipeError, dump, load, read
from deepkit.recipe.loading import parse_override, resolve, set_path, split_path
from deepkit.recipe.schema import ObjectSpec, Recipe

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))

RECIPE = """\
# A small recipe for the loader's tests.
name: loadtest
seed: 4
data: {dataset: mnist_sample, flatten: true, validation: 500, batch_size: 50}
model:
  sequential:
    - Dropout: {rate: 0.2}
    - Maxout: {units: 12, pieces: 3, max_norm: 1.9365}
    - Dense: {units: 10, activation: softmax}
compile:
  optimizer: {SGD: {learning_rate: 0.1, momentum: 0.5}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
fit:
  epochs: 40
  callbacks:
    - EarlyStopping: {monitor: val_loss, patience: 5}
stages:
  - name: more
    merge_validation: true
    epochs: 7
    until: {monitor: val_loss, target: previous_train_loss}
reference: {source: "a paper", test_error: 0.01}
smoke: {fit.epochs: 1, data.limit: 300, "stages[0].epochs": 2}
"""


@pytest.fixture
def recipe_path(tmp_path):
    path = tmp_path / "loadtest.yaml"
    path.write_text(RECIPE)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fit.epochs=3", 3),
        ("a.b=-12", -12),
        ("a.b=0.25", 0.25),
        ("a.b=1e-3", 0.001),  # a number, although YAML 1.1 wants a dot
        ("a.b=-2.5E4", -25000.0),
        ("a.b=true", True),
        ("a.b=false", False),
        ("a.b=null", None),
        ("a.b=relu", "relu"),
        ("a.b=two words", "two words"),
        ('a.b="3"', "3"),  # quoted: a string
        ("a.b=x=y", "x=y"),  # only the first = splits
        ("a.b=[300, 300]", [300, 300]),  # flow list
        ("a.b={stddev: 0.1}", {"stddev": 0.1}),  # flow mapping
        ("a.b=2026-11-27", "2026-11-27"),  # a YAML date: kept as text
        ("a.b=[1, 2", "[1, 2"),  # not YAML: kept as text
    ],
)
def test_override_values_are_yaml_values(text, expected):
    path, value = parse_override(text)
    assert path == text.split("=", 1)[0]
    assert value == expected and type(value) is type(expected)


def test_override_without_equals_is_an_error():
    with pytest.raises(RecipeError, match="expected KEY.PATH=VALUE"):
        parse_override("fit.epochs")


def test_split_path_reads_keys_and_list_indices():
    assert split_path("a.b[2].c") == ["a", "b", 2, "c"]
    assert split_path("model.sequential[-1].Dense.units") == ["model", "sequential", -1, "Dense", "units"]
    assert split_path("stages[0][1].x") == ["stages", 0, 1, "x"]
    assert split_path("fit") == ["fit"]
    with pytest.raises(RecipeError, match="malformed key path"):
        split_path("a.[x")


def test_set_path_walks_mappings_and_lists():
    raw = {"a": {"b": [{"c": 1}, {"c": 2}, [10, 20]]}}
    set_path(raw, "a.b[1].c", 5, origin="t")
    set_path(raw, "a.b[2][0]", 11, origin="t")
    set_path(raw, "a.b[-1][1]", 21, origin="t")
    set_path(raw, "a.new", "added", origin="t")  # the last key may be new
    assert raw == {"a": {"b": [{"c": 1}, {"c": 5}, [11, 21]], "new": "added"}}
    with pytest.raises(RecipeError, match=r"t: no key 'a.x' in the recipe"):
        set_path(raw, "a.x.y", 1, origin="t")
    with pytest.raises(RecipeError, match=r"index \[3\] is out of range, a.b has 3 items"):
        set_path(raw, "a.b[3].c", 1, origin="t")
    with pytest.raises(RecipeError, match=r"a is not a list"):
        set_path(raw, "a[0]", 1, origin="t")
    with pytest.raises(RecipeError, match=r"a.b\[0\].c is not a mapping"):
        set_path(raw, "a.b[0].c.d", 1, origin="t")


def test_overrides_reach_nested_list_items(recipe_path):
    recipe = load(recipe_path, overrides=[
        "model.sequential[1].Maxout.units=7",
        "model.sequential[-1].Dense.activation=linear",
        "fit.callbacks[0].EarlyStopping.patience=2",
        "compile.optimizer.SGD.learning_rate=5e-2",
        "stages[0].merge_validation=false",
        "fit.shuffle=false",
        "seed=9",
    ])
    layers = recipe.model.sequential
    assert layers[1] == ObjectSpec("Maxout", {"units": 7, "pieces": 3, "max_norm": 1.9365},
                                   "model.sequential[1].Maxout")
    assert layers[2].config["activation"] == "linear"
    assert recipe.fit.callbacks[0].config == {"monitor": "val_loss", "patience": 2}
    assert recipe.compile.optimizer.config == {"learning_rate": 0.05, "momentum": 0.5}
    assert recipe.stages[0].merge_validation is False
    assert recipe.fit.shuffle is False
    assert recipe.seed == 9
    # the file itself is unchanged
    assert read(recipe_path) == yaml.safe_load(RECIPE)


def test_smoke_block_is_applied_before_overrides(recipe_path):
    plain = load(recipe_path)
    assert plain.fit.epochs == 40 and "limit" not in plain.data.options
    assert plain.stages[0].epochs == 7
    smoke = load(recipe_path, smoke=True)
    assert smoke.fit.epochs == 1
    assert smoke.data.options["limit"] == 300
    assert smoke.stages[0].epochs == 2
    both = load(recipe_path, overrides=["fit.epochs=3"], smoke=True)
    assert both.fit.epochs == 3 and both.data.options["limit"] == 300
    # resolve() works on a copy
    raw = read(recipe_path)
    resolved = resolve(raw, ["fit.epochs=2"], smoke=True)
    assert raw["fit"]["epochs"] == 40 and resolved["fit"]["epochs"] == 2


def test_resolved_recipe_is_frozen_dataclasses(recipe_path):
    recipe = load(recipe_path)
    assert isinstance(recipe, Recipe)
    for obj, field in [(recipe, "seed"), (recipe.data, "batch_size"), (recipe.fit, "epochs"),
                       (recipe.compile, "optimizer"), (recipe.model, "sequential"),
                       (recipe.model.sequential[0], "name"), (recipe.stages[0], "epochs"),
                       (recipe.evaluate, "splits")]:
        assert dataclasses.is_dataclass(obj)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, None)
    assert isinstance(recipe.model.sequential, tuple)
    assert isinstance(recipe.fit.callbacks, tuple)
    assert recipe.name == "loadtest" and recipe.seed == 4
    assert recipe.data.dataset == "mnist_sample" and recipe.data.batch_size == 50
    assert recipe.data.options == {"flatten": True, "validation": 500}
    assert [s.name for s in recipe.model.sequential] == ["Dropout", "Maxout", "Dense"]
    assert recipe.compile.loss == ObjectSpec("sparse_categorical_crossentropy", {}, "compile.loss")
    assert recipe.stages[0].until == {"monitor": "val_loss", "target": "previous_train_loss"}
    assert recipe.reference == {"source": "a paper", "test_error": 0.01}
    assert recipe.file == str(recipe_path)


def test_show_prints_the_resolved_recipe_as_yaml(recipe_path, capsys):
    args = ["--set", "fit.epochs=3", "--set", "model.sequential[1].Maxout.units=5"]
    assert cli.main(["show", str(recipe_path), *args, "--smoke"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"# {recipe_path}: valid (smoke)"
    shown = yaml.safe_load(out)
    recipe = load(recipe_path, overrides=args[1::2], smoke=True)
    assert shown == recipe.raw == yaml.safe_load(dump(recipe))
    assert shown["fit"]["epochs"] == 3 and shown["data"]["limit"] == 300
    assert shown["model"]["sequential"][1] == {"Maxout": {"units": 5, "pieces": 3, "max_norm": 1.9365}}
    # what show prints is itself a recipe that loads to the same thing
    again = recipe_path.parent / "shown.yaml"
    again.write_text(out)
    assert dataclasses.replace(load(again), file=None) == dataclasses.replace(recipe, file=None)


def test_there_are_shipped_recipes():
    assert "quickstart.yaml" in [p.name for p in SHIPPED]


# On the data fixtures (default run) and on the full data (marked `data`):
# validating checks that the recipe's data files exist under DEEPKIT_DATA.
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_recipe_loads_and_validates(path, any_data):
    recipe = load(path)
    assert recipe.name == path.stem, "a recipe's name is its file name"
    smoke = load(path, smoke=True)
    assert smoke.smoke, "every shipped recipe has a smoke: block"
    assert smoke.fit.epochs <= recipe.fit.epochs

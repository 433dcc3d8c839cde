"""Malformed recipes: `deepkit run` exits with status 2 and one message that
names the file, the key path and what was expected/found, with no traceback,
and writes and trains nothing (TARGETS.md, "Reliability")."""

import copy
import re

import keras
import pytest
import yaml
from rich.console import Console

from deepkit import cli
from deepkit.recipe.errors import RecipeError

BASE = {
    "name": "tiny",
    "seed": 1,
    "data": {"dataset": "mnist_sample", "flatten": True, "limit": 200, "batch_size": 50},
    "model": {
        "sequential": [
            {"Dense": {"units": 8, "activation": "relu"}},
            {"Maxout": {"units": 4, "pieces": 2}},
            {"Dense": {"units": 10, "activation": "softmax"}},
        ]
    },
    "compile": {
        "optimizer": {"SGD": {"learning_rate": 0.1, "momentum": 0.5}},
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
    },
    "fit": {"epochs": 1, "callbacks": [{"EarlyStopping": {"patience": 1}}]},
    "smoke": {"fit.epochs": 1},
}


def _edit(fn):
    def make():
        raw = copy.deepcopy(BASE)
        fn(raw)
        return yaml.safe_dump(raw, sort_keys=False)

    return make


def _layer(index, **changes):
    def fn(raw):
        (config,) = raw["model"]["sequential"][index].values()
        config.update(changes)

    return fn


def _set(section, **changes):
    return lambda raw: raw[section].update(changes)


def _text(text):
    return lambda: text


BASE_TEXT = _edit(lambda raw: None)

# id: (recipe text maker, extra CLI arguments, substrings the message must hold).
# Every message must also hold the file's path; "{file}" is not repeated here.
CASES = {
    "invalid_yaml": (
        _text("name: x\ndata: {dataset: [mnist,\nmodel: 3\n"),
        [],
        ["invalid YAML", "line "],
    ),
    "python_tag": (
        # the tag would run `touch` if the file were read with an unsafe loader
        _text("name: !!python/object/apply:os.system ['touch {pwned}']\n"),
        [],
        ["YAML tags", "python/object/apply:os.system", "not allowed"],
    ),
    "empty_file": (_text(""), [], ["the file is empty"]),
    "top_level_list": (
        _text("- Dense: {units: 3}\n- Dense: {units: 2}\n"),
        [],
        ["expected a mapping of recipe sections", "(list)"],
    ),
    "unknown_top_level_key": (
        _edit(lambda raw: raw.update(modle={"sequential": []})),
        [],
        ["modle: unknown key 'modle'", "did you mean model"],
    ),
    "missing_compile": (
        _edit(lambda raw: raw.pop("compile")),
        [],
        ["compile: missing required section 'compile'"],
    ),
    "unknown_layer": (
        _edit(lambda raw: raw["model"]["sequential"].__setitem__(1, {"Maxot": {"units": 4, "pieces": 2}})),
        [],
        ["model.sequential[1]", "unknown layer 'Maxot'", "did you mean Maxout"],
    ),
    "unknown_layer_argument": (
        _edit(_layer(1, peices=3)),
        [],
        ["model.sequential[1].Maxout.peices", "no argument 'peices'", "did you mean pieces"],
    ),
    "wrong_type_layer_argument": (
        _edit(_layer(1, pieces="five")),
        [],
        ["model.sequential[1].Maxout.pieces", "positive integer", "'five'"],
    ),
    "zero_pieces_rejected_by_layer": (
        _edit(_layer(1, pieces=0)),
        [],
        ["model.sequential[1].Maxout.pieces", "positive integer", "got 0"],
    ),
    "negative_max_norm_rejected_by_layer": (
        _edit(_layer(1, max_norm=-1.5)),
        [],
        ["model.sequential[1].Maxout.max_norm", "positive number", "-1.5"],
    ),
    "unknown_optimizer": (
        _edit(lambda raw: raw["compile"].update(optimizer={"Adamm": {"learning_rate": 0.1}})),
        [],
        ["compile.optimizer", "unknown optimizer 'Adamm'", "did you mean Adam"],
    ),
    "unknown_optimizer_argument": (
        _edit(lambda raw: raw["compile"].update(optimizer={"SGD": {"learning_rat": 0.1}})),
        [],
        ["compile.optimizer.SGD.learning_rat", "did you mean learning_rate"],
    ),
    "unknown_loss": (
        _edit(lambda raw: raw["compile"].update(loss="sparse_categorical_crossentropi")),
        [],
        ["compile.loss", "unknown loss", "did you mean sparse_categorical_crossentropy"],
    ),
    "unknown_metric": (
        _edit(lambda raw: raw["compile"].update(metrics=["accuracy", "acuracy"])),
        [],
        ["compile.metrics[1]", "unknown metric 'acuracy'; did you mean accuracy"],
    ),
    "unknown_callback": (
        _edit(lambda raw: raw["fit"].update(callbacks=[{"EarlyStoping": {"patience": 1}}])),
        [],
        ["fit.callbacks[0]", "unknown callback 'EarlyStoping'", "did you mean EarlyStopping"],
    ),
    "unknown_callback_argument": (
        _edit(lambda raw: raw["fit"].update(callbacks=[{"EarlyStopping": {"patiense": 1}}])),
        [],
        ["fit.callbacks[0].EarlyStopping.patiense", "did you mean patience"],
    ),
    "unknown_dataset": (
        _edit(_set("data", dataset="mnist_sampel")),
        [],
        ["data.dataset", "unknown data set 'mnist_sampel'", "did you mean mnist_sample"],
    ),
    "unknown_data_option": (
        _edit(_set("data", flaten=True)),
        [],
        ["data.flaten", "has no option 'flaten'", "did you mean flatten"],
    ),
    "wrong_type_data_option": (
        _edit(_set("data", flatten="yes")),
        [],
        ["data.flatten", "expected true or false", "'yes' (string)"],
    ),
    "wrong_type_data_limit": (
        _edit(_set("data", limit="all")),
        [],
        ["data", "limit", "'all'"],
    ),
    "data_validation_too_large": (
        _edit(_set("data", validation=10**6)),
        [],
        ["data", "validation=1000000", "[0, 5000)"],
    ),
    "bad_set_path": (
        BASE_TEXT,
        ["--set", "model.sequentail[0].x=1"],
        ["--set model.sequentail[0].x=1", "model.sequentail", "did you mean sequential"],
    ),
    "set_index_out_of_range": (
        BASE_TEXT,
        ["--set", "model.sequential[9].Dense.units=1"],
        ["--set model.sequential[9].Dense.units=1", "index [9] is out of range",
         "model.sequential has 3 items"],
    ),
    "set_wrong_type": (
        BASE_TEXT,
        ["--set", "fit.epochs=three"],
        ["fit.epochs", "expected an integer", "'three' (string)"],
    ),
    "wrong_type_epochs": (
        _edit(_set("fit", epochs="4")),
        [],
        ["fit.epochs", "expected an integer", "'4' (string)"],
    ),
    "zero_epochs": (
        _edit(_set("fit", epochs=0)),
        [],
        ["fit.epochs", "expected a positive integer", "found 0"],
    ),
    "unknown_fit_key": (
        _edit(_set("fit", epoch=3)),
        [],
        ["fit.epoch", "unknown key 'epoch'", "did you mean epochs"],
    ),
    "bad_smoke_path": (
        _edit(lambda raw: raw.update(smoke={"fitt.epochs": 1})),
        ["--smoke"],
        ["smoke.fitt.epochs", "no key 'fitt'", "did you mean fit"],
    ),
    "smoke_sets_unknown_key": (
        _edit(lambda raw: raw.update(smoke={"fit.epoch": 1})),
        ["--smoke"],
        ["fit.epoch", "unknown key 'epoch'", "did you mean epochs"],
    ),
    "empty_sequential": (
        _edit(lambda raw: raw["model"].update(sequential=[])),
        [],
        ["model.sequential", "at least one layer", "empty list"],
    ),
    "layer_config_not_a_mapping": (
        _edit(lambda raw: raw["model"]["sequential"].__setitem__(0, {"Dense": [8]})),
        [],
        ["model.sequential[0].Dense", "as a mapping", "[8] (list)"],
    ),
    "bad_stage_target": (
        _edit(lambda raw: raw.update(stages=[{"name": "more", "epochs": 1,
                                              "until": {"monitor": "val_loss", "target": "low"}}])),
        [],
        ["stages[0].until.target", "previous_train_loss", "'low' (string)"],
    ),
    "init_from_without_layers": (
        _edit(lambda raw: raw.update(init_from={"path": "runs/x"})),
        [],
        ["init_from", "layers"],
    ),
    "init_from_unnamed_layer": (
        # Checked when the recipe is read, before any source recipe runs.
        _edit(lambda raw: raw.update(init_from={"recipe": "other", "layers": ["nope"]})),
        [],
        ["init_from.layers[0]", "no layer of model.sequential is named 'nope'"],
    ),
    "init_from_empty_layers": (
        _edit(lambda raw: raw.update(init_from={"path": "runs/x", "layers": []})),
        [],
        ["init_from.layers", "non-empty list of layer names", "[] (list)"],
    ),
}


@pytest.fixture
def no_fit(monkeypatch):
    """Make any call of Model.fit or Model.evaluate fail the test."""
    calls = []

    def forbidden(self, *args, **kwargs):
        calls.append(self)
        raise AssertionError("a malformed recipe reached training")

    monkeypatch.setattr(keras.Model, "fit", forbidden)
    monkeypatch.setattr(keras.Model, "evaluate", forbidden)
    return calls


def _run_bad(path, extra, tmp_path, capsys, no_fit):
    run_dir = tmp_path / "run"
    status = cli.main(["run", str(path), "--run-dir", str(run_dir), *extra])
    out = capsys.readouterr()
    text = out.err + out.out
    assert status == cli.EXIT_BAD_RECIPE, text
    assert "Traceback" not in text
    assert text.startswith("error: ") and text.count("\n") == 1, text  # one message, one line
    assert not run_dir.exists(), "a malformed recipe created its run directory"
    assert not no_fit
    return text


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_recipe_exits_2_with_file_and_key_path(case, tmp_path, capsys, no_fit):
    make, extra, expected = CASES[case]
    pwned = tmp_path / "pwned"
    path = tmp_path / f"{case}.yaml"
    path.write_text(make().replace("{pwned}", str(pwned)))
    text = _run_bad(path, extra, tmp_path, capsys, no_fit)
    assert f"error: {path}: " in text, text
    for piece in expected:
        assert piece in text, f"{piece!r} not in {text!r}"
    assert not pwned.exists()
    assert list(tmp_path.iterdir()) == [path], "something was written beside the recipe"


def test_missing_data_files_name_deepkit_data_and_paths(tmp_path, capsys, no_fit, monkeypatch):
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("DEEPKIT_DATA", str(empty))
    raw = copy.deepcopy(BASE)
    raw["data"]["dataset"] = "mnist"
    path = tmp_path / "mnist.yaml"
    path.write_text(yaml.safe_dump(raw))
    text = _run_bad(path, [], tmp_path, capsys, no_fit)
    assert f"{path}: data.dataset: " in text
    assert f"DEEPKIT_DATA={empty}" in text
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert str(empty / "mnist" / name) in text
    assert list(empty.iterdir()) == []


def test_nonexistent_recipe_file(tmp_path, capsys, no_fit):
    path = tmp_path / "missing.yaml"
    text = _run_bad(path, [], tmp_path, capsys, no_fit)
    assert f"{path}: no such recipe file" in text


def test_show_rejects_a_malformed_recipe_too(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(CASES["unknown_layer"][0]())
    assert cli.main(["show", str(path)]) == cli.EXIT_BAD_RECIPE
    out = capsys.readouterr()
    assert out.out == ""
    assert "model.sequential[1]" in out.err and "Traceback" not in out.err


def test_the_message_is_one_line_on_a_wide_terminal(tmp_path, capsys, no_fit, monkeypatch):
    monkeypatch.setattr(cli, "console", Console(stderr=True, width=1000))
    path = tmp_path / "bad.yaml"
    path.write_text(CASES["unknown_layer_argument"][0]())
    assert cli.main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    (line,) = out.err.splitlines()
    assert line.startswith(
        f"error: {path}: model.sequential[1].Maxout.peices: Maxout has no argument "
        "'peices'; did you mean pieces? (arguments: activity_regularizer, ")
    assert line.endswith(", units, use_bias)")


def test_debug_shows_the_traceback(tmp_path, capsys, no_fit):
    path = tmp_path / "bad.yaml"
    path.write_text(CASES["zero_pieces_rejected_by_layer"][0]())
    with pytest.raises(RecipeError) as info:
        cli.main(["run", str(path), "--run-dir", str(tmp_path / "run"), "--debug"])
    assert info.value.file == str(path)
    assert info.value.path == "model.sequential[1].Maxout.pieces"
    assert re.search(r"pieces must be a positive integer, got 0", info.value.message)
    assert not (tmp_path / "run").exists()

"""The chain evaluation of GSN and DAE recipes: the smoke runs of the three
shipped generative recipes on the MNIST fixtures (metrics, results.json,
pictures, report), the Parzen number again from the saved model, `deepkit
sample` on a smoke run, and the errors of bad `evaluate:` options."""

import copy
import json
import math
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from deepkit import cli, datasets
from deepkit.metrics import parzen_log_likelihood
from deepkit.recipe import RecipeError, load, read
from deepkit.recipe import schema
from deepkit.recipe.report import paper_numbers

REPO = Path(__file__).resolve().parents[2]
FIXTURE_DATA = REPO / "tests" / "fixtures" / "data"
RECIPES = ("gsn_mnist", "dae_walkback_mnist", "dae_mnist")
METRICS = {"test_loss", "test_parzen_log_likelihood", "test_parzen_log_likelihood_se",
           "parzen_sigma", "test_csl_log_likelihood", "test_csl_log_likelihood_se",
           "nearest_distance_mean", "nearest_distance_median", "nearest_distance_min",
           "test_nearest_distance_mean"}
TILE = 29  # a 28 x 28 digit and one pixel of padding


def _size(path):
    with Image.open(path) as image:
        return image.mode, image.size


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """{recipe: (exit status, run dir)} of each recipe's smoke run on the fixtures."""
    folder = tmp_path_factory.mktemp("generative")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPKIT_DATA", str(FIXTURE_DATA))
        for name in RECIPES:
            run_dir = folder / name
            status = cli.main(["run", str(REPO / "recipes" / f"{name}.yaml"), "--smoke",
                               "--run-dir", str(run_dir)])
            runs[name] = status, run_dir
    return runs


@pytest.mark.parametrize("name", RECIPES)
def test_smoke_run_reports_the_chain_evaluation(smoke_runs, name):
    status, run_dir = smoke_runs[name]
    assert status == 0
    results = json.loads((run_dir / "results.json").read_text())
    metrics = results["metrics"]
    assert set(metrics) == METRICS
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["parzen_sigma"] == 0.2
    assert metrics["nearest_distance_min"] <= metrics["nearest_distance_median"]
    # The full recipe's paper numbers are among the metrics a run reports.
    assert set(paper_numbers(load(REPO / "recipes" / f"{name}.yaml",
                                  check_names=False).reference)) <= METRICS

    details = results["generative"]
    assert details["chain"]["samples"] == 40 and details["chain"]["start"] == "test"
    assert details["parzen"]["rows"] == 100 and details["parzen"]["sigma"] == 0.2
    assert details["csl"]["hidden_states"] == 40
    assert details["nearest"]["train_rows"] == 200
    assert len(details["nearest"]["picture_distances"]) == 6
    assert details["pictures"] == ["nearest_neighbours.png", "chain.png"]

    # 40 chain steps, 20 a row; 6 samples above their nearest images; the
    # SampleGrid of the smoke block: 2 chains x 4 steps.
    assert _size(run_dir / "chain.png") == ("L", (20 * TILE + 1, 2 * TILE + 1))
    assert _size(run_dir / "nearest_neighbours.png") == ("L", (6 * TILE + 1, 2 * TILE + 1))
    assert _size(run_dir / "samples_epoch_0001.png") == ("L", (4 * TILE + 1, 2 * TILE + 1))
    report = (run_dir / "report.md").read_text()
    assert "## Chain evaluation" in report
    assert "(nearest_neighbours.png)" in report and "Parzen window: sigma 0.2" in report


def test_the_saved_model_gives_the_reported_parzen_number(smoke_runs, fixture_data):
    _, run_dir = smoke_runs["gsn_mnist"]
    results = json.loads((run_dir / "results.json").read_text())
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    test = datasets.load("mnist", "test", flatten=True, limit=200)[0]
    samples = model.sample(1, 40, seed=1, initial=test[0])[0]
    estimate = parzen_log_likelihood(samples, test, 0.2)
    assert estimate.mean == pytest.approx(results["metrics"]["test_parzen_log_likelihood"],
                                          rel=1e-5)


def test_sample_command_writes_the_three_pictures(smoke_runs, fixture_data, tmp_path, capsys):
    _, run_dir = smoke_runs["gsn_mnist"]
    arguments = ["sample", str(run_dir), "--steps", "6", "--chains", "3", "--columns", "3",
                 "--seed", "4"]
    assert cli.main(arguments + ["--out", str(tmp_path / "a")]) == 0
    written = capsys.readouterr().out.split()
    names = ["sample_grid.png", "sample_inpainting.png", "sample_nearest.png"]
    assert written == [str(tmp_path / "a" / n) for n in names]
    # 3 chains x 3 steps; 3 digits: whole, top half, inpainted; samples over neighbours.
    assert _size(written[0]) == ("L", (3 * TILE + 1, 3 * TILE + 1))
    assert _size(written[1]) == ("L", (3 * TILE + 1, 3 * TILE + 1))
    assert _size(written[2]) == ("L", (3 * TILE + 1, 6 * TILE + 1))
    with Image.open(written[1]) as image:
        pixels = np.asarray(image)
    test = datasets.load("mnist", "test", flatten=True)[0][:3].reshape(3, 28, 28)
    # Row 2 shows the known top half and grey below; row 1 the whole digit.
    np.testing.assert_array_equal(pixels[1:29, 1:29], np.round(test[0] * 255))
    np.testing.assert_array_equal(pixels[TILE + 1:TILE + 15, 1:29], np.round(test[0, :14] * 255))
    assert (pixels[TILE + 15:TILE + 29, 1:29] == 128).all()
    # The same seed draws the same pictures.
    assert cli.main(arguments + ["--out", str(tmp_path / "b")]) == 0
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_sample_command_refuses_a_run_without_a_chain(smoke_runs, fixture_data, tmp_path,
                                                      capsys):
    assert cli.main(["sample", str(tmp_path)]) == cli.EXIT_BAD_INPUT
    assert "no model.keras" in capsys.readouterr().err
    _, run_dir = smoke_runs["gsn_mnist"]
    shutil.copy(run_dir / "recipe.yaml", tmp_path / "recipe.yaml")
    keras.Sequential([keras.Input((784,)), keras.layers.Dense(3)]).save(tmp_path / "model.keras")
    assert cli.main(["sample", str(tmp_path)]) == cli.EXIT_BAD_INPUT
    assert "holds a Sequential, not a GSN or DenoisingAutoencoder" in capsys.readouterr().err


def test_chain_evaluation_refused_before_training(fixture_data, tmp_path, capsys):
    recipe = str(REPO / "recipes" / "gsn_mnist.yaml")
    # sigma chosen on a validation split the data do not have
    status = cli.main(["run", recipe, "--smoke", "--run-dir", str(tmp_path / "a"),
                       "--set", "evaluate.parzen={sigmas: [0.1, 0.2]}"])
    assert status == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "evaluate.parzen.select_on" in err and "no valid split" in err
    assert not (tmp_path / "a").exists()
    # ... which it has with data.validation
    status = cli.main(["run", recipe, "--smoke", "--run-dir", str(tmp_path / "b"),
                       "--set", "evaluate.parzen={sigmas: [0.1, 0.2]}",
                       "--set", "data.validation=50", "--set", "evaluate.csl=null",
                       "--set", "evaluate.nearest=null"])
    assert status == 0
    details = json.loads((tmp_path / "b" / "results.json").read_text())["generative"]
    assert details["parzen"]["select_on"] == "valid"
    assert [s for s, _ in details["parzen"]["sigma_table"]] == [0.1, 0.2]
    best = max(details["parzen"]["sigma_table"], key=lambda row: row[1])[0]
    assert details["parzen"]["sigma"] == best
    # a model without a sampling chain
    tiny = copy.deepcopy(read(recipe))
    tiny.update(model={"sequential": [{"Dense": {"units": 784, "activation": "sigmoid"}}]},
                compile={"optimizer": "SGD", "loss": "binary_crossentropy"}, fit={"epochs": 1},
                smoke={"data.limit": 200})
    path = tmp_path / "dense.yaml"
    path.write_text(json.dumps(tiny))
    assert cli.main(["run", str(path), "--smoke", "--run-dir", str(tmp_path / "c")]) == 2
    assert "needs a model with a sampling chain" in capsys.readouterr().err


BASE = read(REPO / "recipes" / "gsn_mnist.yaml")


@pytest.mark.parametrize("evaluate, path, message", [
    ({"parzen": {"sigma": 0.2, "sigmas": [0.1]}}, "evaluate.parzen",
     "exactly one of 'sigma'.*found sigma and sigmas"),
    ({"parzen": {}}, "evaluate.parzen", "found neither"),
    ({"parzen": {"sigma": -1}}, "evaluate.parzen.sigma", "expected a positive number"),
    ({"parzen": {"sigma": "wide"}}, "evaluate.parzen.sigma", "expected a number"),
    ({"parzen": {"sigmas": []}}, "evaluate.parzen.sigmas", "at least one"),
    ({"parzen": {"sigmas": [0.1, 0]}}, r"evaluate.parzen.sigmas\[1\]", "positive number"),
    ({"parzen": {"sigmas": [0.1], "select_on": "test"}}, "evaluate.parzen.select_on",
     "chosen on the split it scores"),
    ({"parzen": {"sigma": 0.2, "select_on": "valid"}}, "evaluate.parzen.select_on",
     "'select_on' needs 'sigmas'"),
    ({"parzen": {"sigma": 0.2, "data": "tset"}}, "evaluate.parzen.data",
     "did you mean test"),
    ({"parzen": {"sigma": 0.2, "samples": 10}}, "evaluate.parzen.samples",
     "unknown key 'samples'"),
    ({"parzen": {"sigma": 0.2, "limit": 0}}, "evaluate.parzen.limit", "positive integer"),
    ({"chain": None}, "evaluate.chain", "scores the samples of a chain"),
    ({"chain": {"chains": 2}}, "evaluate.chain.steps", "missing required key 'steps'"),
    ({"chain": {"steps": 0}}, "evaluate.chain.steps", "positive integer"),
    ({"chain": {"steps": 10, "start": "nosie"}}, "evaluate.chain.start",
     "did you mean noise"),
    ({"parzen": None, "csl": None, "nearest": None}, "evaluate.chain", "nothing to feed"),
    ({"nearest": {"pictures": -1}}, "evaluate.nearest.pictures", "non-negative integer"),
    ({"csl": {"binarize": "yes"}}, "evaluate.csl.binarize", "true or false"),
    ({"sample": {}}, "evaluate.sample", "unknown key 'sample'"),
])
def test_bad_evaluate_options_name_the_key(evaluate, path, message):
    raw = copy.deepcopy(BASE)
    raw["evaluate"].update(evaluate)
    with pytest.raises(RecipeError, match=message) as info:
        schema.parse(raw, file="gsn_mnist.yaml")
    assert info.value.path == path.replace("\\", "")
    assert str(info.value).startswith(f"gsn_mnist.yaml: {info.value.path}: ")


def test_loss_null_is_the_models_own_loss():
    recipe = schema.parse(copy.deepcopy(BASE))
    assert recipe.compile.loss is None
    assert recipe.evaluate.parzen["sigma"] == 0.2 and recipe.evaluate.parzen["select_on"] is None
    assert recipe.evaluate.chain == {"steps": 10000, "chains": 1, "start": "test", "seed": 1}
    raw = copy.deepcopy(BASE)
    del raw["compile"]["loss"]
    with pytest.raises(RecipeError, match="missing required key 'loss'"):
        schema.parse(raw)

"""Running recipes: the run directory, exact resume after SIGKILL, NaN,
finished and foreign run directories, two-stage recipes."""

import csv
import json
import signal
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import yaml
from keras import ops

import deepkit
from deepkit import cli, datasets, export
from deepkit.recipe import dump, load, report
from runs import final_weights, finish_run, start_run

TINY = """\
name: runtest
description: a tiny maxout network for the runner's tests
seed: 2
data: {dataset: mnist_sample, flatten: true, limit: 300, validation: 500, batch_size: 50}
model:
  sequential:
    - Dropout: {rate: 0.2}
    - Maxout: {units: 16, pieces: 2, max_norm: 1.9365}
    - Dense: {units: 10, activation: softmax}
compile:
  optimizer: {SGD: {learning_rate: 0.1, momentum: 0.5}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
fit: {epochs: 2}
evaluate: {splits: [valid, test]}
reference: {source: "Goodfellow et al. 2013, Table 1", test_error: 0.0094}
"""


def _write(folder, name, text):
    path = Path(folder) / name
    path.write_text(text)
    return path


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _numbers(rows):
    """CSV rows as floats; Keras' CSVLogger writes NA for absent val_ columns."""
    return [{k: float("nan") if v == "NA" else float(v) for k, v in row.items()} for row in rows]


def _test_split(limit):
    return datasets.load("mnist_sample", "test", flatten=True, limit=limit)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished run of TINY: (recipe path, run dir, exit status, argv)."""
    folder = tmp_path_factory.mktemp("finished")
    path = _write(folder, "runtest.yaml", TINY)
    run_dir = folder / "run"
    argv = ["run", str(path), "--run-dir", str(run_dir)]
    status = cli.main(argv)
    return path, run_dir, status, argv


@pytest.fixture
def no_fit(monkeypatch):
    calls = []

    def forbidden(self, *args, **kwargs):
        calls.append(self)
        raise AssertionError("fit was called")

    monkeypatch.setattr(keras.Model, "fit", forbidden)
    return calls


# -- (a) the run directory ---------------------------------------------------


def test_run_directory_holds_everything(finished_run):
    path, run_dir, status, argv = finished_run
    assert status == 0
    assert (run_dir / "recipe.yaml").read_text() == dump(load(path))

    env = json.loads((run_dir / "env.json").read_text())
    assert env["deepkit"] == deepkit.__version__
    assert env["keras"] == keras.__version__
    assert env["backend"] == keras.backend.backend()
    framework = {"tensorflow": "tensorflow", "jax": "jax"}[keras.backend.backend()]
    assert env["frameworks"] == {framework: __import__(framework).__version__}
    assert env["devices"] and all(isinstance(d, str) for d in env["devices"])
    assert env["seed"] == 2
    assert env["command"] == ["deepkit", *argv]
    assert "resumed" not in env

    history = _rows(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in history] == [0, 1]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history[0])
    assert all(np.isfinite(v) for r in _numbers(history) for v in r.values())

    meta = json.loads((run_dir / "checkpoints/stage-0/training_metadata.json").read_text())
    assert meta["epoch"] == 2
    assert sorted(p.name for p in (run_dir / "checkpoints/stage-0").iterdir()) == [
        meta["weights"], "training_metadata.json"]
    assert (run_dir / "checkpoints/stage-0-final.weights.h5").exists()
    assert json.loads((run_dir / "checkpoints/stage-0.json").read_text())["epochs"] == 2

    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "finished"
    assert results["name"] == "runtest" and results["epochs"] == 2
    metrics = results["metrics"]
    assert set(metrics) == {"valid_loss", "valid_accuracy", "valid_error",
                            "test_loss", "test_accuracy", "test_error"}
    assert metrics["test_error"] == pytest.approx(1 - metrics["test_accuracy"])
    assert results["reference"] == {"source": "Goodfellow et al. 2013, Table 1", "test_error": 0.0094}

    # the saved model loads in safe mode and scores what results.json says
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    assert [type(layer).__name__ for layer in model.layers] == ["Dropout", "Maxout", "Dense"]
    x, y = _test_split(300)
    scores = model.evaluate(x, y, batch_size=50, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert scores["loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)

    md = (run_dir / "report.md").read_text()
    assert "| metric | this run | paper | delta |" in md
    error = metrics["test_error"]
    assert (f"| test_error | {100 * error:.2f}% | 0.94% | {100 * (error - 0.0094):+.2f} pp |"
            in md)
    assert f"| test_accuracy | {metrics['test_accuracy']:.4g} | — | — |" in md
    assert f"- backend: {keras.backend.backend()}" in md


HARD_KILL = """\
name: hardkill
seed: 4
data: {dataset: mnist_sample, flatten: true, limit: 600, validation: 100, batch_size: 10}
model:
  HardParallelMixture: {num_experts: 3, expert_units: 8, num_classes: 10, gater_units: 4, seed: 4}
compile:
  optimizer: {SGD: {learning_rate: 0.1}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
fit:
  epochs: 4
  trainer: {Alternation: {seed: 4}}
  callbacks:
    - EarlyStopping: {monitor: val_loss, patience: 3}
    - KillAt: {epoch: 2, batch: LAST_BATCH}
evaluate: {splits: [test]}
"""


def test_killed_hard_mixture_run_resumes_to_the_same_result(tmp_path):
    # The Alternation trainer is its own loop over fit calls (one round per
    # epoch, reported as one pass of batches); the runner's backup must
    # resume it exactly.
    x, _ = datasets.load("mnist_sample", "train", flatten=True, limit=600, validation=100)
    last_batch = -(-len(x) // 10) - 1
    recipe = _write(tmp_path, "hardkill.yaml", HARD_KILL.replace("LAST_BATCH", str(last_batch)))
    resumed, fresh = tmp_path / "resumed", tmp_path / "fresh"
    killed_process = _start(recipe, resumed, kill=True)
    fresh_process = _start(recipe, fresh, kill=False)
    code, log = _finish(killed_process)
    assert code == -signal.SIGKILL, log
    assert [int(r["epoch"]) for r in _rows(resumed / "history.csv")] == [0, 1]
    code, log = _finish(_start(recipe, resumed, kill=False))
    assert code == 0, log
    assert "resuming the run in" in log
    assert [line.split(":")[0] for line in log.splitlines() if line.startswith("epoch ")] == [
        "epoch 3/4", "epoch 4/4"], log
    code, log = _finish(fresh_process)
    assert code == 0, log
    history = _numbers(_rows(resumed / "history.csv"))
    assert "reassigned" in history[0]
    np.testing.assert_array_equal(
        [list(r.values()) for r in history],
        [list(r.values()) for r in _numbers(_rows(fresh / "history.csv"))])
    results = json.loads((resumed / "results.json").read_text())["metrics"]
    fresh_results = json.loads((fresh / "results.json").read_text())["metrics"]
    assert results == fresh_results
    weights = [deepkit.load_model(d / "model.keras").get_weights() for d in (resumed, fresh)]
    np.testing.assert_array_equal(np.concatenate([np.ravel(w) for w in weights[0]]),
                                  np.concatenate([np.ravel(w) for w in weights[1]]))


# -- (d) finished and foreign run directories ---------------------------------


def test_finished_run_directory_prints_the_report_without_training(finished_run, capsys, no_fit):
    path, run_dir, status, argv = finished_run
    assert status == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    # rich wraps at the console width; a long temporary path moves the break
    assert "is already finished; its report:" in " ".join(captured.err.split())
    # the report is a result: stdout; progress and notes: stderr
    assert "test_error" in captured.out and "0.94%" in captured.out
    assert "test_error" not in captured.err
    assert not no_fit
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_run_directory_of_another_recipe_is_refused(finished_run, capsys, no_fit):
    path, run_dir, status, argv = finished_run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cli.main(argv + ["--set", "fit.epochs=3"]) == cli.EXIT_BAD_RECIPE
    err = capsys.readouterr().err
    assert err.startswith(f"error: the run directory {run_dir} holds a different recipe")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not no_fit
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


# -- (b) kill with SIGKILL, resume, compare with an uninterrupted run ---------

KILL = """\
name: killtest
seed: 3
data: {dataset: mnist_sample, flatten: true, limit: 600, validation: 100, batch_size: 50}
model:
  sequential:
    - Dense: {units: 32, activation: relu}
    - Dropout: {rate: 0.3}
    - Dense: {units: 10, activation: softmax}
compile:
  optimizer: {SGD: {learning_rate: 0.05, momentum: 0.9}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
fit:
  epochs: 4
  shuffle: true
  callbacks:
    # its state is checkpointed with the weights (that the state changes the
    # resumed decisions is tested in tests/callbacks/test_backup.py)
    - AnnealOnPlateau: {monitor: val_loss, patience: 1, tolerance: 0.0}
    - KillAt: {epoch: 2, batch: 3}
evaluate: {splits: [test]}
"""

def _start(recipe, run_dir, kill):
    return start_run("killer", recipe, run_dir, {"DEEPKIT_TEST_KILL": "1"} if kill else None)


def _finish(process):
    code, out, err = finish_run(process)
    return code, out + err


_weights = final_weights


def test_killed_run_resumes_to_the_same_result(tmp_path):
    recipe = _write(tmp_path, "killtest.yaml", KILL)
    resumed, fresh = tmp_path / "resumed", tmp_path / "fresh"

    # run 1 (killed in epoch 3) and run 3 (uninterrupted) side by side
    killed_process = _start(recipe, resumed, kill=True)
    fresh_process = _start(recipe, fresh, kill=False)
    code, log = _finish(killed_process)
    assert code == -signal.SIGKILL, log
    # killed after batch 4 of epoch 3: two epochs logged and checkpointed
    killed_history = _rows(resumed / "history.csv")
    assert [int(r["epoch"]) for r in killed_history] == [0, 1]
    meta = json.loads((resumed / "checkpoints/stage-0/training_metadata.json").read_text())
    assert meta["epoch"] == 2
    assert sorted(p.name for p in (resumed / "checkpoints/stage-0").iterdir()) == sorted([
        meta["callback_arrays"], meta["weights"], "training_metadata.json"])
    assert meta["callbacks"][0]["best_epoch"] in (0, 1)
    assert not (resumed / "results.json").exists() and not (resumed / "model.keras").exists()

    # run 2: the same command in the same run directory, without the kill
    code, log = _finish(_start(recipe, resumed, kill=False))
    assert code == 0, log
    assert "resuming the run in" in log
    epochs_trained = [line.split(":")[0] for line in log.splitlines() if line.startswith("epoch ")]
    assert epochs_trained == ["epoch 3/4", "epoch 4/4"], log  # epochs 1-2 not retrained

    code, log = _finish(fresh_process)
    assert code == 0, log

    env = json.loads((resumed / "env.json").read_text())
    assert len(env["resumed"]) == 1 and env["resumed"][0]["backend"] == keras.backend.backend()
    assert "resumed" not in json.loads((fresh / "env.json").read_text())

    history = _rows(resumed / "history.csv")
    fresh_history = _rows(fresh / "history.csv")
    assert [int(r["epoch"]) for r in history] == [0, 1, 2, 3]
    assert history[:2] == killed_history  # the epochs before the kill were kept as logged
    # exactly equal: same seed, same per-epoch random state, same arithmetic
    np.testing.assert_array_equal(
        [list(r.values()) for r in _numbers(history)],
        [list(r.values()) for r in _numbers(fresh_history)])

    results = json.loads((resumed / "results.json").read_text())
    fresh_results = json.loads((fresh / "results.json").read_text())
    assert results["status"] == fresh_results["status"] == "finished"
    assert set(results["metrics"]) == set(fresh_results["metrics"]) == {
        "test_loss", "test_accuracy", "test_error"}
    for key, value in fresh_results["metrics"].items():
        np.testing.assert_array_equal(results["metrics"][key], value, err_msg=key)

    weights, fresh_weights = _weights(resumed), _weights(fresh)
    assert len(weights) == len(fresh_weights) == 4
    for w, f in zip(weights, fresh_weights):
        np.testing.assert_array_equal(w, f)
    # training happened: the comparison is not between untrained models
    assert float(history[3]["loss"]) < float(history[0]["loss"])


# -- (c) a loss that becomes NaN ----------------------------------------------


class NaNAfter(keras.layers.Layer):
    """Passes its input through, plus NaN from training call `calls + 1` on."""

    def __init__(self, calls, **kwargs):
        super().__init__(**kwargs)
        self.calls = calls

    def build(self, input_shape):
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                     name="count")

    def call(self, inputs, training=False):
        if training:
            self.count.assign(self.count + 1.0)
        poison = ops.where(self.count > self.calls, float("nan"), 0.0)
        return inputs + ops.cast(poison, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "calls": self.calls}


@pytest.fixture
def nan_layer(monkeypatch):
    """`NaNAfter` in deepkit's registry for this test only."""
    monkeypatch.setitem(export._REGISTRY, "NaNAfter", NaNAfter)


def test_nan_loss_stops_with_status_3_and_keeps_the_last_good_checkpoint(tmp_path, capsys, nan_layer):
    raw = yaml.safe_load(TINY)
    raw["data"].pop("validation")
    raw["fit"]["epochs"] = 4
    # 300 examples in batches of 50: 6 steps per epoch; step 9 is batch 3 of epoch 2
    raw["model"]["sequential"].insert(2, {"NaNAfter": {"calls": 8}})
    path = _write(tmp_path, "nan.yaml", yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == cli.EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert line.startswith("stopped: the loss became NaN at epoch 2, batch 3 of stage 0 (main); "
                           "the run stopped; the last good checkpoint (end of epoch 1) is kept in ")
    assert line.endswith(str(run_dir / "checkpoints" / "stage-0"))

    history = _rows(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in history] == [0, 1]
    assert np.isfinite(float(history[0]["loss"])) and np.isnan(float(history[1]["loss"]))
    folder = run_dir / "checkpoints/stage-0"
    meta = json.loads((folder / "training_metadata.json").read_text())
    assert meta["epoch"] == 1
    assert sorted(p.name for p in folder.iterdir()) == [meta["weights"], "training_metadata.json"]
    arrays = []
    with h5py.File(folder / meta["weights"], "r") as f:
        f.visititems(lambda name, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    assert len(arrays) >= 4  # kernels, biases, optimizer state
    assert all(np.all(np.isfinite(a)) for a in arrays if np.issubdtype(np.asarray(a).dtype, np.number))
    assert not (run_dir / "model.keras").exists()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "diverged" and "NaN" in results["message"]


# -- (e) two stages -----------------------------------------------------------


def test_two_stage_recipe_writes_a_second_history(tmp_path):
    raw = yaml.safe_load(TINY)
    raw["stages"] = [{"name": "more", "merge_validation": True, "epochs": 3,
                      "until": {"monitor": "val_loss", "target": "previous_train_loss"}}]
    path = _write(tmp_path, "two.yaml", yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0

    first = _rows(run_dir / "history.csv")
    second = _rows(run_dir / "history-1-more.csv")
    assert [int(r["epoch"]) for r in first] == [0, 1]
    assert second, "stage 2 trained no epoch"
    results = json.loads((run_dir / "results.json").read_text())
    assert [s["stage"] for s in results["stages"]] == ["main", "more"]
    assert results["epochs"] == 2 + len(second)
    target = results["stages"][0]["best_train_loss"]
    assert target == pytest.approx(float(first[-1]["loss"]))
    val_losses = [float(r["val_loss"]) for r in second]
    # stage 2 stops at the first epoch whose val_loss reaches stage 1's train loss
    # Stage 2 stops at the first epoch whose val_loss reaches stage 1's train
    # loss, or after its 3 epochs: the length is exactly that.
    reached = [i for i, v in enumerate(val_losses) if v <= target]
    assert len(second) == (reached[0] + 1 if reached else 3)
    assert (run_dir / "checkpoints/stage-1.json").exists()
    assert (run_dir / "model.keras").exists()
    assert report.load_results(run_dir)["status"] == "finished"


@pytest.mark.parametrize("option, expected", [(None, 50), (250, 250)])
def test_validation_batch_size_defaults_to_the_training_batch(tmp_path, monkeypatch, option,
                                                              expected):
    raw = yaml.safe_load(TINY)
    raw["fit"]["epochs"] = 1
    if option is not None:
        raw["fit"]["validation_batch_size"] = option
    path = _write(tmp_path, "vbs.yaml", yaml.safe_dump(raw))
    seen = []
    original = keras.Model.fit

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("validation_batch_size"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    assert cli.main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    assert seen == [expected]
    rows = _rows(tmp_path / "run" / "history.csv")
    assert len(rows) == 1 and float(rows[0]["val_loss"]) > 0


def _named_tiny(units=16):
    raw = yaml.safe_load(TINY)
    raw["fit"]["epochs"] = 1
    raw["model"]["sequential"][1] = {"Maxout": {"name": "hidden", "units": units, "pieces": 2}}
    raw["model"]["sequential"][2] = {"Dense": {"name": "out", "units": 10,
                                               "activation": "softmax"}}
    return raw


def test_init_from_copies_the_named_layers_of_a_finished_run(tmp_path, monkeypatch):
    source_dir = tmp_path / "source"
    path = _write(tmp_path, "source.yaml", yaml.safe_dump(_named_tiny()))
    assert cli.main(["run", str(path), "--run-dir", str(source_dir)]) == 0
    source = keras.saving.load_model(str(source_dir / "model.keras"))

    raw = _named_tiny()
    raw["name"] = "target"
    raw["init_from"] = {"path": str(source_dir), "layers": ["hidden"]}
    path = _write(tmp_path, "target.yaml", yaml.safe_dump(raw))
    seen = {}
    original = keras.Model.fit

    def spy(self, *args, **kwargs):
        seen.setdefault("hidden", [w.copy() for w in self.get_layer("hidden").get_weights()])
        seen.setdefault("out", [w.copy() for w in self.get_layer("out").get_weights()])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    assert cli.main(["run", str(path), "--run-dir", str(tmp_path / "target")]) == 0
    # Before training: "hidden" holds the source's weights, "out" does not.
    for got, want in zip(seen["hidden"], source.get_layer("hidden").get_weights()):
        np.testing.assert_array_equal(got, want)
    assert not np.allclose(seen["out"][0], source.get_layer("out").get_weights()[0])


def test_init_from_a_recipe_runs_it_first_inside_the_run_directory(tmp_path, monkeypatch):
    # The source recipe (found beside the target) runs in
    # <run>/init_from/<name>, with its `set` overrides; the target starts
    # from its layer, and its results and report name the source run.
    source_raw = _named_tiny()
    source_raw["name"] = "pretrain"
    _write(tmp_path, "pretrain.yaml", yaml.safe_dump(source_raw))
    raw = _named_tiny()
    raw["name"] = "target"
    raw["init_from"] = {"recipe": "pretrain", "set": ["fit.epochs=2"], "layers": ["hidden"]}
    path = _write(tmp_path, "target.yaml", yaml.safe_dump(raw))
    seen = []
    original = keras.Model.fit

    def spy(self, *args, **kwargs):
        seen.append([w.copy() for w in self.get_layer("hidden").get_weights()])
        out.append([w.copy() for w in self.get_layer("out").get_weights()])
        return original(self, *args, **kwargs)

    out = []
    monkeypatch.setattr(keras.Model, "fit", spy)
    run_dir = tmp_path / "target"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0
    source_dir = run_dir / "init_from" / "pretrain"
    # The same target started from the finished source by path begins from
    # the same weights and ends with the same metrics: running the source
    # first does not change the target's random draws.
    raw_by_path = dict(raw, init_from={"path": str(source_dir), "layers": ["hidden"]})
    by_path = _write(tmp_path, "by_path.yaml", yaml.safe_dump(raw_by_path))
    assert cli.main(["run", str(by_path), "--run-dir", str(tmp_path / "by_path")]) == 0
    for got, want in zip(out[1], out[2]):
        np.testing.assert_array_equal(got, want)
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert json.loads((tmp_path / "by_path" / "results.json").read_text())["metrics"] == metrics
    del seen[2:], out[2:]
    assert len(_rows(source_dir / "history.csv")) == 2          # the `set` override
    source = keras.saving.load_model(str(source_dir / "model.keras"))
    assert len(seen) == 2                                       # source fit, then target fit
    for got, want in zip(seen[1], source.get_layer("hidden").get_weights()):
        np.testing.assert_array_equal(got, want)
    results = json.loads((run_dir / "results.json").read_text())
    source_results = json.loads((source_dir / "results.json").read_text())
    assert results["init_from"]["recipe"] == "pretrain"
    assert results["init_from"]["metrics"] == source_results["metrics"]
    assert results["init_from"]["epochs"] == 2
    assert "initialized from a run of pretrain" in (run_dir / "report.md").read_text()

    # A target killed after the source finished (before its own run began)
    # reuses the finished source.
    import shutil
    for entry in run_dir.iterdir():
        if entry.name != "init_from":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    seen.clear()
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0
    assert len(seen) == 1 and len(_rows(source_dir / "history.csv")) == 2


@pytest.mark.parametrize("init, message, where", [
    ({"recipe": "nope"}, "no recipe 'nope' beside", "init_from.recipe"),
    ({"recipe": "target"}, "'target' initializes from itself through init_from "
     "(target -> target)", "init_from.recipe"),
    ({"recipe": "broken"}, "the source recipe", "init_from.recipe"),
    ({"recipe": "pretrain", "path": "runs/x"}, "expected exactly one of 'path'", "init_from"),
    ({"path": "runs/x", "set": ["seed=3"]}, "'set' (overrides of the source recipe) needs "
     "'recipe'", "init_from.set"),
    ({"recipe": "pretrain", "set": ["seed"]}, "expected KEY.PATH=VALUE text",
     "init_from.set[0]"),
])
def test_bad_init_from_recipe_is_a_recipe_error(tmp_path, capsys, monkeypatch, init, message,
                                                where):
    _write(tmp_path, "pretrain.yaml", yaml.safe_dump(_named_tiny()))
    broken = _named_tiny()
    broken["fit"]["epochs"] = "many"
    _write(tmp_path, "broken.yaml", yaml.safe_dump(broken))
    raw = _named_tiny()
    raw["name"] = "target"
    raw["init_from"] = dict(init, layers=["hidden"])
    path = _write(tmp_path, "target.yaml", yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err and where in err and "Traceback" not in err, err
    assert not run_dir.exists()


@pytest.mark.parametrize("change, message, where", [
    ({"path": "nowhere"}, "no trained model at nowhere: expected the directory", "init_from.path"),
    ({"layers": ["hiden"]}, "no layer of model.sequential is named 'hiden'; give the layer "
     "`name: hiden`", "init_from.layers[0]"),
    ({"units": 8}, "has weights of shapes", "init_from.layers[0]"),
    ({"out_name": "head", "layers": ["hidden", "head"]},
     "the model in {source}/model.keras has no layer 'head'; its layers: ", "init_from.layers[1]"),
    ({"path": "broken.keras"}, "could not load the model in broken.keras: ", "init_from.path"),
])
def test_bad_init_from_is_a_recipe_error_and_writes_nothing(tmp_path, capsys, monkeypatch,
                                                            change, message, where):
    source_dir = tmp_path / "source"
    path = _write(tmp_path, "source.yaml", yaml.safe_dump(_named_tiny()))
    assert cli.main(["run", str(path), "--run-dir", str(source_dir)]) == 0
    capsys.readouterr()
    raw = _named_tiny(units=change.get("units", 16))
    if "out_name" in change:
        raw["model"]["sequential"][2]["Dense"]["name"] = change["out_name"]
    (tmp_path / "broken.keras").write_bytes(b"not a zip file")
    message = message.format(source=source_dir)
    raw["name"] = "target"
    raw["init_from"] = {"path": change.get("path", str(source_dir)),
                        "layers": change.get("layers", ["hidden"])}
    path = _write(tmp_path, "target.yaml", yaml.safe_dump(raw))
    run_dir = tmp_path / "target"
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err and where in err and "Traceback" not in err
    assert not run_dir.exists()


def test_init_from_a_recipe_parsed_without_its_source_is_a_clear_error(tmp_path):
    # schema.parse alone does not load the source recipe (load.load does);
    # the runner says so instead of failing on a missing path.
    from deepkit.recipe import schema
    from deepkit.recipe.errors import RecipeError
    from deepkit.recipe.runner import Runner

    raw = _named_tiny()
    raw["init_from"] = {"recipe": "pretrain", "layers": ["hidden"]}
    recipe = schema.parse(raw, file="target.yaml")
    assert recipe.init_source is None
    with pytest.raises(RecipeError, match="not loaded"):
        Runner(recipe, tmp_path / "run").run()
    assert not (tmp_path / "run").exists()

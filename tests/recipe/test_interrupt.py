"""Ctrl-C during a run: a real SIGINT at several moments (compilation, mid
epoch, inside a checkpoint write, twice, from outside), then a resume that
ends with the same history and weights as an uninterrupted run."""

import csv
import json
import signal
import time

import numpy as np
import pytest

from runs import final_weights, finish_run, start_run

RECIPE = """\
name: ctrlc
seed: 5
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
  epochs: 3
  callbacks:
    - EarlyStopping: {monitor: val_loss, patience: 5}
    - InterruptAt: {}
evaluate: {splits: [test]}
"""

def _start(recipe, run_dir, moment=None):
    return start_run("interrupter", recipe, run_dir,
                     {"DEEPKIT_TEST_SIGINT": moment} if moment else None)


_finish = finish_run


def _rows(path):
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


_weights = final_weights


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctrlc")
    recipe = folder / "ctrlc.yaml"
    recipe.write_text(RECIPE)
    code, out, err = _finish(_start(recipe, folder / "fresh"))
    assert code == 0, err
    return recipe, folder / "fresh"


def _assert_stopped(code, out, err, run_dir):
    """Exit 130, one line that says how to resume, no traceback."""
    assert code == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    stopped = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1, err
    assert "resume with: deepkit run" in stopped[0], stopped
    assert f"--run-dir {run_dir}" in stopped[0]
    assert not (run_dir / "results.json").exists() and not (run_dir / "model.keras").exists()
    # nothing half-written is left where a checkpoint is read from
    meta = run_dir / "checkpoints" / "stage-0" / "training_metadata.json"
    if meta.exists():
        named = json.loads(meta.read_text())["weights"]
        assert (meta.parent / named).is_file()
    return stopped[0]


def _assert_resumes_to_the_same_run(recipe, run_dir, fresh):
    code, out, err = _finish(_start(recipe, run_dir))
    assert code == 0, err
    assert "resuming the run in" in err
    history, expected = _rows(run_dir / "history.csv"), _rows(fresh / "history.csv")
    assert [r["epoch"] for r in history] == [0, 1, 2]
    np.testing.assert_array_equal([list(r.values()) for r in history],
                                  [list(r.values()) for r in expected])
    for got, want in zip(_weights(run_dir), _weights(fresh)):
        np.testing.assert_array_equal(got, want)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"] == json.loads((fresh / "results.json").read_text())["metrics"]


@pytest.mark.parametrize("moment, epochs_logged, where", [
    ("batch_begin:0:0:1", 0, "epoch 1, batch 1"),   # while the first step compiles
    ("batch_end:1:4:1", 1, "epoch 2, batch 5"),     # mid epoch
    ("checkpoint:0:1", 1, "epoch 2"),               # inside the checkpoint write
], ids=["compilation", "mid_epoch", "checkpoint_write"])
def test_ctrl_c_stops_cleanly_and_resumes_identically(setup, tmp_path, moment, epochs_logged,
                                                      where):
    recipe, fresh = setup
    run_dir = tmp_path / "run"
    line = _assert_stopped(*_finish(_start(recipe, run_dir, moment)), run_dir)
    assert f"at {where}" in line, line
    logged = _rows(run_dir / "history.csv") if (run_dir / "history.csv").exists() else []
    assert len(logged) == epochs_logged
    if epochs_logged:
        # the checkpoint of the last whole epoch is kept, and named
        meta = json.loads((run_dir / "checkpoints/stage-0/training_metadata.json").read_text())
        assert meta["epoch"] == epochs_logged
        assert f"end of epoch {epochs_logged}" in line
    else:
        assert "no checkpoint yet" in line
    _assert_resumes_to_the_same_run(recipe, run_dir, fresh)


def test_second_ctrl_c_stops_at_once(setup, tmp_path):
    recipe, fresh = setup
    run_dir = tmp_path / "run"
    code, out, err = _finish(_start(recipe, run_dir, "batch_end:1:2:2"))
    line = _assert_stopped(code, out, err, run_dir)
    # the second signal raised at once, inside the handler, not at the next
    # batch boundary (which would name the epoch and batch)
    assert line.startswith("stopped: interrupted by Ctrl-C; resume with:"), line
    _assert_resumes_to_the_same_run(recipe, run_dir, fresh)


def test_ctrl_c_from_outside_after_the_first_epoch(setup, tmp_path):
    recipe, fresh = setup
    run_dir = tmp_path / "run"
    process = _start(recipe, run_dir)
    history = run_dir / "history.csv"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if history.exists() and history.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    code, out, err = _finish(process)
    if code == 0:  # the run finished before the signal arrived: nothing to test
        pytest.fail("the run ended before SIGINT was sent; make it longer")
    _assert_stopped(code, out, err, run_dir)
    _assert_resumes_to_the_same_run(recipe, run_dir, fresh)

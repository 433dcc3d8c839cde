"""A guided pre-training recipe (hints with P2NN frozen, the label with P1NN
frozen, then everything) killed with SIGKILL in the middle of its second
stage resumes to the result of an uninterrupted run."""

import csv
import json
import signal
from pathlib import Path

import numpy as np

import deepkit.models  # noqa: F401  (registers StructuredMLP for final_weights)

from runs import final_weights, finish_run, start_run

# 240 training images, batch 40: 6 batches an epoch; KillAt fires after
# batch 2 of epoch 1 of stage 2 (both from 0), halfway through that stage.
GUIDED = """\
name: guidedkill
seed: 5
data: {dataset: pentomino, train_size: 240, validation: 40, test_size: 80, target: both, batch_size: 40}
model:
  StructuredMLP: {p1nn_units: [8], p2nn_units: [6], standardize: batch, seed: 5}
compile:
  optimizer: {SGD: {learning_rate: 0.5, momentum: 0.5}}
  loss: {hints: sparse_categorical_crossentropy, label: null}
  metrics: {hints: [accuracy], label: [accuracy]}
fit:
  name: hints
  epochs: 2
  trainable: [p1nn]
stages:
  - name: label
    epochs: 3
    frozen: [p1nn]
    optimizer: {SGD: {learning_rate: 0.2, momentum: 0.5}}
    loss: {hints: null, label: binary_crossentropy}
    callbacks:
      - KillAt: {epoch: 1, batch: 2}
  - name: all
    epochs: 1
    loss: {hints: null, label: binary_crossentropy}
evaluate: {splits: [test]}
"""


def _rows(path):
    with open(path, newline="") as f:
        return [{k: float("nan") if v == "NA" else float(v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def test_a_guided_run_killed_in_its_second_stage_resumes_to_the_same_result(tmp_path):
    recipe = tmp_path / "guidedkill.yaml"
    recipe.write_text(GUIDED)
    resumed, fresh = tmp_path / "resumed", tmp_path / "fresh"
    killed = start_run("killer", recipe, resumed, {"DEEPKIT_TEST_KILL": "1"})
    whole = start_run("killer", recipe, fresh)
    code, out, err = finish_run(killed)
    assert code == -signal.SIGKILL, out + err
    # Stage 1 finished; stage 2 had logged its first epoch only.
    assert (resumed / "checkpoints" / "stage-0.json").exists()
    assert not (resumed / "checkpoints" / "stage-1.json").exists()
    assert [int(r["epoch"]) for r in _rows(resumed / "history-1-label.csv")] == [0]
    code, out, err = finish_run(start_run("killer", recipe, resumed))
    assert code == 0, out + err
    assert "stage 0 (hints) already finished" in err, err
    code, out, err = finish_run(whole)
    assert code == 0, out + err
    for name in ("history.csv", "history-1-label.csv", "history-2-all.csv"):
        np.testing.assert_array_equal(
            [list(r.values()) for r in _rows(resumed / name)],
            [list(r.values()) for r in _rows(fresh / name)], err_msg=name)
    results = [json.loads((d / "results.json").read_text()) for d in (resumed, fresh)]
    assert results[0]["metrics"] == results[1]["metrics"]
    assert [s["stage"] for s in results[0]["stages"]] == ["hints", "label", "all"]
    for a, b in zip(final_weights(resumed), final_weights(fresh)):
        np.testing.assert_array_equal(a, b)
    report = (resumed / "report.md").read_text()
    assert "## Stages" in report and "| label | 3 |" in report

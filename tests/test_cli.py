"""The `deepkit` command: list, report, --version, the console script, and
the choice of backend before Keras is imported."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

import deepkit
from deepkit import cli
from deepkit.recipe.report import format_value

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "first",
    "seed": 1,
    "data": {"dataset": "mnist_sample", "flatten": True, "limit": 200, "batch_size": 50},
    "model": {"sequential": [{"Maxout": {"units": 8, "pieces": 2}},
                             {"Dense": {"units": 10, "activation": "softmax"}}]},
    "compile": {"optimizer": {"SGD": {"learning_rate": 0.1}},
                "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
    "fit": {"epochs": 1},
    "evaluate": {"splits": ["test"]},
    "reference": {"source": "a paper", "test_error": 0.0094},
}

OTHER_BACKEND = {"tensorflow": "jax", "jax": "tensorflow"}[keras.backend.backend()]


@pytest.fixture
def wide(monkeypatch):
    """Tables as a wide terminal draws them (no squeezed, wrapped cells)."""
    monkeypatch.setenv("COLUMNS", "250")


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"{deepkit.__version__}\n"


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == cli.EXIT_BAD_RECIPE
    assert "usage: deepkit" in capsys.readouterr().out


def test_console_script_is_installed():
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    script = shutil.which("deepkit", path=path)
    assert script, "the deepkit console script is not on PATH"
    done = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == deepkit.__version__


def test_list_shows_the_shipped_recipes(capsys, wide, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    raw = yaml.safe_load((REPO / "recipes/quickstart.yaml").read_text())
    row = next(line for line in out.splitlines() if " quickstart " in line)
    assert raw["description"] in row
    assert raw["reference"]["source"] in row
    assert "test_error 0.94%" in row
    for path in (REPO / "recipes").glob("*.yaml"):
        assert re.search(rf"\b{re.escape(path.stem)}\b", out), path.stem


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    dirs = []
    for name, seed in (("first", 1), ("second", 5)):
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(dict(TINY, name=name, seed=seed)))
        run_dir = folder / name
        assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0
        dirs.append(run_dir)
    return dirs


def test_report_shows_one_run(two_runs, capsys, wide):
    capsys.readouterr()
    assert cli.main(["report", str(two_runs[0])]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((two_runs[0] / "results.json").read_text())["metrics"]
    row = next(line for line in out.splitlines() if " test_error " in line)
    error = metrics["test_error"]
    pieces = [f"{100 * error:.2f}%", "0.94%", f"{100 * (error - 0.0094):+.2f} pp"]
    assert re.search(".*".join(map(re.escape, pieces)), row), row


def test_report_shows_runs_side_by_side(two_runs, capsys, wide):
    capsys.readouterr()
    assert cli.main(["report", *map(str, two_runs)]) == 0
    out = capsys.readouterr().out
    assert "runs side by side" in out
    header = " ".join(out.split())
    assert re.search(r"first .* second .* paper", header)
    results = [json.loads((d / "results.json").read_text())["metrics"] for d in two_runs]
    assert results[0] != results[1], "the two runs should differ (different seeds)"
    for key in ("test_error", "test_accuracy", "test_loss"):
        row = next(line for line in out.splitlines() if f" {key} " in line)
        values = [format_value(key, r[key]) for r in results]
        paper = "0.94%" if key == "test_error" else "—"
        assert re.search(".*".join(map(re.escape, values + [paper])), row), row


def test_report_of_an_unfinished_run_fails(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == cli.EXIT_BAD_RECIPE
    err = " ".join(capsys.readouterr().err.split())
    assert f"{tmp_path}: no results.json" in err


def test_recipe_backend_cannot_switch_an_imported_keras(tmp_path, capsys):
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, backend=OTHER_BACKEND)))
    assert cli.main(["show", str(path)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"already imported with the {keras.backend.backend()} backend" in err
    assert len(err.strip().splitlines()) == 1, err
    assert os.environ.get("KERAS_BACKEND") != OTHER_BACKEND


_PROBE = """\
import sys
assert "keras" not in sys.modules
from deepkit.cli import main
status = main(sys.argv[1:])
import keras
import numpy as np
print("BACKEND", keras.backend.backend())
sys.exit(status)
"""


def _probe(args, backend_env):
    env = dict(os.environ, KERAS_BACKEND=backend_env)
    return subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env=env)


def test_backend_option_is_set_before_keras_is_imported():
    # KERAS_BACKEND says one backend, --backend another: --backend wins
    done = _probe(["show", "recipes/quickstart.yaml", "--backend", OTHER_BACKEND],
                  keras.backend.backend())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "# recipes/quickstart.yaml: valid"
    assert done.stdout.splitlines()[-1] == f"BACKEND {OTHER_BACKEND}"


def test_recipe_backend_key_chooses_the_backend(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, backend=OTHER_BACKEND)))
    done = _probe(["show", str(path)], keras.backend.backend())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"BACKEND {OTHER_BACKEND}"


def test_report_labels_tell_runs_of_one_recipe_apart():
    from deepkit.recipe.report import run_labels

    def results(name, *overrides):
        command = ["deepkit", "run", name]
        for o in overrides:
            command += ["--set", o]
        return {"name": name, "env": {"command": command}}

    runs = [results("gated", "fit.epochs=3"),
            results("gated", "fit.epochs=3", "model.M.gate=noisy_rectifier", "model.M.w=1e-5"),
            results("other", "fit.epochs=3")]
    labels = run_labels(runs, ["runs/a", "runs/b", "runs/c"])
    # The shared override is left out; the differing ones are shortened.
    assert labels == ["gated (a)", "gated (b)\ngate=noisy_rectifier\nw=1e-5", "other"]
    assert run_labels(runs[:1] + runs[2:]) == ["gated", "other"]


def test_report_gives_each_recipe_its_own_paper_number():
    from rich.console import Console

    from deepkit.recipe.report import compare_table

    def results(name, metric, paper):
        return {"name": name, "metrics": {"test_nll": metric},
                "reference": {"source": "x", "test_nll": paper}, "env": {"backend": "jax"}}

    def render(runs):
        console = Console(width=200, record=True)
        console.print(compare_table(runs))
        return [" ".join(line.replace("│", " ").split()) for line in console.export_text().splitlines()]

    # different papers: a "<metric>, paper" row with each run's own number
    lines = render([results("rnn", 8.3, 8.338), results("dot", 8.432, 8.44)])
    assert "test_nll 8.3 8.432" in lines and "test_nll, paper 8.338 8.44" in lines
    assert not any("┃ paper" in line for line in lines)
    # one paper: one paper column
    lines = render([results("dot", 8.432, 8.44), results("dot", 8.469, 8.44)])
    assert "test_nll 8.432 8.469 8.44" in lines


_LOAD = """
import sys
import deepkit
model = deepkit.load_model(sys.argv[1])
print(type(model).__name__, type(model.layers[0]).__name__,
      type(model.loss).__name__, type(model.optimizer).__name__)
"""


def test_load_model_registers_deepkit_classes_after_a_bare_import(tmp_path):
    # A saved model whose configuration names deepkit classes (a layer, a
    # loss, a metric, an optimizer) loads in a fresh process after only
    # `import deepkit`; plain keras.saving.load_model there cannot find them.
    from deepkit.layers import Maxout
    from deepkit.metrics import FrameBinaryCrossentropy, FrameNLL
    from deepkit.training import ScaledSGD

    model = keras.Sequential([keras.Input((3, 4)), Maxout(units=4, pieces=2),
                              keras.layers.Dense(5, name="out")])
    model.compile(ScaledSGD(0.1, lr_scales={"out": 0.5}),
                  loss=FrameBinaryCrossentropy(from_logits=True),
                  weighted_metrics=[FrameNLL(from_logits=True)])
    x = np.random.default_rng(0).random((2, 3, 4)).astype("float32")
    y = (np.random.default_rng(1).random((2, 3, 5)) > 0.5).astype("float32")
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    done = subprocess.run([sys.executable, "-c", _LOAD, str(path)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Sequential Maxout FrameBinaryCrossentropy ScaledSGD" in done.stdout, done.stdout
    plain = subprocess.run(
        [sys.executable, "-c",
         "import sys, keras, deepkit; keras.saving.load_model(sys.argv[1])", str(path)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert plain.returncode != 0 and "Could not locate class" in plain.stderr


def test_list_at_80_columns_cuts_no_name(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for path in (Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"):
        assert f"│ {path.stem} " in out, path.stem

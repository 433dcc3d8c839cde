"""Every bad input of the `deepkit` command: exit 2, one line naming the file,
flag or key path, no traceback, nothing written, and (for YAML and schema
errors) no Keras imported. Run in subprocesses, as a user runs the command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = (REPO / "recipes" / "quickstart.yaml").read_text()

# Fails when the command imports Keras before refusing.
_PROBE = ("import sys; from deepkit.cli import main; status = main(sys.argv[1:]); "
          "print('keras imported' if 'keras' in sys.modules else 'no keras'); sys.exit(status)")


def _deepkit(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _refused(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _case(tmp_path, name, text=None, data=None):
    if data is not None:
        (tmp_path / name).write_bytes(data)
    elif text is not None:
        (tmp_path / name).write_text(text)
    return tmp_path / name


# (id, files to write, argv, fragments of the message, keras may be imported)
CASES = [
    ("run_dir_is_a_file", {"afile": ""}, ["run", "quickstart", "--run-dir", "afile"],
     ["--run-dir afile", "existing file"], False),
    ("negative_time_limit", {}, ["run", "quickstart", "--time-limit", "-5"],
     ["--time-limit", "positive number of minutes", "-5"], False),
    ("unknown_flag", {}, ["run", "quickstart", "--epochs", "3"],
     ["unrecognized arguments: --epochs 3"], False),
    ("misspelt_recipe_name", {}, ["run", "quickstrat"],
     ["'quickstrat'", "did you mean quickstart?"], False),
    ("top_level_typo_with_smoke", {"t.yaml": QUICKSTART.replace("\nfit:", "\nfitt:")},
     ["run", "t.yaml", "--smoke"], ["t.yaml: fitt: unknown key 'fitt'", "did you mean fit?"],
     False),
    ("not_utf8", {"b.yaml": b"name: x\n# caf\xe9\n"}, ["run", "b.yaml"],
     ["b.yaml: line 2, column 6", "not UTF-8"], False),
    ("unknown_activation", {"a.yaml": QUICKSTART.replace("softmax", "sofmax")},
     ["run", "a.yaml"], ["a.yaml: model.sequential[5].Dense.activation",
                         "unknown activation 'sofmax'", "did you mean softmax"], True),
    ("negative_learning_rate", {},
     ["run", "quickstart", "--set", "compile.optimizer.SGD.learning_rate=-0.1"],
     ["compile.optimizer.SGD.learning_rate", "expected learning_rate > 0", "-0.1"], True),
    ("momentum_of_one", {}, ["run", "quickstart", "--set", "compile.optimizer.SGD.momentum=1"],
     ["compile.optimizer.SGD.momentum", "in [0, 1)"], True),
    ("dropout_rate_above_one", {},
     ["run", "quickstart", "--set", "model.sequential[0].Dropout.rate=1.5"],
     ["model.sequential[0].Dropout.rate", "in [0, 1)"], True),
]


@pytest.mark.parametrize("files, argv, fragments, keras_ok", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, files, argv, fragments,
                                                         keras_ok):
    for name, content in files.items():
        _case(tmp_path, name, **({"data": content} if isinstance(content, bytes)
                                 else {"text": content}))
    before = _listing(tmp_path)
    result = _deepkit(argv, tmp_path)
    _refused(result, *fragments)
    assert "Traceback" not in result.stderr
    assert _listing(tmp_path) == before  # no run directory, nothing else
    if not keras_ok:
        assert result.stdout.strip().endswith("no keras"), result.stdout


def test_missing_backend_package_names_what_to_install(tmp_path):
    # A backend whose package cannot be found: hide it from the import system.
    probe = ("import importlib.util, sys; real = importlib.util.find_spec; "
             "importlib.util.find_spec = lambda name, *a: None if name == 'torch' "
             "else real(name, *a); from deepkit.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", probe, "run", "quickstart", "--backend",
                             "torch"], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            capture_output=True, text=True, timeout=300)
    _refused(result, "--backend torch", "pip install torch")
    assert _listing(tmp_path) == []

"""Run directories: where a run lives and how its files are written.

Needs no Keras, so the `deepkit` command can name a run directory (and check
a `--run-dir` flag) before Keras is imported.
"""

import datetime
import os
from pathlib import Path


def default_run_dir(recipe):
    """``runs/<recipe name>-<date>-<time>``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{recipe.name}-{stamp}"


def atomic_write(path, text):
    """Write `text` to `path` through a temporary file and `os.replace`, so a
    kill or Ctrl-C during the write leaves the previous file whole."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def holds_run(run_dir, recipe):
    """True when `run_dir` holds this recipe's run (so it resumes), False when
    it holds none; RecipeError when it holds a different recipe. Writes nothing."""
    import yaml

    from deepkit.recipe.errors import RecipeError
    from deepkit.recipe.loading import dump

    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        return False
    if yaml.safe_load(path.read_text()) != yaml.safe_load(dump(recipe)):
        raise RecipeError(
            f"the run directory {run_dir} holds a different recipe (its recipe.yaml); "
            "resume with the same recipe and overrides, or choose another --run-dir")
    return True


def create(run_dir, recipe):
    """Make `run_dir` and write the resolved `recipe.yaml` into it."""
    from deepkit.recipe.loading import dump

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(run_dir) / "recipe.yaml", dump(recipe))


def _cpu_name():
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(recipe, command=None):
    """What ran: versions, backend, devices, machine, seed, command line, time."""
    import platform
    import sys

    import keras

    import deepkit

    try:
        devices = [str(d) for d in keras.distribution.list_devices()]
    except Exception:  # some backends cannot list devices
        devices = []
    backend = keras.backend.backend()
    frameworks = {}
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module:
        loaded = sys.modules.get(module) or __import__(module)
        frameworks[module] = getattr(loaded, "__version__", "?")
    return {
        "deepkit": deepkit.__version__,
        "keras": keras.__version__,
        "backend": backend,
        "frameworks": frameworks,
        "devices": devices,
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "seed": recipe.seed,
        "command": list(command or sys.argv),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def write_environment(run_dir, recipe, command=None, resumed=False, distribution=None):
    """Write `env.json`; a resumed run appends its environment under "resumed".
    `distribution`: what `deepkit.distribution.Scale.describe` says (kind,
    replicas, devices, global and per-replica batch sizes), or None."""
    import json

    path = Path(run_dir) / "env.json"
    env = environment(recipe, command)
    if distribution is not None:
        env["distribution"] = distribution
    if resumed and path.exists():
        previous = json.loads(path.read_text())
        previous.setdefault("resumed", []).append(env)
        env = previous
    atomic_write(path, json.dumps(env, indent=2))
    return env

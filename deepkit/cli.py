"""The `deepkit` command: run, show, list and compare recipes; draw a run's samples.

    deepkit run RECIPE [--set k=v ...] [--smoke] [--backend B] [--run-dir DIR] [--debug]
    deepkit show RECIPE [--set k=v ...] [--smoke]
    deepkit list
    deepkit report RUN_DIR...
    deepkit sample RUN_DIR [--out DIR] [--seed S] [--steps N] [--chains C] [--backend B]

A recipe is read and its structure checked before Keras is imported; Keras is
imported once the backend is chosen (`--backend`, else the recipe's
`backend:`, else KERAS_BACKEND), and then every name is checked. Exit status:
0 done; 2 bad input (recipe, flag, data, run directory), with one line naming
the file and key path or the flag, and nothing written; 3 the loss became
NaN (the last good checkpoint is kept); 1 a failure while training or
evaluating; 130 stopped by Ctrl-C (the run directory resumes). `--debug`
shows tracebacks. Progress goes to stderr, results to stdout.
"""

import argparse
import importlib.util
import os
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from deepkit.recipe.errors import (RecipeError, RunDiverged, RunFailed, RunInterrupted,
                                   closest)
from deepkit.recipe.loading import recipes_dir

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_BAD_RECIPE = EXIT_BAD_INPUT  # the older name
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

# The package each backend needs, for the message when it is missing.
_BACKEND_PACKAGES = {"tensorflow": ("tensorflow", "pip install tensorflow"),
                     "jax": ("jax", 'pip install "jax[cpu]" (or pip install -e ".[jax]")'),
                     "torch": ("torch", "pip install torch")}

console = Console(stderr=True)


def _say(label, message):
    """One line on stderr, whatever the terminal's width."""
    console.print(f"[bold red]{label}[/bold red] {escape(str(message))}", highlight=False,
                  soft_wrap=True)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit status 2."""

    def error(self, message):
        _say("error:", f"{self.prog}: {message} (--help lists the options)")
        raise SystemExit(EXIT_BAD_INPUT)


def _minutes(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, found {text!r}")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, found {text}")
    return value


def find_recipe(name):
    """A path as given, else a shipped recipe by name (``quickstart``)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml") or os.sep in name:
        return path
    shipped = recipes_dir() / f"{name}.yaml"
    if shipped.exists():
        return shipped
    known = sorted(p.stem for p in recipes_dir().glob("*.yaml"))
    raise RecipeError(f"no recipe file {name!r} and no shipped recipe of that name"
                      f"{closest(name, known)} (`deepkit list` shows them)")


def _check_backend(backend):
    """RecipeError naming the package to install when `backend` is missing."""
    module, install = _BACKEND_PACKAGES[backend]
    if importlib.util.find_spec(module) is None:
        raise RecipeError(f"--backend {backend}: the {backend} backend needs the {module} "
                          f"package, which is not installed: {install}")


def _set_backend(args, recipe=None):
    """Choose the Keras backend (before Keras is imported), then import it."""
    backend = getattr(args, "backend", None) or (recipe.backend if recipe else None)
    if backend:
        _check_backend(backend)
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != backend:
            import keras

            if keras.backend.backend() != backend:
                raise RecipeError(f"--backend {backend}: Keras was already imported with "
                                  f"the {keras.backend.backend()} backend")
        os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cpu_devices = getattr(args, "cpu_devices", None)
    if cpu_devices and os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        from deepkit.distribution import split_cpu

        split_cpu(cpu_devices)  # XLA_FLAGS, before JAX is imported
    distribution = recipe.distribution if recipe is not None else None
    if getattr(args, "debug", False):
        _split_tensorflow_cpu(cpu_devices)
        _start_distribution(distribution)
        import keras  # noqa: F401
    else:
        _quiet_import_keras(cpu_devices, distribution)


def _start_distribution(spec):
    """Engines that must exist before TensorFlow lists its devices."""
    if spec is None:
        return
    from deepkit.distribution import DistributionError, start

    try:
        start(spec)
    except DistributionError as error:
        raise RecipeError(str(error), "distribution") from None


def _split_tensorflow_cpu(cpu_devices):
    if cpu_devices and os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        from deepkit.distribution import DistributionError, split_cpu

        try:
            split_cpu(cpu_devices, "tensorflow")
        except DistributionError as error:
            raise RecipeError(f"--cpu-devices {cpu_devices}: {error}") from None


def _quiet_import_keras(cpu_devices=None, distribution=None):
    """Import Keras with the C++ start-up chatter of TensorFlow/XLA silenced."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        _split_tensorflow_cpu(cpu_devices)
        _start_distribution(distribution)
        import keras  # noqa: F401

        try:  # the data pipeline imports it later on every backend
            import tensorflow  # noqa: F401
        except ImportError:
            pass
        keras.distribution.list_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _load(args, construct=True):
    """The recipe of `args`, structure checked (no Keras), then Keras
    imported with the right backend, then every name checked (and, with
    `construct`, every object built once to run its own argument checks)."""
    from deepkit.recipe.loading import check, load

    recipe = load(find_recipe(args.recipe), overrides=args.set, smoke=args.smoke,
                  check_names=False)
    _set_backend(args, recipe)
    check(recipe, construct=construct)
    return recipe


def _check_run_dir(run_dir):
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise RecipeError(f"--run-dir {run_dir}: this is an existing file, not a run "
                          "directory; choose another path")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise RecipeError(f"--run-dir {run_dir}: {parent} is a file, so no directory "
                              "can be made under it")


def _resume_command(args, run_dir):
    argv = list(getattr(args, "argv", sys.argv[1:]))
    if not args.run_dir:
        argv += ["--run-dir", str(run_dir)]
    return shlex.join(["deepkit"] + argv)


def cmd_run(args):
    if args.run_dir:
        _check_run_dir(args.run_dir)
    if args.distribution:
        args.set = list(args.set) + [f"distribution={args.distribution}"]
    # The runner builds every object once, before it writes anything; only
    # when a source recipe must train first are they built here too, so a
    # bad argument is refused before the source's minutes of training.
    recipe = _load(args, construct=False)
    if recipe.init_source is not None:
        from deepkit.recipe.loading import check

        check(recipe, construct=True)
    from deepkit.recipe.rundir import default_run_dir

    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(recipe)
    args.resolved_run_dir = run_dir
    from deepkit.recipe.runner import run

    command = ["deepkit"] + list(getattr(args, "argv", sys.argv[1:]))
    run(recipe, run_dir=run_dir, console=console, command=command,
        time_limit=args.time_limit)
    return 0


def cmd_show(args):
    from deepkit.recipe import dump

    recipe = _load(args)
    print(f"# {recipe.file}: valid" + (" (smoke)" if args.smoke else ""))
    print(dump(recipe), end="")
    return 0


def _first_comment(path):
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def cmd_list(args):
    import yaml
    from rich.table import Table

    from deepkit.recipe.report import format_paper, paper_numbers

    paths = sorted(recipes_dir().glob("*.yaml"))
    table = Table(title=f"recipes in {recipes_dir()}")
    # Names are never cut: they are what the user types next.
    table.add_column("recipe", no_wrap=True, min_width=max((len(p.stem) for p in paths),
                                                           default=6))
    for column in ("what", "paper", "paper's number"):
        table.add_column(column, overflow="fold")  # wrapped, never cut with an ellipsis
    for path in paths:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            table.add_row(path.stem, "[red]invalid YAML[/red]", "", "")
            continue
        ref = raw.get("reference") or {}
        numbers = ", ".join(f"{k} {format_paper(k, ref)}" for k in paper_numbers(ref))
        table.add_row(path.stem, escape(str(raw.get("description") or _first_comment(path))),
                      escape(str(ref.get("source", ""))), numbers)
    Console().print(table)
    return 0


def cmd_report(args):
    from deepkit.recipe import report

    results = []
    for run_dir in args.run_dirs:
        try:
            results.append(report.load_results(run_dir))
        except FileNotFoundError as e:
            raise RecipeError(str(e)) from None
    out = Console()
    if len(results) == 1:
        out.print(report.table(results[0]))
    else:
        out.print(report.compare_table(results, args.run_dirs))
    return 0


def _run_backend(run_dir):
    """The backend a run directory's env.json names, or None."""
    import json

    try:
        return json.loads((Path(run_dir) / "env.json").read_text()).get("backend")
    except (OSError, ValueError):
        return None


def cmd_sample(args):
    """Pictures of a trained GSN or DAE run: samples, inpainting, nearest images."""
    run_dir = Path(args.run_dir)
    model_file, recipe_file = run_dir / "model.keras", run_dir / "recipe.yaml"
    if not model_file.is_file():
        raise RecipeError(f"{run_dir}: no model.keras (expected the directory of a finished "
                          "`deepkit run` of a GSN or DenoisingAutoencoder recipe)")
    if not recipe_file.is_file():
        raise RecipeError(f"{run_dir}: no recipe.yaml, so the data of the run are unknown")
    for name in ("steps", "chains", "columns"):
        if getattr(args, name) < 1:
            raise RecipeError(f"--{name} must be a positive integer, found {getattr(args, name)}")
    if args.columns > args.steps:
        raise RecipeError(f"--columns ({args.columns}) must not exceed --steps ({args.steps})")
    if args.out:
        _check_run_dir(args.out)
    from deepkit.recipe import schema
    from deepkit.recipe.loading import read

    recipe = schema.parse(read(recipe_file), file=str(recipe_file))
    args.backend = args.backend or _run_backend(run_dir)
    _set_backend(args)
    import keras

    from deepkit import export
    from deepkit.models import GSN, DenoisingAutoencoder
    from deepkit.recipe import build, generative

    export.load_all()
    try:
        model = keras.saving.load_model(str(model_file), compile=False, safe_mode=True)
    except Exception as error:  # a broken or foreign file: say which, no traceback
        raise RecipeError(f"could not load {model_file}: {type(error).__name__}: "
                          f"{(str(error).splitlines() or [''])[0][:300]}") from None
    if not isinstance(model, (GSN, DenoisingAutoencoder)):
        raise RecipeError(f"{model_file} holds a {type(model).__name__}, not a GSN or "
                          "DenoisingAutoencoder: `deepkit sample` needs a model with a "
                          "sampling chain")
    splits = build.load_splits(recipe)
    if splits["test"] is None:
        raise RecipeError(f"the run's data ({recipe.data.dataset}) give no test split")
    out = Path(args.out) if args.out else run_dir
    paths, distances = generative.sample_pictures(
        model, splits["test"][0], splits["train"][0], out, seed=args.seed, steps=args.steps,
        chains=args.chains, columns=args.columns, start=args.start)
    for path in paths:
        print(path)
    console.print(f"nearest training image of the {len(distances)} grid samples: mean "
                  f"distance {distances.mean():.3f}, min {distances.min():.3f}")
    return 0


def parser():
    p = _Parser(prog="deepkit", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    def recipe_args(sp):
        sp.add_argument("recipe", help="a recipe file, or the name of a shipped recipe")
        sp.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a value, e.g. --set fit.epochs=3 "
                             "--set model.sequential[1].Maxout.units=120")
        sp.add_argument("--smoke", action="store_true", help="apply the recipe's smoke: block")
        sp.add_argument("--debug", action="store_true", help="show tracebacks")
        sp.add_argument("--backend", choices=tuple(_BACKEND_PACKAGES))

    sp = sub.add_parser("run", help="run a recipe and report its result")
    recipe_args(sp)
    sp.add_argument("--run-dir", help="run directory (an existing one is resumed)")
    sp.add_argument("--time-limit", type=_minutes, metavar="MINUTES",
                    help="stop each training stage after the last whole epoch that fits "
                         "in MINUTES (a TimeLimit callback), for runs sized to a budget")
    sp.add_argument("--distribution", metavar="KIND",
                    help="train on several devices: mirrored or multi_worker_mirrored "
                         "(TensorFlow; workers from TF_CONFIG), data_parallel, "
                         "model_parallel or expert_parallel (JAX); the recipe's "
                         "batch_size stays the global batch (sets distribution=KIND)")
    sp.add_argument("--cpu-devices", type=int, metavar="N",
                    help="split the CPU into N logical devices before the backend starts "
                         "(to try a distribution on one machine)")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("show", help="print the resolved, validated recipe")
    recipe_args(sp)
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("list", help="list the shipped recipes")
    sp.add_argument("--debug", action="store_true")
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("report", help="show one run's report, or several side by side")
    sp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    sp.add_argument("--debug", action="store_true")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("sample", help="pictures of a trained GSN or DAE run: chain samples, "
                                       "inpainting, nearest training images")
    sp.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's directory")
    sp.add_argument("--out", help="folder of the pictures (default: RUN_DIR)")
    sp.add_argument("--seed", type=int, default=1, help="the chains' seed (default 1)")
    sp.add_argument("--steps", type=int, default=100, help="chain steps (default 100)")
    sp.add_argument("--chains", type=int, default=10,
                    help="chains, one row each, and inpainted digits (default 10)")
    sp.add_argument("--columns", type=int, default=10,
                    help="pictures per chain, evenly spaced steps (default 10)")
    sp.add_argument("--start", choices=("test", "noise"), default="test",
                    help="start the chains from test digits (default) or from noise")
    sp.add_argument("--backend", choices=tuple(_BACKEND_PACKAGES),
                    help="default: the run's own backend (its env.json)")
    sp.add_argument("--debug", action="store_true", help="show tracebacks")
    sp.set_defaults(func=cmd_sample)
    return p


def _interrupted(args, message=None):
    """The one line of a run stopped by Ctrl-C, with how to resume it."""
    run_dir = getattr(args, "resolved_run_dir", None)
    text = message or "interrupted by Ctrl-C"
    if run_dir is not None and (Path(run_dir) / "recipe.yaml").exists():
        text += f"; resume with: {_resume_command(args, run_dir)}"
    else:
        text += "; nothing was written"
    _say("stopped:", text)
    return EXIT_INTERRUPTED


def main(argv=None):
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (already said in one line)
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for env.json
    if args.version:
        import deepkit

        print(deepkit.__version__)
        return 0
    if not getattr(args, "func", None):
        parser().print_help()
        return EXIT_BAD_INPUT
    debug = getattr(args, "debug", False)
    from deepkit.datasets import DataError

    try:
        return args.func(args)
    except (RecipeError, DataError) as e:
        if debug:
            raise
        _say("error:", e)
        return EXIT_BAD_INPUT
    except RunDiverged as e:
        if debug:
            raise
        _say("stopped:", e)
        return EXIT_DIVERGED
    except RunInterrupted as e:
        if debug:
            raise
        return _interrupted(args, str(e))
    except KeyboardInterrupt:
        if debug:
            raise
        return _interrupted(args)
    except RunFailed as e:
        if debug:
            raise
        _say("failed:", e)
        return EXIT_FAILED
    except Exception as e:  # a failure while training or evaluating
        if debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        where = getattr(args, "resolved_run_dir", None)
        _say("failed:", f"{type(e).__name__}: {first}"
             + (f" (run directory {where})" if where else "")
             + "; --debug shows the traceback")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

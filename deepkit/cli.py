"""The `deepkit` command: run, show, list and compare recipes.

    deepkit run RECIPE [--set k=v ...] [--smoke] [--backend B] [--run-dir DIR] [--debug]
    deepkit show RECIPE [--set k=v ...] [--smoke]
    deepkit list
    deepkit report RUN_DIR...

Keras is imported only after the backend is chosen (`--backend`, else the
recipe's `backend:`, else KERAS_BACKEND). A bad recipe exits with status 2 and
one message naming the file and key path; `--debug` shows the traceback. A run
whose loss becomes NaN exits with status 3.
"""

import argparse
import os
import sys
from pathlib import Path

import yaml
from rich.console import Console

from deepkit.recipe.load import recipes_dir

EXIT_BAD_RECIPE = 2
EXIT_DIVERGED = 3

console = Console(stderr=True)


def find_recipe(name):
    """A path as given, else a shipped recipe by name (``quickstart``)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    shipped = recipes_dir() / f"{name}.yaml"
    return shipped if shipped.exists() else path


def _set_backend(args):
    """Choose the Keras backend before Keras is imported."""
    from deepkit.recipe.load import read

    backend = getattr(args, "backend", None)
    if backend is None and getattr(args, "recipe", None):
        raw = read(find_recipe(args.recipe))
        backend = raw.get("backend") if isinstance(raw.get("backend"), str) else None
    if backend:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != backend:
            import keras

            if keras.backend.backend() != backend:
                raise SystemExit(f"deepkit: Keras was already imported with the "
                                 f"{keras.backend.backend()} backend")
        os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command in ("run", "show") and not getattr(args, "debug", False):
        _quiet_import_keras()


def _quiet_import_keras():
    """Import Keras with the C++ start-up chatter of TensorFlow/XLA silenced."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
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


def cmd_run(args):
    from deepkit.recipe import load

    recipe = load(find_recipe(args.recipe), overrides=args.set, smoke=args.smoke)
    from deepkit.recipe.runner import run

    command = ["deepkit"] + list(getattr(args, "argv", sys.argv[1:]))
    run(recipe, run_dir=args.run_dir, console=console, command=command,
        time_limit=args.time_limit)
    return 0


def cmd_show(args):
    from deepkit.recipe import dump, load

    recipe = load(find_recipe(args.recipe), overrides=args.set, smoke=args.smoke)
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
    from rich.table import Table

    from deepkit.recipe.report import format_value

    table = Table(title=f"recipes in {recipes_dir()}")
    for column in ("recipe", "what", "paper", "paper's number"):
        table.add_column(column)
    for path in sorted(recipes_dir().glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            table.add_row(path.stem, "[red]invalid YAML[/red]", "", "")
            continue
        ref = raw.get("reference") or {}
        numbers = ", ".join(f"{k} {format_value(k, v)}" for k, v in ref.items()
                            if k not in ("source", "notes"))
        table.add_row(path.stem, raw.get("description") or _first_comment(path),
                      str(ref.get("source", "")), numbers)
    Console().print(table)
    return 0


def cmd_report(args):
    from deepkit.recipe import report

    results = []
    for run_dir in args.run_dirs:
        try:
            results.append(report.load_results(run_dir))
        except FileNotFoundError as e:
            console.print(f"[red]deepkit report: {e}[/red]")
            return EXIT_BAD_RECIPE
    out = Console()
    if len(results) == 1:
        out.print(report.table(results[0]))
    else:
        out.print(report.compare_table(results, args.run_dirs))
    return 0


def parser():
    p = argparse.ArgumentParser(prog="deepkit", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")

    def recipe_args(sp):
        sp.add_argument("recipe", help="a recipe file, or the name of a shipped recipe")
        sp.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a value, e.g. --set fit.epochs=3 "
                             "--set model.sequential[1].Maxout.units=120")
        sp.add_argument("--smoke", action="store_true", help="apply the recipe's smoke: block")
        sp.add_argument("--debug", action="store_true", help="show tracebacks")

    sp = sub.add_parser("run", help="run a recipe and report its result")
    recipe_args(sp)
    sp.add_argument("--backend", choices=("tensorflow", "jax", "torch"))
    sp.add_argument("--run-dir", help="run directory (an existing one is resumed)")
    sp.add_argument("--time-limit", type=float, metavar="MINUTES",
                    help="stop each training stage after the last whole epoch that fits "
                         "in MINUTES (a TimeLimit callback), for runs sized to a budget")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("show", help="print the resolved, validated recipe")
    recipe_args(sp)
    sp.add_argument("--backend", choices=("tensorflow", "jax", "torch"))
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("list", help="list the shipped recipes")
    sp.add_argument("--debug", action="store_true")
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("report", help="show one run's report, or several side by side")
    sp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    sp.add_argument("--debug", action="store_true")
    sp.set_defaults(func=cmd_report)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for env.json
    if args.version:
        import deepkit

        print(deepkit.__version__)
        return 0
    if not getattr(args, "func", None):
        parser().print_help()
        return EXIT_BAD_RECIPE
    from rich.markup import escape

    from deepkit.datasets import DataError
    from deepkit.recipe.errors import RecipeError

    try:
        _set_backend(args)
        return args.func(args)
    except (RecipeError, DataError) as e:
        if getattr(args, "debug", False):
            raise
        console.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False,
                      soft_wrap=True)  # one line, whatever the width
        return EXIT_BAD_RECIPE
    except Exception as e:
        if type(e).__name__ != "RunDiverged" or getattr(args, "debug", False):
            raise
        console.print(f"[bold red]stopped:[/bold red] {escape(str(e))}", highlight=False,
                      soft_wrap=True)  # one line, whatever the width
        return EXIT_DIVERGED


if __name__ == "__main__":
    sys.exit(main())

"""The recipe engine: load, validate and run declarative experiment files.

`load(path, overrides, smoke)` reads and validates a recipe (see
`deepkit.recipe.schema`); `run(recipe, run_dir)` trains it in a resumable
run directory and reports the result beside the paper's number.
"""

from deepkit.recipe.errors import RecipeError
from deepkit.recipe.loading import dump, load, read


def run(recipe, run_dir=None, console=None, command=None, time_limit=None):
    """Run a validated recipe; see `deepkit.recipe.runner.run`."""
    from deepkit.recipe.runner import run as _run

    return _run(recipe, run_dir=run_dir, console=console, command=command,
                time_limit=time_limit)

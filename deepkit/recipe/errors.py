"""The one error type of the recipe engine."""

import difflib


class RecipeError(Exception):
    """A recipe cannot be used; says which file, which key path, and why.

    Args:
        message: what was expected and what was found.
        path: the key path in the recipe (``model.sequential[1].Maxout.pieces``).
        file: the recipe file.
    """

    def __init__(self, message, path=None, file=None):
        self.message = message
        self.path = path
        self.file = file
        super().__init__(str(self))

    def __str__(self):
        where = ": ".join(str(p) for p in (self.file, self.path) if p)
        return f"{where}: {self.message}" if where else self.message

    def at(self, file=None, path=None):
        """This error with the file (and a path, when it has none) filled in."""
        return RecipeError(self.message, self.path or path, self.file or file)


def closest(name, candidates, n=3):
    """'; did you mean a, b?' for the names closest to `name`, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.6)
    if not close:
        lowered = {str(c).lower(): str(c) for c in candidates}
        if str(name).lower() in lowered:
            close = [lowered[str(name).lower()]]
    return f"; did you mean {', '.join(close)}?" if close else ""


def describe(value):
    """`value` as an error message shows it: repr and YAML type."""
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind})"


class RunDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


class RunInterrupted(Exception):
    """The run was stopped by Ctrl-C; its run directory can be resumed.

    Args:
        message: where it stopped and which checkpoint is kept.
        run_dir: the run directory to resume.
    """

    def __init__(self, message, run_dir=None):
        self.run_dir = run_dir
        super().__init__(message)


class RunFailed(Exception):
    """Something went wrong while the run was training or evaluating (not a
    problem of the recipe, which was valid when the run started)."""

"""Data sets by name: `deepkit.datasets.load(name, split, **options)`.

Each data set is a loader function registered with `@register`. It returns
the arrays of one split as a tuple `(x, y)` or `(x, y, sample_weight)`, or
`None` when the split does not exist with these options (for example
`"valid"` without `validation=`). Local files are found under the folder
named by the `DEEPKIT_DATA` environment variable, in the layout of
`shared/data` (``mnist/train-images-idx3-ubyte.gz``, ``ptb/ptb.train.txt``,
``polyphonic/JSB Chorales.pickle``). The synthetic pathological tasks
(`adding`, `temporal_order`, ... in `deepkit.datasets.pathological`) are
generated from a seed and need no files, as does `pentomino` (Gulcehre &
Bengio's task, `deepkit.datasets.pentomino`; also a TensorFlow Datasets
builder in `deepkit.datasets.pentomino_tfds`).

Example:

```python
from deepkit import datasets
x_train, y_train = datasets.load("mnist", "train", flatten=True, validation=10000)
```
"""

import difflib
import inspect
import os
from pathlib import Path

DATA_ENV = "DEEPKIT_DATA"
SPLITS = ("train", "valid", "test")


def __getattr__(name):
    # EpochShuffledArrays needs Keras; this package does not import it unasked.
    if name == "EpochShuffledArrays":
        from deepkit.datasets.epoch_arrays import EpochShuffledArrays

        return EpochShuffledArrays
    raise AttributeError(f"module 'deepkit.datasets' has no attribute {name!r}")

# name -> _Entry
_DATASETS = {}
# Modules that register loaders; imported on first lookup.
_MODULES = ("mnist", "pathological", "pentomino", "polyphonic", "ptb")


class DataError(Exception):
    """A data set cannot be found or read; the message says what to do."""


class _Entry:
    def __init__(self, name, fn, files, description):
        self.name = name
        self.fn = fn
        # A tuple of paths, or a callable files(**options) -> paths.
        self.files = files if callable(files) else tuple(files)
        self.description = description

    @property
    def options(self):
        """Keyword options of the loader, with their defaults."""
        params = inspect.signature(self.fn).parameters
        return {
            k: p.default
            for k, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }


def register(name, files=(), description=""):
    """Register a loader `fn(split, *, **options)` as data set `name`.

    Args:
        name: the data set's name in recipes and in `load`.
        files: paths relative to `DEEPKIT_DATA` that the loader reads; a
            callable `files(**options)` when they depend on the options.
        description: one line for listings.
    """

    def decorate(fn):
        _DATASETS[name] = _Entry(name, fn, files, description)
        return fn

    return decorate


def _import_all():
    import importlib

    for module in _MODULES:
        try:
            importlib.import_module(f"deepkit.datasets.{module}")
        except ModuleNotFoundError as e:  # a data set module not written yet
            if e.name != f"deepkit.datasets.{module}":
                raise


def names():
    """Registered data set names, sorted."""
    _import_all()
    return sorted(_DATASETS)


def get(name):
    """The registry entry of data set `name`; a clear error when unknown."""
    _import_all()
    if name not in _DATASETS:
        close = difflib.get_close_matches(str(name), list(_DATASETS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DataError(
            f"unknown data set {name!r}{hint} (known: {', '.join(sorted(_DATASETS))})"
        )
    return _DATASETS[name]


def data_dir():
    """The folder named by DEEPKIT_DATA, or None when it is not set."""
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def required_files(name, **options):
    """Absolute paths of the local files data set `name` needs."""
    entry = get(name)
    files = entry.files(**options) if callable(entry.files) else entry.files
    root = data_dir()
    return [(root / f) if root else Path(f) for f in files]


def check_files(name, **options):
    """Raise DataError naming DEEPKIT_DATA and the missing paths, if any.

    Data sets without local files (packaged samples) always pass. When
    DEEPKIT_DATA is not set, loaders that have a download path take it, so
    nothing is checked.
    """
    entry = get(name)
    if not entry.files:
        return
    if data_dir() is None:
        if getattr(entry.fn, "can_download", False):
            return
        raise DataError(
            f"data set {name!r} needs local files: set {DATA_ENV} to a folder "
            f"holding {', '.join(str(p) for p in required_files(name, **options))}"
        )
    missing = [str(p) for p in required_files(name, **options) if not p.exists()]
    if missing:
        raise DataError(
            f"data set {name!r}: {DATA_ENV}={os.environ[DATA_ENV]} lacks "
            f"{', '.join(missing)}"
        )


def load(name, split, **options):
    """Load one split of data set `name`.

    Args:
        name: a registered data set (`names()` lists them).
        split: "train", "valid" or "test".
        **options: the loader's options (`get(name).options` lists them).

    Returns:
        A tuple `(x, y)` or `(x, y, sample_weight)` of numpy arrays, or None
        when the split does not exist with these options.
    """
    entry = get(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {name!r}; expected one of {SPLITS}")
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(entry.options), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DataError(
            f"data set {name!r} has no option {unknown[0]!r}{hint} "
            f"(options: {', '.join(entry.options)})"
        )
    return entry.fn(split, **options)


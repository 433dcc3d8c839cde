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

"""deepkit: the 2013-2014 deep-learning research agenda as Keras 3 layers.

Maxout networks, deep-transition RNNs, gated experts (conditional
computation), generative stochastic networks, guided pre-training with hints
and the RNN training tricks, as ordinary Keras layers, models and callbacks,
plus declarative recipes that reproduce the papers.

Importing `deepkit` does not import Keras: the submodules (`deepkit.layers`,
`deepkit.models`, ...) are loaded on first use, so that the `deepkit`
command can choose the Keras backend first.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "callbacks",
    "datasets",
    "export",
    "layers",
    "metrics",
    "models",
    "recipe",
    "testing",
    "training",
)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"deepkit.{name}")
    raise AttributeError(f"module 'deepkit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))

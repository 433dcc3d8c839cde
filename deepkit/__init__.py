"""deepkit: the 2013-2014 deep-learning research agenda as Keras 3 layers.

Maxout networks, deep-transition RNNs, gated experts (conditional
computation), generative stochastic networks, guided pre-training with hints
and the RNN training tricks, as ordinary Keras layers, models and callbacks,
plus declarative recipes that reproduce the papers.

Importing `deepkit` does not import Keras: the submodules (`deepkit.layers`,
`deepkit.models`, ...) are loaded on first use, so that the `deepkit`
command can choose the Keras backend first.

It sets `TF_CPP_MIN_LOG_LEVEL` to 2 unless it is already set, so that
TensorFlow, once imported (by Keras with the TensorFlow backend; on the
others by `model.save` or a `tf.data` pipeline), does not write its C++
start-up INFO and WARNING lines (oneDNN, CPU features) to stderr; its
errors still show. Under JAX and PyTorch, `deepkit.layers`, `deepkit.models`,
`deepkit.callbacks`, `deepkit.training` and `deepkit.metrics` do not import
TensorFlow at all.
"""

import importlib
import os

# Before anything imports TensorFlow (it reads the variable when it loads);
# a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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


# The submodules whose classes can appear in a saved model's configuration.
_SERIALIZABLE = ("layers", "models", "metrics", "callbacks", "training")


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """`keras.saving.load_model` with every deepkit class registered first.

    Keras finds a custom class of a saved model (``deepkit>Maxout``,
    ``deepkit>FrameBinaryCrossentropy``, ...) only once the module that
    defines it has been imported; `import deepkit` alone imports none of
    them. This imports them all, then loads `filepath` (a run directory's
    ``model.keras``, for example) with Keras' own arguments.

    Example:

    ```python
    model = deepkit.load_model("runs/dot_rnn_jsb/model.keras")
    ```
    """
    for name in _SERIALIZABLE:
        importlib.import_module(f"deepkit.{name}")
    import keras

    return keras.saving.load_model(
        filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
    )


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"deepkit.{name}")
    raise AttributeError(f"module 'deepkit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))

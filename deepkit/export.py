"""Registration of deepkit classes for Keras serialization and recipes.

`@export` registers a class with Keras as ``"deepkit>Name"`` (so `.keras`
files load it in safe mode) and in deepkit's own registry, where the recipe
engine looks names up. `load_all()` imports every module that registers
classes, so the registry is complete.
"""

import importlib

import keras

PACKAGE = "deepkit"

# Name -> class, for every class registered with @export.
_REGISTRY = {}

# Modules whose import registers deepkit's public classes.
_MODULES = (
    "deepkit.layers",
    "deepkit.models",
    "deepkit.training",
    "deepkit.callbacks",
    "deepkit.metrics",
)


def export(cls=None, *, name=None):
    """Register `cls` as ``deepkit>Name`` with Keras and in deepkit's registry.

    Args:
        cls: the class to register (when used as a bare decorator).
        name: the registered name; defaults to the class name.

    Example:

    ```python
    @export
    class Maxout(keras.layers.Layer):
        ...
    ```
    """

    def decorate(cls):
        registered = name or cls.__name__
        keras.saving.register_keras_serializable(package=PACKAGE, name=registered)(cls)
        if registered in _REGISTRY and _REGISTRY[registered] is not cls:
            existing = _REGISTRY[registered]
            raise ValueError(
                f"deepkit name {registered!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        _REGISTRY[registered] = cls
        return cls

    if cls is None:
        return decorate
    return decorate(cls)


def load_all():
    """Import every deepkit module that registers classes; return the registry."""
    for module in _MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)


def registry():
    """The classes registered so far, by name (a copy)."""
    return dict(_REGISTRY)

"""Every public class of deepkit's Keras packages documents every argument
of its `__init__` in the Args section of its docstring."""

import importlib
import inspect
import re

import pytest

PACKAGES = ("deepkit.layers", "deepkit.models", "deepkit.callbacks", "deepkit.training",
            "deepkit.metrics")

# Google/Keras docstring section headers (a line of their own, no indent).
_SECTION = re.compile(r"^([A-Z][A-Za-z ]*):\s*$")
# An Args entry: `name: ...`, `*args: ...`, `**kwargs: ...` or `a, b, c: ...`.
_ENTRY = re.compile(r"^(\*{0,2}\w+(?:, *\*{0,2}\w+)*):(?:\s|$)")


def documented_args(doc):
    """The names described in the Args section of `doc`, in order.

    Entries are the lines at the section's first indentation; a name counts
    only when spelled out (``kernel_regularizer, bias_regularizer: ...`` names
    two; a pattern such as ``*_initializer`` names none).
    """
    names, inside, indent = [], False, None
    for line in inspect.cleandoc(doc or "").splitlines():
        header = _SECTION.match(line)
        if header:
            inside = header.group(1) in ("Args", "Arguments")
            indent = None
            continue
        if not inside or not line.strip():
            continue
        if not line[0].isspace():  # prose after the section ends it
            inside = False
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width != indent:
            continue  # a continuation line
        entry = _ENTRY.match(line.strip())
        if entry:
            names.extend(name.strip().lstrip("*") for name in entry.group(1).split(","))
    return names


def init_arguments(cls):
    """The named parameters of `cls.__init__` (not self, *args, **kwargs)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def undocumented(cls):
    documented = set(documented_args(cls.__doc__))
    return [name for name in init_arguments(cls) if name not in documented]


def public_classes():
    """`{"deepkit.layers.Maxout": Maxout, ...}`: the classes each package exports."""
    found = {}
    for package in PACKAGES:
        module = importlib.import_module(package)
        names = getattr(module, "__all__", None) or [n for n in dir(module) if not n[0] == "_"]
        for name in names:
            obj = getattr(module, name)
            if inspect.isclass(obj) and obj.__module__.startswith("deepkit."):
                found[f"{package}.{name}"] = obj
    return found


CLASSES = public_classes()


def test_the_walk_finds_the_public_classes():
    for name in ("deepkit.layers.Maxout", "deepkit.layers.DeepTransitionRNN",
                 "deepkit.models.HardParallelMixture", "deepkit.callbacks.RichProgressBar",
                 "deepkit.training.ScaledSGD", "deepkit.metrics.Perplexity"):
        assert name in CLASSES, sorted(CLASSES)
    assert len(CLASSES) >= 25


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_init_argument_is_in_the_args_section(name):
    cls = CLASSES[name]
    assert undocumented(cls) == [], (
        f"{name}: arguments of __init__ missing from the docstring's Args section")


class _Documented:
    """Summary.

    Args:
        units: the width.
        kernel_regularizer, bias_regularizer: regularizers of the same
            groups of weights (and a continuation line that says
            `seed: ...`, which is not an entry).
        **kwargs: standard layer keyword arguments.

    Call arguments:
        training: not an argument of __init__.

    Returns:
        Something.
    """

    def __init__(self, units, kernel_regularizer=None, bias_regularizer=None, seed=None,
                 training=None, **kwargs):
        pass


class _Pattern:
    """Summary.

    Args:
        *_initializer: as for another class.
    """

    def __init__(self, kernel_initializer=None):
        pass


def test_the_check_fails_for_an_undocumented_argument():
    assert documented_args(_Documented.__doc__) == [
        "units", "kernel_regularizer", "bias_regularizer", "kwargs"]
    # `seed` only in a continuation line, `training` only under Call arguments.
    assert undocumented(_Documented) == ["seed", "training"]
    assert undocumented(_Pattern) == ["kernel_initializer"]

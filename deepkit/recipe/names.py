"""Names in recipes: look them up, check their configurations, build them.

A name is looked up in deepkit's registry (classes registered with
`deepkit.export.export`), then among the public Keras classes of the same
kind: layers, optimizers, losses, metrics, callbacks, learning-rate
schedules, initializers, constraints and regularizers. Configuration keys are
checked against the constructor's signature, simple types against its
defaults, and (unless the caller builds the objects itself right after, as
the runner does) each object is built once during validation, so that its
own argument checks run before any training; every failure is a
`RecipeError` with the key path.
"""

import inspect
import re

import keras

from deepkit import datasets, export
from deepkit.training.clipping import ThresholdRule
from deepkit.training.stages import Trainer
from deepkit.recipe.errors import RecipeError, closest, describe
from deepkit.recipe.schema import ObjectSpec, check_type, object_spec

_BASES = {
    "layer": (keras.layers, keras.layers.Layer),
    "model": (None, keras.Model),
    "optimizer": (keras.optimizers, keras.optimizers.Optimizer),
    "loss": (keras.losses, keras.losses.Loss),
    "metric": (keras.metrics, keras.metrics.Metric),
    "callback": (keras.callbacks, keras.callbacks.Callback),
    "schedule": (keras.optimizers.schedules, keras.optimizers.schedules.LearningRateSchedule),
    "initializer": (keras.initializers, keras.initializers.Initializer),
    "constraint": (keras.constraints, keras.constraints.Constraint),
    "regularizer": (keras.regularizers, keras.regularizers.Regularizer),
    "trainer": (None, Trainer),
    "threshold": (None, ThresholdRule),
}
# Kinds that may appear nested inside another object's configuration.
_NESTED_KINDS = ("schedule", "initializer", "constraint", "regularizer", "layer", "optimizer",
                 "threshold", "loss")
# Keyword arguments every Keras layer accepts through **kwargs.
_LAYER_KWARGS = ("name", "dtype", "trainable", "autocast", "input_shape", "input_dim",
                 "batch_size", "activity_regularizer")
# Loss and metric names Keras' compile() understands as strings.
_METRIC_STRINGS = ("accuracy", "acc", "crossentropy", "ce")
# Ranges of well-known numeric arguments, whatever class takes them:
# name -> (low, low included, high, high included); None is unbounded.
# A negative learning rate trains (to chance); these are refused up front.
_RANGES = {
    "learning_rate": (0.0, False, None, False),
    "momentum": (0.0, True, 1.0, False),
    "ema_momentum": (0.0, True, 1.0, True),
    "beta_1": (0.0, True, 1.0, False),
    "beta_2": (0.0, True, 1.0, False),
    "rate": (0.0, True, 1.0, False),
    "dropout": (0.0, True, 1.0, False),
    "recurrent_dropout": (0.0, True, 1.0, False),
    "clipnorm": (0.0, False, None, False),
    "global_clipnorm": (0.0, False, None, False),
    "clipvalue": (0.0, False, None, False),
}
_NOT_ACTIVATIONS = ("get", "serialize", "deserialize")


def _range_text(low, low_in, high, high_in):
    if high is None:
        return f"{'>=' if low_in else '>'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def check_range(key, value, path):
    """RecipeError when `value` is out of the known range of argument `key`."""
    bounds = _RANGES.get(key)
    if bounds is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, low_in, high, high_in = bounds
    below = value < low or (value == low and not low_in)
    above = high is not None and (value > high or (value == high and not high_in))
    if below or above:
        raise RecipeError(f"expected {key} {_range_text(*bounds)}, found {describe(value)}",
                          path)


def check_activation(key, value, path):
    """RecipeError, with the closest names, for an unknown activation name."""
    if not (key == "activation" or key.endswith("_activation")) or not isinstance(value, str):
        return
    try:
        keras.activations.get(value)
    except (ValueError, TypeError):
        known = [n for n in dir(keras.activations) if not n.startswith("_")
                 and n not in _NOT_ACTIVATIONS and callable(getattr(keras.activations, n))]
        raise RecipeError(f"unknown activation {value!r}{closest(value, known)}", path) from None


def _module_names(kind):
    module, base = _BASES[kind]
    names = [export_name for export_name, cls in export.registry().items()
             if isinstance(cls, type) and issubclass(cls, base)]
    if module is not None:
        names += [n for n in dir(module) if not n.startswith("_")
                  and isinstance(getattr(module, n), type) and issubclass(getattr(module, n), base)]
    if kind == "model":
        names += ["Sequential"]
    return sorted(set(names))


def lookup(kind, name):
    """The class registered as `name` for `kind`, or None."""
    module, base = _BASES[kind]
    bare = name[len("deepkit>"):] if name.startswith("deepkit>") else name
    cls = export.registry().get(bare)
    if isinstance(cls, type) and issubclass(cls, base):
        return cls
    if module is not None and not name.startswith("deepkit>"):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, base):
            return cls
    return None


def resolve(kind, spec):
    """The class named by `spec` (an ObjectSpec); RecipeError when unknown."""
    cls = lookup(kind, spec.name)
    if cls is None:
        article = "an" if kind[0] in "aeiou" else "a"
        raise RecipeError(
            f"unknown {kind} {spec.name!r}{closest(spec.name, _module_names(kind))}; "
            f"expected {article} {kind} registered by deepkit or a Keras {kind} class name",
            spec.path.rsplit(".", 1)[0] if spec.config else spec.path,
        )
    return cls


def _signature_params(cls):
    """(named parameters with defaults, required names, open) of cls.__init__."""
    params, required, is_open = {}, [], True
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):
            break
        has_var_kw = False
        for i, (pname, p) in enumerate(sig.parameters.items()):
            if i == 0 and pname == "self":
                continue
            if p.kind is p.VAR_KEYWORD:
                has_var_kw = True
            elif p.kind is not p.VAR_POSITIONAL and pname not in params:
                params[pname] = p.default
                if p.default is p.empty and klass is cls:
                    required.append(pname)
        if not has_var_kw:
            is_open = False
            break
        if klass in (keras.layers.Layer, keras.Model):
            for pname in _LAYER_KWARGS:
                params.setdefault(pname, None)
            is_open = False
            break
        if klass.__name__ == "BaseOptimizer" and klass.__module__.startswith("keras."):
            # Keras' optimizers accept only their named arguments (and the
            # deprecated `decay`); anything else is "not recognized".
            params.setdefault("decay", None)
            is_open = False
            break
    return params, required, is_open


def check_config(cls, spec):
    """Check the keys and simple types of spec.config against cls.__init__."""
    params, required, is_open = _signature_params(cls)
    for key, value in spec.config.items():
        path = f"{spec.path}.{key}"
        if key not in params:
            if is_open:
                continue
            raise RecipeError(
                f"{spec.name} has no argument {key!r}{closest(key, params)} "
                f"(arguments: {', '.join(sorted(params))})",
                path,
            )
        check_range(key, value, path)
        check_activation(key, value, path)
        default = params[key]
        if type(default) in (bool, int, float, str) and value is not None:
            expected = type(default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if expected in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
                continue
            if isinstance(value, dict) and len(value) == 1:
                continue  # an object given as {Name: config}, checked when built
            check_type(value, expected, path, None)
    for key in required:
        if key not in spec.config:
            raise RecipeError(f"{spec.name} needs the argument {key!r}", f"{spec.path}.{key}")


def _nested_spec(value, path):
    """`(kind, ObjectSpec)` when `value` is a nested ``{Name: config}`` of a
    known kind; None when it is plain data; RecipeError for an unknown Name."""
    if not (isinstance(value, dict) and len(value) == 1):
        return None
    (name, config), = value.items()
    if not (isinstance(name, str) and (config is None or isinstance(config, dict))):
        return None
    for kind in _NESTED_KINDS:
        if lookup(kind, name) is not None:
            return kind, ObjectSpec(name, config or {}, f"{path}.{name}")
    if name[:1].isupper():
        known = [n for kind in _NESTED_KINDS for n in _module_names(kind)]
        raise RecipeError(
            f"unknown name {name!r}{closest(name, known)}; expected an "
            "initializer, constraint, regularizer, learning-rate schedule, layer, "
            "optimizer, clipping threshold or loss registered by deepkit or Keras", f"{path}.{name}")
    return None


def _nested(value, path, construct=True):
    """Nested {Name: config} mappings of known kinds, built (construct=True)
    or only checked (construct=False, which returns None)."""
    found = _nested_spec(value, path)
    if found is not None:
        return build(*found) if construct else check_spec(*found)
    if isinstance(value, dict):
        return {k: _nested(v, f"{path}.{k}", construct) for k, v in value.items()}
    if isinstance(value, list):
        return [_nested(v, f"{path}[{i}]", construct) for i, v in enumerate(value)]
    return value


def check_spec(kind, spec):
    """Check the object that `spec` names, as `build` would, without building it."""
    if kind in ("loss", "metric") and not spec.config and lookup(kind, spec.name) is None:
        _string_object(kind, spec)
        return None
    check_config(resolve(kind, spec), spec)
    for key, value in spec.config.items():
        _nested(value, f"{spec.path}.{key}", construct=False)
    return None


def build(kind, spec, **extra):
    """Check and build the object that `spec` names, as a `kind`."""
    if kind in ("loss", "metric") and not spec.config and lookup(kind, spec.name) is None:
        return _string_object(kind, spec)
    cls = resolve(kind, spec)
    check_config(cls, spec)
    config = {k: _nested(v, f"{spec.path}.{k}") for k, v in spec.config.items()}
    try:
        return cls(**config, **extra)
    except RecipeError:
        raise
    except Exception as e:  # the class's own argument checks
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if message.startswith(f"{spec.name}:"):  # "Maxout: pieces must be ..."
            message = message[len(spec.name) + 1:].strip()
        # The argument the message is about, when it names exactly one.
        named = [k for k in spec.config if re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", message)]
        path = f"{spec.path}.{named[0]}" if len(named) == 1 else spec.path
        raise RecipeError(f"{spec.name}: {message}", path) from e


def _string_object(kind, spec):
    name = spec.name
    if kind == "metric" and name in _METRIC_STRINGS:
        return name
    getter = keras.losses.get if kind == "loss" else keras.metrics.get
    try:
        getter(name)
        return name
    except (ValueError, TypeError):
        module = keras.losses if kind == "loss" else keras.metrics
        known = [n for n in dir(module) if not n.startswith("_")] + list(export.registry())
        if kind == "metric":
            known = list(_METRIC_STRINGS) + known
        raise RecipeError(f"unknown {kind} {name!r}{closest(name, known)}", spec.path) from None


def build_layers(recipe):
    """The layers of a `sequential:` model, built."""
    return [build("layer", spec) for spec in recipe.model.sequential]


def build_model_object(recipe):
    """The registered model class of `model: {Name: config}`, built."""
    spec = recipe.model.model
    if spec.name == "Sequential":
        raise RecipeError("use 'sequential: [layers]' for a Sequential model", spec.path)
    return build("model", spec)


def build_compile_args(recipe, make=None):
    """Keyword arguments of `model.compile` for the recipe's `compile:` section,
    each object made by `make` (`build` by default; `check_spec` only checks)."""
    make = make or build
    comp = recipe.compile
    args = dict(comp.options)
    args["optimizer"] = make("optimizer", comp.optimizer)
    if comp.loss is None:  # `loss: null`: a model that defines its own loss
        args["loss"] = None
    else:
        args["loss"] = build_loss(comp.loss, make)
    args["metrics"] = build_metrics(comp.metrics, make)
    if "weighted_metrics" in args:
        args["weighted_metrics"] = [
            make("metric", object_spec(m, f"compile.weighted_metrics[{i}]", None))
            for i, m in enumerate(args["weighted_metrics"])
        ]
    return args


def build_loss(spec, make=None):
    """A loss, or a dict of per-output losses (None: the output does not count)."""
    make = make or build
    if isinstance(spec, dict):
        return {k: None if v is None else make("loss", v) for k, v in spec.items()}
    return make("loss", spec)


def build_metrics(specs, make=None):
    """A list of metrics, or a dict of per-output lists."""
    make = make or build
    if isinstance(specs, dict):
        return {k: [make("metric", m) for m in v] for k, v in specs.items()}
    return [make("metric", m) for m in specs]


def build_callbacks(specs):
    return [build("callback", spec) for spec in specs]


def validate(recipe, construct=True):
    """Check every name, configuration and data file of `recipe`.

    With ``construct=True`` each object is also built once, so that its own
    argument checks run; the recipe runner, which builds every object of a
    run exactly once itself, validates with ``construct=False``.
    """
    export.load_all()
    data = recipe.data
    try:
        entry = datasets.get(data.dataset)
    except datasets.DataError as e:
        raise RecipeError(str(e), "data.dataset") from None
    loader_options = entry.options
    for key, value in data.options.items():
        if key not in loader_options:
            raise RecipeError(
                f"data set {data.dataset!r} has no option {key!r}{closest(key, loader_options)} "
                f"(options: {', '.join(['batch_size'] + list(loader_options))})",
                f"data.{key}",
            )
        default = loader_options[key]
        if type(default) in (bool, int, float, str) and value is not None:
            check_type(value, type(default), f"data.{key}", None)
    try:
        datasets.check_files(data.dataset, **data.options)
    except datasets.DataError as e:
        raise RecipeError(str(e), "data.dataset") from None

    make = build if construct else check_spec
    if recipe.model.sequential is not None:
        for spec in recipe.model.sequential:
            make("layer", spec)
    else:
        if recipe.model.model.name == "Sequential":
            build_model_object(recipe)  # the error that names the sequential: form
        make("model", recipe.model.model)
    build_compile_args(recipe, make)
    for spec in recipe.fit.callbacks:
        make("callback", spec)
    if recipe.fit.trainer is not None:
        make("trainer", recipe.fit.trainer)
    for stage in recipe.stages:
        if stage.optimizer is not None:
            make("optimizer", stage.optimizer)
        for spec in stage.callbacks:
            make("callback", spec)
        if stage.trainer is not None:
            make("trainer", stage.trainer)
        if stage.loss is not None:
            build_loss(stage.loss, make)
        if stage.metrics is not None:
            build_metrics(stage.metrics, make)

"""The recipe schema: frozen dataclasses and the structural checks.

A recipe is plain YAML data. `parse(raw, file)` checks its structure (sections,
keys, types) and returns a `Recipe`; names of layers, optimizers and the rest
are checked afterwards by `deepkit.recipe.names`, which needs Keras. Every
problem raises `RecipeError` with the file and the key path.
"""

import copy
import dataclasses
from typing import Any, Optional

from deepkit.recipe.errors import RecipeError, closest, describe

BACKENDS = ("tensorflow", "jax", "torch")
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """A registered name and its configuration: ``{Name: {config}}`` or ``Name``."""

    name: str
    config: dict
    path: str

    def to_yaml(self):
        return {self.name: copy.deepcopy(self.config)} if self.config else self.name


@dataclasses.dataclass(frozen=True)
class DataSpec:
    dataset: str
    batch_size: int
    options: dict


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Either a `sequential` list of layers or one registered model class."""

    sequential: Optional[tuple] = None  # of ObjectSpec
    model: Optional[ObjectSpec] = None


@dataclasses.dataclass(frozen=True)
class CompileSpec:
    optimizer: Any  # ObjectSpec
    loss: Any  # ObjectSpec, a mapping output name -> ObjectSpec, or None (the model's own)
    metrics: Any  # a tuple of ObjectSpec, or a mapping output name -> tuple
    options: dict  # other compile() arguments


@dataclasses.dataclass(frozen=True)
class FitSpec:
    epochs: int
    callbacks: tuple  # of ObjectSpec
    shuffle: bool
    options: dict  # other fit() arguments
    trainer: Any = None  # ObjectSpec of a trainer (deepkit.training.Trainer), or None
    name: str = "main"  # the first stage's name
    batch_size: Optional[int] = None  # the first stage's, if not data.batch_size
    trainable: Optional[tuple] = None  # layer names that train in the first stage (others frozen)
    frozen: Optional[tuple] = None  # layer names frozen in the first stage


@dataclasses.dataclass(frozen=True)
class EvaluateSpec:
    """`evaluate:`: the loss and metrics on `splits`, and for a model with a
    sampling chain (GSN, DenoisingAutoencoder) the chain's evaluation: each a
    dict of checked options with defaults filled in, or None (see
    `GENERATIVE_KEYS` and `deepkit.recipe.generative`)."""

    splits: tuple
    chain: Optional[dict] = None
    parzen: Optional[dict] = None
    csl: Optional[dict] = None
    nearest: Optional[dict] = None


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """A later training stage continuing from the previous stage's weights."""

    name: str
    merge_validation: bool  # train on train + valid
    optimizer: Any  # ObjectSpec or None (keep the previous optimizer)
    epochs: int
    callbacks: tuple
    until: Optional[dict]  # {monitor, target}
    # What a stage changes (None: as the recipe's compile section / fit_stages'
    # default): see deepkit.training.Stage.
    trainer: Any = None  # ObjectSpec of a trainer
    trainable: Optional[tuple] = None
    frozen: Optional[tuple] = None
    loss: Any = None  # like CompileSpec.loss; `has_loss` says whether it was given
    has_loss: bool = False
    loss_weights: Any = None
    metrics: Any = None  # like CompileSpec.metrics
    batch_size: Optional[int] = None

    @property
    def recompiles(self):
        """Whether the stage is compiled anew (it changes the optimizer, the
        losses, their weights or the metrics)."""
        return (self.optimizer is not None or self.has_loss or self.loss_weights is not None
                or self.metrics is not None)


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    data: DataSpec
    model: ModelSpec
    compile: CompileSpec
    fit: FitSpec
    evaluate: EvaluateSpec
    reference: dict
    smoke: dict
    stages: tuple = ()
    backend: Optional[str] = None
    jit_compile: Any = "auto"
    mixed_precision: bool = False
    description: str = ""
    # deepkit.distribution.Scale.from_spec's input: a kind, {kind: {options}}, or None.
    distribution: Any = None
    init_from: Optional[dict] = None
    # The loaded, validated source recipe of `init_from.recipe` (a Recipe),
    # filled in by `deepkit.recipe.load`; None otherwise.
    init_source: Any = dataclasses.field(default=None, compare=False, repr=False)
    file: Optional[str] = None
    raw: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
    # Filled in by `deepkit.recipe.load`: whether the smoke block was
    # applied, and the data section of the file before any override (what
    # the reference's numbers were measured on).
    smoke_run: bool = dataclasses.field(default=False, compare=False)
    file_data: Optional[dict] = dataclasses.field(default=None, compare=False, repr=False)


TOP_KEYS = {
    "name": True,
    "seed": False,
    "data": True,
    "model": True,
    "compile": True,
    "fit": True,
    "evaluate": False,
    "reference": False,
    "smoke": False,
    "stages": False,
    "init_from": False,
    "backend": False,
    "jit_compile": False,
    "mixed_precision": False,
    "description": False,
    "distribution": False,
}
FIT_KEYS = {
    "epochs": int,
    "callbacks": list,
    "shuffle": bool,
    "validation_freq": int,
    "validation_batch_size": int,
    "trainable": list,
    "frozen": list,
    "steps_per_epoch": int,
    "class_weight": dict,
    "trainer": None,
    "name": str,
    "batch_size": int,
}
COMPILE_KEYS = {
    "optimizer": None,
    "loss": None,
    "metrics": None,
    "loss_weights": None,
    "steps_per_execution": int,
    "weighted_metrics": list,
}
STAGE_KEYS = {
    "name": str,
    "merge_validation": bool,
    "optimizer": None,
    "epochs": int,
    "callbacks": list,
    "until": dict,
    "trainer": None,
    "trainable": list,
    "frozen": list,
    "loss": None,
    "loss_weights": None,
    "metrics": None,
    "batch_size": int,
}


# The chain evaluation of `evaluate:` (deepkit.recipe.generative): for each
# block, its keys with their type and default (None: no default).
GENERATIVE_KEYS = {
    "chain": {"steps": (int, None), "chains": (int, 1), "start": (str, "test"),
              "seed": (int, None)},
    "parzen": {"sigma": (float, None), "sigmas": (list, None), "select_on": (str, "valid"),
               "data": (str, "test"), "limit": (int, None), "chunk_size": (int, 1000)},
    "csl": {"data": (str, "test"), "limit": (int, None), "binarize": (bool, False),
            "chunk_size": (int, 1000)},
    "nearest": {"pictures": (int, 20), "baseline": (int, 1000)},
}
_NON_NEGATIVE = ("pictures", "baseline")


def _mapping(value, path, file, what="a mapping"):
    if not isinstance(value, dict):
        raise RecipeError(f"expected {what}, found {describe(value)}", path, file)
    for key in value:
        if not isinstance(key, str):
            raise RecipeError(f"keys must be strings, found {describe(key)}", path, file)
    return value


def _check_keys(value, allowed, path, file, required=()):
    for key in value:
        if key not in allowed:
            raise RecipeError(
                f"unknown key {key!r}{closest(key, allowed)} (allowed: {', '.join(allowed)})",
                f"{path}.{key}" if path else key,
                file,
            )
    for key in required:
        if key not in value:
            raise RecipeError(
                f"missing required key {key!r}", f"{path}.{key}" if path else key, file
            )


def check_type(value, expected, path, file):
    """Raise unless `value` has the YAML type `expected` (int accepted for float)."""
    if expected is None:
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        name = {int: "an integer", float: "a number", bool: "true or false",
                str: "a string", list: "a list", dict: "a mapping"}[expected]
        raise RecipeError(f"expected {name}, found {describe(value)}", path, file)
    return value


def object_spec(value, path, file, what="a name or {Name: {config}}"):
    """Parse ``Name`` or ``{Name: {config}}`` into an ObjectSpec."""
    if isinstance(value, str):
        return ObjectSpec(value, {}, path)
    if isinstance(value, dict) and len(value) == 1:
        (name, config), = value.items()
        if not isinstance(name, str):
            raise RecipeError(f"expected {what}, found {describe(value)}", path, file)
        if config is None:
            config = {}
        _mapping(config, f"{path}.{name}", file, what=f"the configuration of {name} as a mapping")
        return ObjectSpec(name, copy.deepcopy(config), f"{path}.{name}")
    raise RecipeError(f"expected {what}, found {describe(value)}", path, file)


def loss_spec(value, path, file):
    """A loss: ``Name``, ``{Name: {config}}``, or a mapping of output names
    to losses (``{hints: sparse_categorical_crossentropy, label: null}``;
    null: the output does not count). A one-key mapping is per output when
    its key starts with a lower-case letter (output names; loss classes are
    CapWords) or its value is a loss name."""
    if (isinstance(value, dict) and value
            and (len(value) > 1 or all(isinstance(k, str) and k[:1].islower()
                                       or isinstance(v, str) for k, v in value.items()))):
        return {k: None if v is None else object_spec(v, f"{path}.{k}", file)
                for k, v in value.items()}
    return object_spec(value, path, file)


def metrics_spec(value, path, file):
    """Metrics: a list of ``Name`` / ``{Name: {config}}``, or a mapping of
    output names to such lists (a model with named outputs)."""
    if isinstance(value, dict):
        return {k: _object_list(v, f"{path}.{k}", file) for k, v in value.items()}
    return _object_list(value, path, file)


def _distribution(value, file):
    """`distribution:` checked (kind and options; the backend is checked when
    the run starts)."""
    from deepkit.distribution import DistributionError, Scale

    try:
        Scale.from_spec(value)
    except DistributionError as error:
        raise RecipeError(str(error).removeprefix("distribution").lstrip(": "),
                          "distribution", file) from None
    return copy.deepcopy(value)


def _freezing(section, path, file):
    """`trainable:` / `frozen:` of a `fit:` or stage section: lists of layer names."""
    out = {}
    for key in ("trainable", "frozen"):
        if key not in section:
            continue
        names = section[key]
        if not names or not all(isinstance(n, str) and n for n in names):
            raise RecipeError(f"expected a non-empty list of layer names, found "
                              f"{describe(names)}", f"{path}.{key}", file)
        out[key] = tuple(names)
    if len(out) == 2:
        raise RecipeError("give trainable (the layers that train; the rest frozen) or frozen, "
                          "not both", path, file)
    return out


def _object_list(value, path, file):
    check_type(value, list, path, file)
    return tuple(object_spec(v, f"{path}[{i}]", file) for i, v in enumerate(value))


REFERENCE_TEXT = ("source", "notes")


def _reference(ref, path, file, nested=False):
    """Check a `reference:` block: text keys, numbers, `unverified:` (metric
    names whose number is not read in the paper) and `per_dataset:` (the
    paper's numbers on other data sets, by deepkit data-set name)."""
    ref = _mapping(ref, path, file)
    for key, value in ref.items():
        where = f"{path}.{key}"
        if key in REFERENCE_TEXT:
            check_type(value, str, where, file)
        elif key == "unverified":
            check_type(value, list, where, file)
            for i, name in enumerate(value):
                numbers = [k for k, v in ref.items() if k not in REFERENCE_TEXT
                           and k not in ("unverified", "per_dataset")]
                if name not in numbers:
                    raise RecipeError(f"expected the name of a number of this reference, "
                                      f"found {describe(name)}{closest(name, numbers)}",
                                      f"{where}[{i}]", file)
        elif key == "per_dataset" and not nested:
            for dataset, numbers in _mapping(value, where, file).items():
                _reference(numbers, f"{where}.{dataset}", file, nested=True)
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RecipeError(f"expected a number (the paper's value of {key}), "
                              f"found {describe(value)}", where, file)
    return ref


def _split(value, path, file, extra=()):
    allowed = SPLITS + tuple(extra)
    if value not in allowed:
        raise RecipeError(f"expected one of {', '.join(allowed)}, found {describe(value)}"
                          f"{closest(value, allowed)}", path, file)
    return value


def _generative_block(name, value, file):
    """One block of the chain evaluation, checked, with its defaults."""
    path = f"evaluate.{name}"
    keys = GENERATIVE_KEYS[name]
    _check_keys(_mapping(value, path, file), keys, path, file)
    block = {}
    for key, (kind, default) in keys.items():
        where = f"{path}.{key}"
        item = value.get(key, default)
        if item is None:
            block[key] = None
            continue
        item = check_type(item, kind, where, file)
        if kind in (int, float) and not (item >= 0 if key in _NON_NEGATIVE else item > 0):
            bound = "a non-negative" if key in _NON_NEGATIVE else "a positive"
            raise RecipeError(f"expected {bound} {'integer' if kind is int else 'number'}, "
                              f"found {describe(item)}", where, file)
        block[key] = item
    if name == "chain":
        if block["steps"] is None:
            raise RecipeError("missing required key 'steps' (chain steps; each step's mean "
                              "p(x) is one sample)", f"{path}.steps", file)
        _split(block["start"], f"{path}.start", file, extra=("noise",))
    if name in ("parzen", "csl"):
        _split(block["data"], f"{path}.data", file)
    if name == "parzen":
        given = [key for key in ("sigma", "sigmas") if key in value]
        if len(given) != 1:
            raise RecipeError("expected exactly one of 'sigma' (a fixed bandwidth, e.g. the "
                              "authors' 0.2) and 'sigmas' (candidates, the best chosen on "
                              f"'select_on'), found {' and '.join(given) or 'neither'}",
                              path, file)
        if block["sigmas"] is not None:
            if not block["sigmas"]:
                raise RecipeError("expected at least one candidate bandwidth, found an empty "
                                  "list", f"{path}.sigmas", file)
            for i, sigma in enumerate(block["sigmas"]):
                if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) \
                        or not sigma > 0:
                    raise RecipeError(f"expected a positive number, found {describe(sigma)}",
                                      f"{path}.sigmas[{i}]", file)
            _split(block["select_on"], f"{path}.select_on", file)
            if block["select_on"] == block["data"]:
                raise RecipeError(f"sigma would be chosen on the split it scores "
                                  f"({block['data']}), which flatters the estimate; choose it "
                                  "on another split (valid)", f"{path}.select_on", file)
        else:
            if "select_on" in value:
                raise RecipeError("'select_on' needs 'sigmas' (candidates to choose from)",
                                  f"{path}.select_on", file)
            block["select_on"] = None
    return block


def _evaluate(evaluate, file):
    """The `evaluate:` section as an `EvaluateSpec`."""
    evaluate = _mapping(evaluate, "evaluate", file)
    _check_keys(evaluate, ("splits",) + tuple(GENERATIVE_KEYS), "evaluate", file)
    splits = check_type(evaluate.get("splits", ["valid", "test"]), list, "evaluate.splits", file)
    for i, split in enumerate(splits):
        _split(split, f"evaluate.splits[{i}]", file)
    blocks = {name: _generative_block(name, evaluate[name], file)
              for name in GENERATIVE_KEYS if evaluate.get(name) is not None}
    users = [name for name in blocks if name != "chain"]
    if users and "chain" not in blocks:
        raise RecipeError(f"evaluate.{users[0]} scores the samples of a chain: add "
                          "'chain: {steps: N}' (N chain steps, e.g. 10000)", "evaluate.chain",
                          file)
    if "chain" in blocks and not users:
        raise RecipeError("the chain has nothing to feed: add parzen, csl or nearest",
                          "evaluate.chain", file)
    return EvaluateSpec(tuple(splits), **blocks)


def check_top_keys(raw, file=None):
    """RecipeError for a top-level key the schema does not know."""
    _check_keys(raw, TOP_KEYS, "", file)


def parse(raw, file=None):
    """Check the structure of a recipe mapping and return a `Recipe`."""
    _mapping(raw, None, file, what="a mapping of recipe sections at the top level")
    check_top_keys(raw, file)
    for key, required in TOP_KEYS.items():
        if required and key not in raw:
            raise RecipeError(f"missing required section {key!r}", key, file)

    name = check_type(raw["name"], str, "name", file)
    seed = check_type(raw.get("seed", 1), int, "seed", file)

    data = _mapping(raw["data"], "data", file)
    if "dataset" not in data:
        raise RecipeError("missing required key 'dataset'", "data.dataset", file)
    dataset = check_type(data["dataset"], str, "data.dataset", file)
    batch_size = check_type(data.get("batch_size", 32), int, "data.batch_size", file)
    if batch_size <= 0:
        raise RecipeError(f"expected a positive integer, found {describe(batch_size)}",
                          "data.batch_size", file)
    options = {k: v for k, v in data.items() if k not in ("dataset", "batch_size")}

    model = _mapping(raw["model"], "model", file)
    if "sequential" in model:
        _check_keys(model, ("sequential",), "model", file)
        layers = _object_list(model["sequential"], "model.sequential", file)
        if not layers:
            raise RecipeError("expected at least one layer, found an empty list",
                              "model.sequential", file)
        model_spec = ModelSpec(sequential=layers)
    elif len(model) == 1:
        model_spec = ModelSpec(model=object_spec(model, "model", file))
    else:
        raise RecipeError(
            "expected 'sequential: [layers]' or one registered model class "
            f"{{Name: {{config}}}}, found keys {sorted(model)}", "model", file)

    comp = _mapping(raw["compile"], "compile", file)
    _check_keys(comp, COMPILE_KEYS, "compile", file, required=("optimizer", "loss"))
    for key, kind in COMPILE_KEYS.items():
        if key in comp:
            check_type(comp[key], kind, f"compile.{key}", file)
    optimizer = object_spec(comp["optimizer"], "compile.optimizer", file)
    if comp["loss"] is None:
        loss = None  # the model's own loss (GSN, DAE): fit and evaluate get the inputs only
    else:
        loss = loss_spec(comp["loss"], "compile.loss", file)
    metrics = metrics_spec(comp.get("metrics", []), "compile.metrics", file)
    compile_options = {k: v for k, v in comp.items() if k not in ("optimizer", "loss", "metrics")}

    fit = _mapping(raw["fit"], "fit", file)
    _check_keys(fit, FIT_KEYS, "fit", file, required=("epochs",))
    for key, kind in FIT_KEYS.items():
        if key in fit:
            check_type(fit[key], kind, f"fit.{key}", file)
    if fit["epochs"] <= 0:
        raise RecipeError(f"expected a positive integer, found {describe(fit['epochs'])}",
                          "fit.epochs", file)
    fit_spec = FitSpec(
        epochs=fit["epochs"],
        callbacks=_object_list(fit.get("callbacks", []), "fit.callbacks", file),
        shuffle=fit.get("shuffle", True),
        options={k: v for k, v in fit.items()
                 if k not in ("epochs", "callbacks", "shuffle", "trainer", "trainable", "frozen",
                              "name", "batch_size")},
        name=fit.get("name", "main"),
        batch_size=fit.get("batch_size"),
        trainer=(object_spec(fit["trainer"], "fit.trainer", file)
                 if fit.get("trainer") is not None else None),
        **_freezing(fit, "fit", file),
    )

    evaluate = _evaluate(raw.get("evaluate", {}) or {}, file)

    reference = _reference(raw.get("reference", {}) or {}, "reference", file)

    smoke = _mapping(raw.get("smoke", {}) or {}, "smoke", file)

    stages = []
    for i, stage in enumerate(check_type(raw.get("stages", []), list, "stages", file)):
        path = f"stages[{i}]"
        _mapping(stage, path, file)
        _check_keys(stage, STAGE_KEYS, path, file, required=("name", "epochs"))
        for key, kind in STAGE_KEYS.items():
            if key in stage:
                check_type(stage[key], kind, f"{path}.{key}", file)
        until = stage.get("until")
        if until is not None:
            _check_keys(until, ("monitor", "target"), f"{path}.until", file,
                        required=("monitor", "target"))
            if until["target"] != "previous_train_loss" and not isinstance(until["target"], (int, float)):
                raise RecipeError("expected a number or 'previous_train_loss' (the training "
                                  "loss of the previous stage at its best epoch), found "
                                  f"{describe(until['target'])}", f"{path}.until.target", file)
        stages.append(StageSpec(
            name=stage["name"],
            merge_validation=stage.get("merge_validation", False),
            optimizer=(object_spec(stage["optimizer"], f"{path}.optimizer", file)
                       if "optimizer" in stage else None),
            epochs=stage["epochs"],
            callbacks=_object_list(stage.get("callbacks", []), f"{path}.callbacks", file),
            until=until,
            trainer=(object_spec(stage["trainer"], f"{path}.trainer", file)
                     if stage.get("trainer") is not None else None),
            **_freezing(stage, path, file),
            loss=(loss_spec(stage["loss"], f"{path}.loss", file)
                  if stage.get("loss") is not None else None),
            has_loss="loss" in stage,
            loss_weights=stage.get("loss_weights"),
            metrics=(metrics_spec(stage["metrics"], f"{path}.metrics", file)
                     if "metrics" in stage else None),
            batch_size=stage.get("batch_size"),
        ))

    init_from = raw.get("init_from")
    if init_from is not None:
        _mapping(init_from, "init_from", file)
        _check_keys(init_from, ("path", "recipe", "set", "layers"), "init_from", file,
                    required=("layers",))
        sources = [key for key in ("path", "recipe") if key in init_from]
        if len(sources) != 1:
            raise RecipeError("expected exactly one of 'path' (a finished run directory or a "
                              ".keras file) and 'recipe' (a recipe to run first), found "
                              f"{' and '.join(sources) or 'neither'}", "init_from", file)
        source = sources[0]
        check_type(init_from[source], str, f"init_from.{source}", file)
        overrides = init_from.get("set", [])
        if "set" in init_from and source != "recipe":
            raise RecipeError("'set' (overrides of the source recipe) needs 'recipe'",
                              "init_from.set", file)
        check_type(overrides, list, "init_from.set", file)
        for i, text in enumerate(overrides):
            if not isinstance(text, str) or "=" not in text:
                raise RecipeError(f"expected KEY.PATH=VALUE text, found {describe(text)}",
                                  f"init_from.set[{i}]", file)
        layers = check_type(init_from["layers"], list, "init_from.layers", file)
        if not layers or not all(isinstance(n, str) for n in layers):
            raise RecipeError(f"expected a non-empty list of layer names, found {describe(layers)}",
                              "init_from.layers", file)
        if model_spec.sequential is not None:
            # A sequential model's layers are found by the names the recipe
            # gives them (Keras' automatic names change with whatever was
            # built before), so a misspelt name is caught here, before a
            # source recipe runs for minutes.
            named = [spec.config.get("name") for spec in model_spec.sequential
                     if isinstance(spec.config.get("name"), str)]
            for i, layer_name in enumerate(layers):
                if layer_name not in named:
                    raise RecipeError(
                        f"no layer of model.sequential is named {layer_name!r}; give the "
                        f"layer `name: {layer_name}` in its configuration (named layers: "
                        f"{', '.join(named) or 'none'})", f"init_from.layers[{i}]", file)
        init_from = {source: init_from[source], "layers": list(layers)}
        if source == "recipe":
            init_from["set"] = list(overrides)

    backend = raw.get("backend")
    if backend is not None and backend not in BACKENDS:
        raise RecipeError(f"expected one of {', '.join(BACKENDS)}, found {describe(backend)}"
                          f"{closest(backend, BACKENDS)}", "backend", file)
    jit = raw.get("jit_compile", "auto")
    if jit not in (True, False, "auto"):
        raise RecipeError(f"expected true, false or auto, found {describe(jit)}", "jit_compile", file)

    return Recipe(
        name=name,
        seed=seed,
        data=DataSpec(dataset, batch_size, options),
        model=model_spec,
        compile=CompileSpec(optimizer, loss, metrics, compile_options),
        fit=fit_spec,
        evaluate=evaluate,
        reference=dict(reference),
        smoke=dict(smoke),
        stages=tuple(stages),
        backend=backend,
        jit_compile=jit,
        mixed_precision=check_type(raw.get("mixed_precision", False), bool, "mixed_precision", file),
        description=check_type(raw.get("description", ""), str, "description", file),
        distribution=_distribution(raw.get("distribution"), file),
        init_from=init_from,
        file=file,
        raw=copy.deepcopy(raw),
    )

"""Read a recipe file, apply overrides and the smoke block, validate it.

`read(path)` needs no Keras (the CLI reads the backend from the recipe before
importing Keras); `load(path, overrides, smoke)` also checks every name,
configuration and data file, so that a bad recipe fails before any work.
"""

import dataclasses
import copy
import re
from pathlib import Path

import yaml

from deepkit.recipe.errors import RecipeError, describe
from deepkit.recipe import schema

_TOKEN = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


class _SafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` (no tags, plain data) that also reads ``1e-3`` as a number.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``), so
    ``learning_rate: 1e-3`` would be the string "1e-3"; YAML 1.2 and JSON
    read it as a number, and so do recipes.
    """


_SafeLoader.yaml_implicit_resolvers = {
    key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_load(text):
    """`yaml.safe_load(text)`, reading ``1e-3`` as a number."""
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 (a SafeLoader)


def read(path):
    """The recipe file at `path` as plain data (`yaml.safe_load`)."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("no such recipe file", file=path) from None
    except UnicodeDecodeError as e:
        before = e.object[: e.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        raise RecipeError(f"line {line}, column {column}: the file is not UTF-8 text "
                          f"(byte {e.object[e.start:e.start + 1]!r} there); save it as "
                          "UTF-8", file=path) from None
    except IsADirectoryError:
        raise RecipeError("expected a recipe file, found a directory", file=path) from None
    except OSError as e:
        raise RecipeError(f"cannot read the file: {e.strerror or e}", file=path) from None
    try:
        raw = safe_load(text)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        line = f"line {mark.line + 1}: " if mark else ""
        raise RecipeError(
            f"{line}YAML tags such as {e.problem.split()[-1] if e.problem else 'this'} "
            "are not allowed: recipes are plain data (mappings, lists, numbers, strings)",
            file=path,
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError(f"{line}invalid YAML: {problem}", file=path) from None
    if raw is None:
        raise RecipeError("the file is empty", file=path)
    if not isinstance(raw, dict):
        raise RecipeError(f"expected a mapping of recipe sections, found {describe(raw)}", file=path)
    return raw


def split_path(path):
    """``"a.b[2].c"`` -> ``["a", "b", 2, "c"]``; RecipeError when malformed."""
    tokens, pos = [], 0
    text = str(path)
    while pos < len(text):
        if text[pos] == "." and tokens and pos + 1 < len(text):
            pos += 1
        match = _TOKEN.match(text, pos)
        if not match:
            raise RecipeError(f"malformed key path {text!r}")
        tokens.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    if not tokens:
        raise RecipeError(f"malformed key path {text!r}")
    return tokens


def set_path(raw, path, value, origin):
    """Set `raw[path] = value` in place; `origin` names the override in errors."""
    tokens = split_path(path)
    node, walked = raw, ""
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        here = f"{walked}[{token}]" if isinstance(token, int) else (f"{walked}.{token}" if walked else token)
        if isinstance(token, int):
            if not isinstance(node, list):
                raise RecipeError(f"{origin}: {walked or 'the recipe'} is not a list, cannot index [{token}]")
            if not -len(node) <= token < len(node):
                raise RecipeError(f"{origin}: index [{token}] is out of range, {walked} has {len(node)} items")
        else:
            if not isinstance(node, dict):
                raise RecipeError(f"{origin}: {walked or 'the recipe'} is not a mapping, cannot take key {token!r}")
            if not last and token not in node:
                from deepkit.recipe.errors import closest
                raise RecipeError(f"{origin}: no key {here!r} in the recipe{closest(token, node)}")
        if last:
            node[token] = value
        else:
            node = node[token]
        walked = here
    return raw


def _plain(value):
    """Whether `value` is made only of None, str, int, float, bool, lists and dicts."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def parse_override(text):
    """``"a.b[2].c=value"`` -> (path, value), the value read as YAML.

    Scalars, and flow lists and mappings of them (``[300, 300]``,
    ``{stddev: 0.1}``), become the values YAML gives; anything else that
    YAML would turn into another type (a date) stays text.
    """
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected KEY.PATH=VALUE")
    path, value = text.split("=", 1)
    try:
        parsed = safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    if not _plain(parsed):
        parsed = value
    return path.strip(), parsed


def resolve(raw, overrides=(), smoke=False, file=None):
    """A copy of `raw` with the smoke block (if `smoke`) and overrides applied."""
    raw = copy.deepcopy(raw)
    try:
        # A misspelt section is reported as such, not as a missing key of
        # the smoke block or of an override that reaches into it.
        schema.check_top_keys(raw)
        if smoke:
            block = raw.get("smoke") or {}
            if not isinstance(block, dict):
                raise RecipeError(f"expected a mapping, found {describe(block)}", "smoke")
            for path, value in block.items():
                set_path(raw, path, value, origin=f"smoke.{path}")
        for text in overrides:
            path, value = parse_override(text)
            set_path(raw, path, value, origin=f"--set {text}")
    except RecipeError as e:
        raise e.at(file=file) from None
    return raw


def load(path, overrides=(), smoke=False, check_names=True, _chain=()):
    """Read, resolve and fully validate the recipe at `path`.

    Args:
        path: the YAML file.
        overrides: ``"a.b[2].c=value"`` strings (``--set``).
        smoke: apply the recipe's `smoke:` block first.
        check_names: also check names, configurations and data files (this
            imports Keras).

    Returns:
        A `deepkit.recipe.schema.Recipe`. With ``init_from.recipe``, the
        source recipe is loaded and validated too (with the ``set``
        overrides, and its smoke block for a smoke run) and kept as
        ``recipe.init_source``.
    """
    original = read(path)
    raw = resolve(original, overrides, smoke, file=str(path))
    recipe = schema.parse(raw, file=str(path))
    file_data = original.get("data") if isinstance(original.get("data"), dict) else {}
    recipe = dataclasses.replace(recipe, smoke_run=bool(smoke),
                                 file_data=copy.deepcopy(file_data))
    if recipe.init_from is not None and "recipe" in recipe.init_from:
        source = _load_source(recipe, path, smoke, _chain)
        recipe = dataclasses.replace(recipe, init_source=source)
    if check_names:
        check(recipe)
    return recipe


def check(recipe, construct=True):
    """Check every name, configuration and data file of a parsed recipe (and
    of its `init_from` source); this imports Keras. `load` calls it unless
    `check_names=False`, which checks the structure alone, without Keras.

    With ``construct=False`` the objects are checked against their
    constructors' signatures but not built (the runner builds each once).
    """
    from deepkit.recipe import names

    try:
        names.validate(recipe, construct=construct)
    except RecipeError as e:
        raise e.at(file=recipe.file) from None
    if recipe.init_source is not None:
        try:
            check(recipe.init_source, construct=construct)
        except RecipeError as e:
            raise RecipeError(f"the source recipe {recipe.init_source.file} is not valid: {e}",
                              "init_from.recipe", recipe.file) from None


def recipes_dir():
    """The shipped recipes: ./recipes, else the one beside the package."""
    here = Path.cwd() / "recipes"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "recipes"


def find_source(name, recipe_file):
    """The file of `init_from.recipe`: beside the recipe, as given, or shipped."""
    here = Path(recipe_file).resolve().parent if recipe_file else Path.cwd()
    for candidate in (here / name, here / f"{name}.yaml", Path(name),
                      recipes_dir() / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _load_source(recipe, path, smoke, chain):
    """Load and validate the recipe that `init_from.recipe` names (with its
    `set` overrides and, for a smoke run, its own smoke block)."""
    name = recipe.init_from["recipe"]
    source_file = find_source(name, path)
    if source_file is None:
        raise RecipeError(f"no recipe {name!r} beside {path}, in the working directory or "
                          "among the shipped recipes", "init_from.recipe", str(path))
    key = str(Path(source_file).resolve())
    chain = chain + (str(Path(path).resolve()),)
    if key in chain:
        raise RecipeError(f"{name!r} initializes from itself through init_from "
                          f"({' -> '.join(Path(c).stem for c in chain + (key,))})",
                          "init_from.recipe", str(path))
    try:
        return load(source_file, recipe.init_from.get("set", ()), smoke, check_names=False,
                    _chain=chain)
    except RecipeError as e:
        raise RecipeError(f"the source recipe {source_file} is not valid: {e}",
                          "init_from.recipe", str(path)) from None


def dump(recipe):
    """The resolved recipe as YAML text."""
    return yaml.safe_dump(recipe.raw, sort_keys=False, default_flow_style=None)

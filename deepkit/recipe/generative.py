"""The chain evaluation of `evaluate:` for models with a sampling chain (GSN, DAE).

A recipe asks for it with blocks beside `splits:` (checked by
`deepkit.recipe.schema`; their keys and defaults are `GENERATIVE_KEYS`):

    evaluate:
      splits: [test]                  # the walkback loss, noise off
      chain: {steps: 10000, chains: 1, start: test, seed: 1}
      parzen: {sigma: 0.2, data: test}          # or {sigmas: [...], select_on: valid}
      csl: {data: test, binarize: true}
      nearest: {pictures: 20, baseline: 1000}

`evaluate` runs, with the library's public functions only, what Bengio et
al. 2014 ran for their Parzen number (PROTOCOLS.md, GSN): `chains` chains of
`steps` steps from corrupted images of the `start` split (the first ones;
`noise`: uniform noise), hidden layers at zero, no burn-in or thinning,
every step's mean p(x) one sample (`model.run_chain`); then

- `parzen`: `parzen_log_likelihood` of the `data` rows (the first `limit`)
  under the samples, with `sigma`, or the best of `sigmas` on `select_on`
  (`select_sigma`; the table is kept);
- `csl`: `csl_log_likelihood` of the `data` rows under the visible
  distributions of the chain's hidden states (Bengio, Yao & Cho 2013), from
  `model.visible_logits` of the states `run_chain` returns (with
  `binarize`, the rows thresholded at 0.5: a Bernoulli likelihood needs
  binary data);
- `nearest`: each sample's nearest training image (`nearest_neighbours`):
  the mean, median and minimum distance, the same mean for the first
  `baseline` test images (what a new digit's distance looks like), and a
  picture of `pictures` samples, evenly spaced along the chain, above their
  nearest training images.

The numbers go into the run's metrics (``test_parzen_log_likelihood``,
``test_parzen_log_likelihood_se``, ``parzen_sigma``, ``test_csl_log_likelihood``,
``test_csl_log_likelihood_se``, ``nearest_distance_mean``, ...); the sigma
table, sizes, times and picture files into results.json's ``generative``.
"""

import time
from pathlib import Path

import numpy as np

from deepkit.callbacks.sample_grid import (evenly_spaced, image_shape_for, interleave_rows,
                                           save_png, tile_images)
from deepkit.metrics import (csl_log_likelihood, nearest_neighbours, parzen_log_likelihood,
                             select_sigma)
from deepkit.recipe.errors import RecipeError

CHAIN_PICTURE = "chain.png"
NEAREST_PICTURE = "nearest_neighbours.png"
# The first steps of the first chain in the chain picture, 20 per row (the
# authors' 20 x 20 samples_epoch_N.png).
_CHAIN_PICTURE_STEPS = 400
_CHAIN_PICTURE_COLUMNS = 20
# Hidden states per call of model.visible_logits.
_LOGIT_BLOCK = 1000


def enabled(spec):
    """Whether `spec` (an `EvaluateSpec`) asks for a chain evaluation."""
    return spec.chain is not None


def _needed_splits(spec):
    """{split: key path} of every split the evaluation reads."""
    needed = {}
    if spec.chain["start"] != "noise":
        needed[spec.chain["start"]] = "evaluate.chain.start"
    if spec.parzen is not None:
        needed.setdefault(spec.parzen["data"], "evaluate.parzen.data")
        if spec.parzen["select_on"] is not None:
            needed.setdefault(spec.parzen["select_on"], "evaluate.parzen.select_on")
    if spec.csl is not None:
        needed.setdefault(spec.csl["data"], "evaluate.csl.data")
    return needed


def check(recipe, splits, model):
    """RecipeError, before any training, when the chain evaluation of
    `recipe` cannot run on `model` and these data `splits`."""
    spec = recipe.evaluate
    if not enabled(spec):
        return
    from deepkit.models import GSN, DenoisingAutoencoder

    if not isinstance(model, (GSN, DenoisingAutoencoder)):
        raise RecipeError(f"the chain evaluation needs a model with a sampling chain (GSN or "
                          f"DenoisingAutoencoder); this recipe's model is "
                          f"{type(model).__name__}", "evaluate.chain", recipe.file)
    for split, path in _needed_splits(spec).items():
        if splits.get(split) is None:
            hint = " (set data.validation)" if split == "valid" else ""
            raise RecipeError(f"the data give no {split} split{hint}", path, recipe.file)
    start = spec.chain["start"]
    if start != "noise" and len(splits[start][0]) < spec.chain["chains"]:
        raise RecipeError(f"{spec.chain['chains']} chains start from the first images of "
                          f"{start}, which has only {len(splits[start][0])}",
                          "evaluate.chain.chains", recipe.file)


def _rows(splits, split, limit, binarize=False):
    x = np.asarray(splits[split][0], dtype="float32")
    x = x.reshape(len(x), -1)[:limit]
    return (x > 0.5).astype("float32") if binarize else x


def _visible_logits(model, hiddens):
    """`model.visible_logits` of every chain step's hidden state, ``[chains · steps, d]``."""
    import keras

    states = [h.reshape(-1, h.shape[-1]) for h in hiddens]
    blocks = []
    for start in range(0, len(states[0]), _LOGIT_BLOCK):
        block = [h[start:start + _LOGIT_BLOCK] for h in states]
        blocks.append(keras.ops.convert_to_numpy(model.visible_logits(block)))
    return np.concatenate(blocks).astype("float32")


def _parzen(samples, splits, parzen, log):
    began = time.perf_counter()
    data = _rows(splits, parzen["data"], parzen["limit"])
    record = {"data": parzen["data"], "rows": len(data), "samples": len(samples)}
    sigma = parzen["sigma"]
    if sigma is None:
        chosen = select_sigma(samples, _rows(splits, parzen["select_on"], parzen["limit"]),
                              parzen["sigmas"], parzen["chunk_size"])
        sigma = chosen.sigma
        record.update(select_on=parzen["select_on"],
                      sigma_table=[[float(s), float(ll)] for s, ll in chosen.table])
    estimate = parzen_log_likelihood(samples, data, sigma, parzen["chunk_size"])
    record.update(sigma=float(sigma), seconds=round(time.perf_counter() - began, 2))
    log(f"Parzen log-likelihood of {len(data)} {parzen['data']} rows: {estimate} "
        f"(sigma {sigma:g})")
    return {f"{parzen['data']}_parzen_log_likelihood": estimate.mean,
            f"{parzen['data']}_parzen_log_likelihood_se": estimate.standard_error,
            "parzen_sigma": float(sigma)}, record


def _csl(model, hiddens, splits, csl, log):
    began = time.perf_counter()
    data = _rows(splits, csl["data"], csl["limit"], csl["binarize"])
    logits = _visible_logits(model, hiddens)
    estimate = csl_log_likelihood(logits, data, csl["chunk_size"])
    log(f"CSL log-likelihood of {len(data)} {csl['data']} rows: {estimate}")
    return {f"{csl['data']}_csl_log_likelihood": estimate.mean,
            f"{csl['data']}_csl_log_likelihood_se": estimate.standard_error}, {
        "data": csl["data"], "rows": len(data), "hidden_states": len(logits),
        "binarize": csl["binarize"], "seconds": round(time.perf_counter() - began, 2)}


def _nearest(samples, splits, nearest, shape, run_dir, log):
    began = time.perf_counter()
    train = _rows(splits, "train", None)
    found = nearest_neighbours(samples, train)
    record = {"samples": len(samples), "train_rows": len(train)}
    metrics = {"nearest_distance_mean": float(found.distances.mean()),
               "nearest_distance_median": float(np.median(found.distances)),
               "nearest_distance_min": float(found.distances.min())}
    if nearest["baseline"] and splits.get("test") is not None:
        test = _rows(splits, "test", nearest["baseline"])
        metrics["test_nearest_distance_mean"] = float(
            nearest_neighbours(test, train).distances.mean())
        record["baseline_rows"] = len(test)
    if run_dir is not None and nearest["pictures"]:
        shown = np.unique(np.linspace(0, len(samples) - 1, nearest["pictures"]).astype(int))
        columns = min(len(shown), 10)
        grid = tile_images(interleave_rows(samples[shown], train[found.indices[shown]],
                                           columns), columns, shape)
        save_png(grid, Path(run_dir) / NEAREST_PICTURE)
        record.update(picture=NEAREST_PICTURE, picture_samples=shown.tolist(),
                      picture_distances=[round(float(d), 3) for d in found.distances[shown]])
    record["seconds"] = round(time.perf_counter() - began, 2)
    log(f"nearest training image: mean distance {metrics['nearest_distance_mean']:.3f}, "
        f"min {metrics['nearest_distance_min']:.3f}")
    return metrics, record


def evaluate(model, splits, spec, seed, run_dir=None, log=print):
    """Run the chain evaluation of `spec` (an `EvaluateSpec`).

    Args:
        model: a trained GSN or DenoisingAutoencoder.
        splits: ``{split: (x, y, ...) or None}`` (the recipe's data).
        spec: the recipe's `evaluate:` section.
        seed: the chain's seed when `spec.chain` gives none.
        run_dir: where the pictures are written (None: no pictures).
        log: a function of one progress message.

    Returns:
        ``(metrics, details)``: numbers for the run's metrics, and the
        JSON-ready record of how they were made.
    """
    chain_spec = spec.chain
    chain_seed = chain_spec["seed"] if chain_spec["seed"] is not None else seed
    chains, steps = chain_spec["chains"], chain_spec["steps"]
    dim = int(np.prod(splits["train"][0].shape[1:]))
    shape = image_shape_for(dim)
    if chain_spec["start"] == "noise":
        initial = np.random.default_rng(chain_seed).uniform(size=(chains, dim))
    else:
        initial = _rows(splits, chain_spec["start"], chains)
    log(f"chain evaluation: {chains} chain(s) of {steps} steps from {chain_spec['start']}")
    began = time.perf_counter()
    chain = model.run_chain(initial.astype("float32"), steps, chain_seed,
                            return_hiddens=spec.csl is not None)
    samples = chain["probabilities"].reshape(chains * steps, dim)
    details = {"chain": {**chain_spec, "seed": chain_seed, "samples": len(samples),
                         "seconds": round(time.perf_counter() - began, 2)}}
    metrics = {}
    if spec.parzen is not None:
        numbers, details["parzen"] = _parzen(samples, splits, spec.parzen, log)
        metrics.update(numbers)
    if spec.csl is not None:
        numbers, details["csl"] = _csl(model, chain.pop("hiddens"), splits, spec.csl, log)
        metrics.update(numbers)
    if spec.nearest is not None:
        numbers, details["nearest"] = _nearest(samples, splits, spec.nearest, shape, run_dir,
                                               log)
        metrics.update(numbers)
    pictures = [NEAREST_PICTURE] if "picture" in details.get("nearest", {}) else []
    if run_dir is not None:
        first = chain["probabilities"][0, :_CHAIN_PICTURE_STEPS]
        save_png(tile_images(first, min(_CHAIN_PICTURE_COLUMNS, len(first)), shape),
                 Path(run_dir) / CHAIN_PICTURE)
        pictures.append(CHAIN_PICTURE)
    details["pictures"] = pictures
    return metrics, details


SAMPLE_PICTURES = ("sample_grid.png", "sample_inpainting.png", "sample_nearest.png")


def sample_pictures(model, test, train, out, seed=1, steps=100, chains=10, columns=10,
                    start="test"):
    """The pictures of `deepkit sample`, written into the folder `out`.

    - ``sample_grid.png``: `chains` chains of `steps` steps (from the first
      test digits, corrupted, or from uniform noise with ``start="noise"``),
      one row each, at `columns` evenly spaced steps;
    - ``sample_inpainting.png``: the first `chains` test digits with their
      bottom half unknown (Bengio et al. 2014, Figure 3): the digit, the
      known half (the unknown one grey), and the clamped chain's mean p(x)
      after `steps` steps (`model.inpaint`);
    - ``sample_nearest.png``: the grid's samples, each row above the
      nearest training images (`nearest_neighbours`).

    Args:
        model: a GSN or DenoisingAutoencoder.
        test, train: ``[n, pixels]`` images in [0, 1].
        out: the folder.
        seed, steps, chains, columns: as above; the same seed gives the
            same pictures.
        start: ``"test"`` or ``"noise"``.

    Returns:
        ``(paths, distances)``: the files written, and the distance of each
        grid sample to its nearest training image.
    """
    test = np.asarray(test, "float32").reshape(len(test), -1)
    train = np.asarray(train, "float32").reshape(len(train), -1)
    shape = image_shape_for(test.shape[1])
    if start not in ("test", "noise"):
        raise ValueError(f"start must be 'test' or 'noise', got {start!r}")
    if len(test) < chains:
        raise ValueError(f"{chains} chains need {chains} test images, found {len(test)}")
    if columns > steps:
        raise ValueError(f"columns ({columns}) must not exceed steps ({steps})")
    out = Path(out)
    initial = test[:chains] if start == "test" else None
    samples = evenly_spaced(model.sample(chains, steps, seed, initial=initial), columns)
    paths = [save_png(tile_images(samples, columns, shape), out / SAMPLE_PICTURES[0])]

    digits = test[:chains]
    known = np.zeros(shape, bool)
    known[: shape[0] // 2] = True
    known = np.broadcast_to(known.reshape(-1), digits.shape)
    filled = model.inpaint(digits, known, steps, seed)[:, -1]
    rows = np.concatenate([digits, np.where(known, digits, np.nan), filled])
    paths.append(save_png(tile_images(rows, chains, shape), out / SAMPLE_PICTURES[1]))

    found = nearest_neighbours(samples, train)
    grid = tile_images(interleave_rows(samples, train[found.indices], columns), columns, shape)
    paths.append(save_png(grid, out / SAMPLE_PICTURES[2]))
    return paths, found.distances

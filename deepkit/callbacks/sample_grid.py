"""Pictures of a generative chain during training: `SampleGrid`, and the tiling helpers.

`tile_images` lays images out in a grid as one uint8 array and `save_png`
writes it (Pillow); `deepkit sample` and the recipe engine's chain evaluation
draw their pictures with them too.
"""

import importlib.util
import math
import os
from pathlib import Path

import keras
import numpy as np

from deepkit.callbacks._config import FromConfig
from deepkit.export import export

# The grey of the lines between tiles (white digits on black stay apart).
_PADDING_VALUE = 0.5


def image_shape_for(size):
    """``(side, side)`` for a square number of pixels (784 -> (28, 28)), else a ValueError."""
    side = math.isqrt(int(size))
    if side * side != int(size):
        raise ValueError(f"{size} pixels are not a square image: give image_shape "
                         "(height, width)")
    return side, side


def tile_images(images, columns, image_shape=None, padding=1):
    """Images in a grid, row by row, as one uint8 array (0 black, 255 white).

    Args:
        images: ``[n, pixels]`` or ``[n, height, width]`` values in [0, 1]
            (a chain's mean p(x)); NaN cells (a missing image) stay grey.
        columns: images per row; the last row is padded with grey.
        image_shape: ``(height, width)`` of a flat image (default: square).
        padding: pixels of grey between the tiles and around the grid.

    Returns:
        A ``[rows · (height + padding) + padding, columns · (width +
        padding) + padding]`` uint8 array.
    """
    images = np.asarray(images, dtype="float64")
    if images.ndim == 2:
        shape = tuple(image_shape) if image_shape is not None else image_shape_for(
            images.shape[1])
        images = images.reshape((-1,) + shape)
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"expected a non-empty [n, pixels] or [n, height, width] array, got "
                         f"shape {images.shape}")
    columns = int(columns)
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    count, height, width = images.shape
    rows = -(-count // columns)
    grid = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding),
                   _PADDING_VALUE)
    for k, image in enumerate(images):
        top = padding + (k // columns) * (height + padding)
        left = padding + (k % columns) * (width + padding)
        grid[top:top + height, left:left + width] = np.where(np.isnan(image), _PADDING_VALUE,
                                                             image)
    return np.round(np.clip(grid, 0.0, 1.0) * 255).astype("uint8")


def interleave_rows(top, bottom, columns):
    """Rows of `columns` images from `top` and from `bottom` in turn (a
    sample over its nearest training image, a digit over its inpainting)."""
    top, bottom = np.asarray(top), np.asarray(bottom)
    if top.shape != bottom.shape:
        raise ValueError(f"top and bottom differ in shape: {top.shape} and {bottom.shape}")
    rows = []
    for start in range(0, len(top), columns):
        for part in (top, bottom):
            block = part[start:start + columns].astype("float64")
            if len(block) < columns:
                block = np.concatenate([block, np.full((columns - len(block),) + block.shape[1:],
                                                       np.nan)])
            rows.append(block)
    return np.concatenate(rows)


def save_png(grid, path):
    """Write a uint8 array as a greyscale PNG (through a temporary file, so a
    reader never sees half a picture); returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.asarray(grid, dtype="uint8")).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def evenly_spaced(samples, columns):
    """``[chains · columns, pixels]``: each chain of ``[chains, steps, pixels]``
    at `columns` evenly spaced steps, the last one included, chain by chain."""
    chains, steps = samples.shape[:2]
    if columns > steps:
        raise ValueError(f"columns ({columns}) must not exceed the chain's steps ({steps})")
    picked = np.round(np.linspace(steps / columns, steps, columns)).astype(int) - 1
    return samples[:, picked].reshape(chains * columns, -1)


def chain_grid(model, chains, steps, columns, seed, image_shape=None, initial=None):
    """A ``chains × columns`` grid of a model's chains: row r is chain r at
    ``columns`` steps evenly spaced over its ``steps`` steps (the last one
    included), from ``model.sample(chains, steps, seed, initial)``."""
    samples = model.sample(chains, steps, seed, initial=initial)  # [chains, steps, pixels]
    return tile_images(evenly_spaced(samples, columns), columns, image_shape)


@export
class SampleGrid(FromConfig, keras.callbacks.Callback):
    """Every `every` epochs, a PNG grid of samples of the model's chain.

    Runs ``model.sample(chains, steps, seed)`` (a GSN or a
    DenoisingAutoencoder: chains from uniform noise, every noise on, each
    step's mean p(x)); row r of the picture is chain r, at `columns` steps
    evenly spaced up to the last. The same seed every time, so two pictures
    differ only by the weights, and a resumed run draws what an
    uninterrupted one draws. Written as
    ``directory/filename.format(epoch=...)`` (1-based epoch); in a recipe
    run, `directory` is taken relative to the run directory (default: the
    run directory itself). With `log_dir`, each grid is also written as a
    TensorBoard image summary (``log_dir/samples``; needs TensorFlow and
    TensorBoard).

    Args:
        every: write a grid after every `every` epochs.
        chains: independent chains, one row each.
        steps: chain steps per chain.
        columns: pictures per chain (evenly spaced steps; <= `steps`).
        seed: the chains' seed.
        directory: the folder of the pictures (None: the working directory,
            or the run directory in a recipe run).
        filename: the file name, with ``{epoch}`` for the epoch.
        image_shape: ``(height, width)`` of an input vector (None: square).
        log_dir: a TensorBoard log folder for the image summaries, or None.

    Example:

    ```python
    gsn.fit(x_train, epochs=100, batch_size=100,
            callbacks=[SampleGrid(every=10, directory="pictures")])
    ```

    Reference: the ``samples_epoch_N.png`` pictures of `yaoli/GSN`
    (Bengio et al. 2014, arXiv:1306.1091, Figure 3).
    """

    def __init__(self, every=1, chains=10, steps=100, columns=10, seed=1, directory=None,
                 filename="samples_epoch_{epoch:04d}.png", image_shape=None, log_dir=None):
        super().__init__()
        for name, value in (("every", every), ("chains", chains), ("steps", steps),
                            ("columns", columns)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SampleGrid: {name} must be a positive integer, got {value!r}")
        if columns > steps:
            raise ValueError(f"SampleGrid: columns ({columns}) must not exceed steps ({steps})")
        if log_dir is not None and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("SampleGrid: log_dir needs the tensorboard package, as Keras' "
                             "TensorBoard callback does: pip install tensorboard")
        if "{epoch" not in filename:
            raise ValueError(f"SampleGrid: filename must contain {{epoch}}, got {filename!r}")
        self.every = every
        self.chains = chains
        self.steps = steps
        self.columns = columns
        self.seed = int(seed)
        self.directory = None if directory is None else str(directory)
        self.filename = filename
        self.image_shape = None if image_shape is None else tuple(int(s) for s in image_shape)
        self.log_dir = None if log_dir is None else str(log_dir)
        self.written = []
        self._writer = None

    def get_config(self):
        return {"every": self.every, "chains": self.chains, "steps": self.steps,
                "columns": self.columns, "seed": self.seed, "directory": self.directory,
                "filename": self.filename,
                "image_shape": None if self.image_shape is None else list(self.image_shape),
                "log_dir": self.log_dir}

    def on_train_begin(self, logs=None):
        if not callable(getattr(self.model, "sample", None)):
            raise ValueError(f"SampleGrid needs a model with a sampling chain (GSN, "
                             f"DenoisingAutoencoder), got {type(self.model).__name__}")

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        grid = chain_grid(self.model, self.chains, self.steps, self.columns, self.seed,
                          self.image_shape)
        path = Path(self.directory or ".") / self.filename.format(epoch=epoch + 1)
        self.written.append(save_png(grid, path))
        if self.log_dir is not None:
            self._summary(grid, epoch + 1)

    def _summary(self, grid, step):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(Path(self.log_dir) / "samples"))
        with self._writer.as_default():
            tf.summary.image("chain samples", grid[None, :, :, None], step=step)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

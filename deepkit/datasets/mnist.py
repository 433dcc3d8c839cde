"""MNIST from the LeCun IDX files, TensorFlow Datasets, or the packaged sample.

`mnist` reads ``$DEEPKIT_DATA/mnist/*-idx?-ubyte.gz``; when DEEPKIT_DATA is
not set it takes the TensorFlow Datasets path (`tfds.load("mnist")`, which
downloads). `mnist_sample` is a few thousand real MNIST digits shipped inside
the package (see `_data/README.md`), for the quickstart and for smoke tests
on machines without the data.
"""

import gzip
import socket
from pathlib import Path

import numpy as np

from deepkit import datasets

FILES = {
    "train": ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    "test": ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
}
SAMPLE = Path(__file__).parent / "_data" / "mnist_sample.npz"


def read_idx(path):
    """Read a (gzip'd) IDX file into a numpy array, checking its header."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise datasets.DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise datasets.DataError(
            f"{path}: header says {dims} ({expected} bytes), file has {len(data) - offset}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _from_files(part):
    root = datasets.data_dir()
    images, labels = (read_idx(root / f) for f in FILES[part])
    if len(images) != len(labels):
        raise datasets.DataError(f"MNIST {part}: {len(images)} images, {len(labels)} labels")
    return images, labels


def _from_tfds(part):
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=5).close()
    except OSError:
        raise datasets.DataError(
            "MNIST: no local files and no network. Set DEEPKIT_DATA to a folder "
            "holding mnist/train-images-idx3-ubyte.gz, mnist/train-labels-idx1-ubyte.gz, "
            "mnist/t10k-images-idx3-ubyte.gz and mnist/t10k-labels-idx1-ubyte.gz "
            "(from http://yann.lecun.com/exdb/mnist/), or connect to download "
            "it with TensorFlow Datasets."
        ) from None
    import tensorflow_datasets as tfds

    ds = tfds.load("mnist", split=part, batch_size=-1, as_supervised=True)
    images, labels = tfds.as_numpy(ds)
    return images[..., 0], labels


def _prepare(images, labels, split, flatten, validation, limit, scale, binarize):
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise datasets.DataError(
            f"MNIST: limit must be null or a non-negative integer, found {limit!r}"
        )
    if split in ("train", "valid"):
        if not 0 <= validation < len(images):
            raise datasets.DataError(
                f"validation={validation} must be in [0, {len(images)}) for MNIST"
            )
        cut = len(images) - validation
        if split == "valid":
            if validation == 0:
                return None
            images, labels = images[cut:], labels[cut:]
        else:
            images, labels = images[:cut], labels[:cut]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = images.astype("float32")
    if scale or binarize:
        x /= 255.0
    if binarize:
        x = (x > 0.5).astype("float32")
    x = x.reshape(len(x), -1) if flatten else x[..., None]
    return x, labels.astype("int32")


def _mnist_files(**options):
    return [f for pair in FILES.values() for f in pair]


@datasets.register("mnist", files=_mnist_files, description="MNIST, 60,000 train / 10,000 test")
def mnist(split, *, flatten=False, validation=0, limit=None, scale=True, binarize=False):
    """One split of MNIST.

    Args:
        split: "train" (the first 60,000 − validation images), "valid" (the
            last `validation` training images) or "test".
        flatten: vectors of 784 instead of 28×28×1 images.
        validation: how many of the last training images form "valid".
        limit: keep only the first `limit` examples of the split.
        scale: divide pixels by 255 into [0, 1].
        binarize: threshold the [0, 1] pixels at 0.5.

    Returns:
        `(x, y)`: float32 images, int32 labels.
    """
    part = "test" if split == "test" else "train"
    if datasets.data_dir() is not None:
        images, labels = _from_files(part)
    else:
        images, labels = _from_tfds(part)
    return _prepare(images, labels, split, flatten, validation, limit, scale, binarize)


mnist.can_download = True


@datasets.register(
    "mnist_sample", description="5,000 train / 1,000 test real MNIST digits, in the package"
)
def mnist_sample(split, *, flatten=False, validation=0, limit=None, scale=True, binarize=False):
    """A small real MNIST sample shipped with deepkit (no files, no network).

    The first 5,000 training and the first 1,000 test images of MNIST. Options
    as for `mnist`.
    """
    with np.load(SAMPLE) as data:
        part = "test" if split == "test" else "train"
        images, labels = data[f"x_{part}"], data[f"y_{part}"]
    return _prepare(images, labels, split, flatten, validation, limit, scale, binarize)

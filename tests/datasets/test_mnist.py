"""MNIST from the IDX files under DEEPKIT_DATA, and the packaged sample."""

import gzip
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from deepkit import datasets
from deepkit.datasets import DataError, mnist

REPO = Path(__file__).resolve().parents[2]
NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def data_dir():
    """The shared data folder: $DEEPKIT_DATA, else ../shared/data (as CI sets it)."""
    folder = Path(os.environ.get("DEEPKIT_DATA") or REPO.parent / "shared" / "data")
    missing = [n for n in NAMES if not (folder / "mnist" / n).exists()]
    assert not missing, f"MNIST files missing under {folder}/mnist: {missing}"
    return folder


@pytest.fixture
def real(data_dir, monkeypatch):
    monkeypatch.setenv("DEEPKIT_DATA", str(data_dir))


@pytest.fixture(scope="module")
def raw_train(data_dir):
    """The training images and labels as uint8/int, read independently."""
    return (mnist.read_idx(data_dir / "mnist" / NAMES[0]),
            mnist.read_idx(data_dir / "mnist" / NAMES[1]))


def test_full_splits(real, raw_train):
    x, y = datasets.load("mnist", "train")
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    np.testing.assert_array_equal(x[..., 0], raw_train[0] / np.float32(255))
    np.testing.assert_array_equal(y, raw_train[1])
    x_test, y_test = datasets.load("mnist", "test")
    assert x_test.shape == (10000, 28, 28, 1) and y_test.shape == (10000,)
    assert datasets.load("mnist", "valid") is None  # validation=0


def test_validation_is_the_last_training_images(real, raw_train):
    x, y = datasets.load("mnist", "train", validation=10000, scale=False)
    xv, yv = datasets.load("mnist", "valid", validation=10000, scale=False)
    assert x.shape[0] == y.shape[0] == 50000 and xv.shape[0] == yv.shape[0] == 10000
    images, labels = raw_train
    np.testing.assert_array_equal(x[..., 0], images[:50000])
    np.testing.assert_array_equal(xv[..., 0], images[50000:])
    np.testing.assert_array_equal(yv, labels[50000:])
    # the test split does not depend on validation
    xt, _ = datasets.load("mnist", "test", validation=10000, limit=10)
    np.testing.assert_array_equal(xt, datasets.load("mnist", "test", limit=10)[0])


def test_flatten_scale_binarize_limit(real, raw_train):
    images = raw_train[0]
    x, y = datasets.load("mnist", "train", flatten=True, limit=300)
    assert x.shape == (300, 784) and y.shape == (300,)
    np.testing.assert_array_equal(x, images[:300].reshape(300, 784) / np.float32(255))
    x, _ = datasets.load("mnist", "train", scale=False, limit=300)
    assert x.dtype == np.float32 and x.max() == 255.0
    np.testing.assert_array_equal(x[..., 0], images[:300])
    x, _ = datasets.load("mnist", "train", binarize=True, flatten=True, limit=300)
    assert set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_array_equal(x, (images[:300].reshape(300, 784) / np.float32(255) > 0.5))
    # the limit applies within the split, after the validation cut
    xv, _ = datasets.load("mnist", "valid", validation=10000, limit=7, scale=False)
    np.testing.assert_array_equal(xv[..., 0], images[50000:50007])


@pytest.mark.parametrize("options, message", [
    ({"validation": 60000}, r"validation=60000 must be in \[0, 60000\)"),
    ({"validation": -1}, r"validation=-1 must be in \[0, 60000\)"),
    ({"limit": "all"}, "limit must be null or a non-negative integer, found 'all'"),
    ({"limit": -5}, "limit must be null or a non-negative integer, found -5"),
])
def test_bad_option_values(real, options, message):
    with pytest.raises(DataError, match=message):
        datasets.load("mnist", "train", **options)


def _gz(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(data)


def test_idx_header_is_checked(tmp_path):
    good = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") * 2 + bytes(18)
    _gz(tmp_path / "good.gz", good)
    assert mnist.read_idx(tmp_path / "good.gz").shape == (2, 3, 3)

    _gz(tmp_path / "magic.gz", bytes([0, 0, 0x0D, 3]) + good[4:])  # float data, not bytes
    with pytest.raises(DataError, match=r"magic.gz: not an unsigned-byte IDX file"):
        mnist.read_idx(tmp_path / "magic.gz")
    _gz(tmp_path / "short.gz", good[:-5])
    with pytest.raises(DataError, match=r"short.gz: header says \[2, 3, 3\] \(18 bytes\), file has 13"):
        mnist.read_idx(tmp_path / "short.gz")
    (tmp_path / "plain").write_bytes(good)  # not gzip'd: read as is
    assert mnist.read_idx(tmp_path / "plain").shape == (2, 3, 3)


def test_corrupt_data_file_fails_the_load(tmp_path, monkeypatch, data_dir):
    for name in NAMES:
        (tmp_path / "mnist").mkdir(exist_ok=True)
        (tmp_path / "mnist" / name).symlink_to(data_dir / "mnist" / name)
    (tmp_path / "mnist" / NAMES[2]).unlink()
    _gz(tmp_path / "mnist" / NAMES[2], b"<html>404 Not Found</html>")
    monkeypatch.setenv("DEEPKIT_DATA", str(tmp_path))
    datasets.check_files("mnist")  # all present
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: not an unsigned-byte IDX file"):
        datasets.load("mnist", "test")


def test_missing_files_name_deepkit_data_and_the_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPKIT_DATA", str(tmp_path))
    with pytest.raises(DataError) as info:
        datasets.check_files("mnist")
    message = str(info.value)
    assert f"DEEPKIT_DATA={tmp_path} lacks" in message
    for name in NAMES:
        assert str(tmp_path / "mnist" / name) in message
    assert datasets.required_files("mnist") == [tmp_path / "mnist" / n for n in NAMES]


def test_without_deepkit_data_or_network_the_error_says_what_to_do(monkeypatch):
    monkeypatch.delenv("DEEPKIT_DATA", raising=False)
    datasets.check_files("mnist")  # the download path will be tried

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(DataError) as info:
        datasets.load("mnist", "test")
    message = str(info.value)
    assert "Set DEEPKIT_DATA" in message
    for name in NAMES:
        assert f"mnist/{name}" in message


def test_unknown_data_set_and_option_suggest_names():
    with pytest.raises(DataError, match=r"unknown data set 'mnsit'; did you mean mnist"):
        datasets.get("mnsit")
    with pytest.raises(DataError, match=r"has no option 'flaten'; did you mean flatten\?"):
        datasets.load("mnist_sample", "train", flaten=True)
    with pytest.raises(DataError, match=r"unknown split 'validation'"):
        datasets.load("mnist_sample", "validation")
    assert {"mnist", "mnist_sample"} <= set(datasets.names())
    assert set(datasets.get("mnist").options) == {"flatten", "validation", "limit", "scale", "binarize"}


def test_sample_sizes(monkeypatch):
    monkeypatch.delenv("DEEPKIT_DATA", raising=False)  # needs no files
    datasets.check_files("mnist_sample")
    x, y = datasets.load("mnist_sample", "train")
    assert x.shape == (5000, 28, 28, 1) and y.shape == (5000,)
    x, y = datasets.load("mnist_sample", "test", flatten=True)
    assert x.shape == (1000, 784) and y.shape == (1000,)
    x, _ = datasets.load("mnist_sample", "train", validation=1000)
    xv, _ = datasets.load("mnist_sample", "valid", validation=1000)
    assert len(x) == 4000 and len(xv) == 1000


def test_sample_is_the_first_real_digits(real):
    for split, n in (("train", 5000), ("test", 1000)):
        xs, ys = datasets.load("mnist_sample", split, scale=False)
        xr, yr = datasets.load("mnist", split, scale=False, limit=n)
        np.testing.assert_array_equal(xs, xr)
        np.testing.assert_array_equal(ys, yr)

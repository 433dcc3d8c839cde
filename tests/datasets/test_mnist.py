"""MNIST from the IDX files under DEEPKIT_DATA, and the packaged sample.

The loader tests run on the small real IDX files in tests/fixtures/data
(default run) and again on the full data (marked `data`, with DEEPKIT_DATA),
with expectations computed from the files by an independent reader; the
60,000/10,000 split sizes and the published checksum are checked on the full
data only."""

import gzip
import hashlib
import socket
import struct

import numpy as np
import pytest

from deepkit import datasets
from deepkit.datasets import DataError, mnist

NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
FILES = {"train": NAMES[:2], "test": NAMES[2:]}


def raw(folder, part):
    """The images and labels of one IDX pair, read without deepkit."""
    arrays = []
    for name in FILES[part]:
        data = gzip.decompress((folder / "mnist" / name).read_bytes())
        ndim = data[3]
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        arrays.append(np.frombuffer(data[4 + 4 * ndim :], np.uint8).reshape(dims))
    return tuple(arrays)


def test_splits(any_data):
    images, labels = raw(any_data, "train")
    n = len(images)
    assert images.shape == (n, 28, 28) and labels.shape == (n,) and n > 0
    x, y = datasets.load("mnist", "train")
    assert x.shape == (n, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    np.testing.assert_array_equal(x[..., 0], images / np.float32(255))
    np.testing.assert_array_equal(y, labels)
    images_test, labels_test = raw(any_data, "test")
    x_test, y_test = datasets.load("mnist", "test")
    assert x_test.shape == (len(images_test), 28, 28, 1) and y_test.shape == (len(labels_test),)
    np.testing.assert_array_equal(x_test[..., 0], images_test / np.float32(255))
    np.testing.assert_array_equal(y_test, labels_test)
    assert datasets.load("mnist", "valid") is None  # validation=0


@pytest.mark.data
def test_full_split_sizes_and_checksum(full_data):
    x, y = datasets.load("mnist", "train")
    assert x.shape == (60000, 28, 28, 1) and y.shape == (60000,)
    x_test, y_test = datasets.load("mnist", "test")
    assert x_test.shape == (10000, 28, 28, 1) and y_test.shape == (10000,)
    x, _ = datasets.load("mnist", "train", validation=10000)
    xv, _ = datasets.load("mnist", "valid", validation=10000)
    assert len(x) == 50000 and len(xv) == 10000
    # LeCun's published MD5 of the uncompressed training images.
    data = gzip.decompress((full_data / "mnist" / NAMES[0]).read_bytes())
    assert hashlib.md5(data).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"


def test_validation_is_the_last_training_images(any_data):
    images, labels = raw(any_data, "train")
    n = len(images)
    v = n // 6  # 10,000 of the full 60,000
    x, y = datasets.load("mnist", "train", validation=v, scale=False)
    xv, yv = datasets.load("mnist", "valid", validation=v, scale=False)
    assert x.shape[0] == y.shape[0] == n - v and xv.shape[0] == yv.shape[0] == v
    np.testing.assert_array_equal(x[..., 0], images[: n - v])
    np.testing.assert_array_equal(xv[..., 0], images[n - v :])
    np.testing.assert_array_equal(yv, labels[n - v :])
    # the test split does not depend on validation
    xt, _ = datasets.load("mnist", "test", validation=v, limit=10)
    np.testing.assert_array_equal(xt, datasets.load("mnist", "test", limit=10)[0])


def test_flatten_scale_binarize_limit(any_data):
    images = raw(any_data, "train")[0]
    n = len(images)
    k = min(300, n // 2)
    x, y = datasets.load("mnist", "train", flatten=True, limit=k)
    assert x.shape == (k, 784) and y.shape == (k,)
    np.testing.assert_array_equal(x, images[:k].reshape(k, 784) / np.float32(255))
    x, _ = datasets.load("mnist", "train", scale=False, limit=k)
    assert x.dtype == np.float32 and x.max() == 255.0
    np.testing.assert_array_equal(x[..., 0], images[:k])
    x, _ = datasets.load("mnist", "train", binarize=True, flatten=True, limit=k)
    assert set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_array_equal(x, (images[:k].reshape(k, 784) / np.float32(255) > 0.5))
    # the limit applies within the split, after the validation cut
    v = n // 6
    xv, _ = datasets.load("mnist", "valid", validation=v, limit=7, scale=False)
    np.testing.assert_array_equal(xv[..., 0], images[n - v : n - v + 7])


@pytest.mark.parametrize("case", ["validation=n", "validation=-1", "limit='all'", "limit=-5"])
def test_bad_option_values(any_data, case):
    n = len(raw(any_data, "train")[1])
    options, message = {
        "validation=n": ({"validation": n}, rf"validation={n} must be in \[0, {n}\)"),
        "validation=-1": ({"validation": -1}, rf"validation=-1 must be in \[0, {n}\)"),
        "limit='all'": ({"limit": "all"},
                        "limit must be null or a non-negative integer, found 'all'"),
        "limit=-5": ({"limit": -5}, "limit must be null or a non-negative integer, found -5"),
    }[case]
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


def test_corrupt_data_file_fails_the_load(tmp_path, monkeypatch, fixture_data):
    for name in NAMES:
        (tmp_path / "mnist").mkdir(exist_ok=True)
        (tmp_path / "mnist" / name).symlink_to(fixture_data / "mnist" / name)
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


def test_sample_is_the_first_real_digits(any_data):
    # The sample is the first 5,000 training and 1,000 test digits: on the
    # fixtures, their first digits equal the whole fixture files.
    for split, size in (("train", 5000), ("test", 1000)):
        n = min(size, len(raw(any_data, split)[1]))
        xs, ys = datasets.load("mnist_sample", split, scale=False, limit=n)
        xr, yr = datasets.load("mnist", split, scale=False, limit=n)
        assert len(xs) == len(xr) == n
        np.testing.assert_array_equal(xs, xr)
        np.testing.assert_array_equal(ys, yr)
